"""Test helpers: the parity machinery lives in the package (st_adapter_fast.parity); re-exported here."""
from st_adapter_fast.parity import (GRADIENT_NAMES, TOLERANCE, forward_backward, parity_errors,  # noqa: F401
                                    random_inputs, rel_err)
