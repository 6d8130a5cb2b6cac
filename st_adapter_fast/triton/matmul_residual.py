"""Old path of st_adapter_fast.kernels.triton.matmul_residual: an alias of it, kept for outside code."""
import sys

from ..kernels.triton import matmul_residual as _module

sys.modules[__name__] = _module
