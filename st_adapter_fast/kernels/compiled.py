"""The compiled kernels: loading st_adapter_fast._C, built from csrc/.

Importing `_C` registers torch.ops.st_adapter_fast.adapter (the whole adapter with its C++ autograd, which the
op's eager calls use), adapter_forward / adapter_backward (the same per direction, for torch.compile's
registered ops) and the conv + activation alone, temporal_conv_act[_out] and temporal_conv_act_backward[_out]
(CPU, CUDA when built with it, and Meta). The extension states what its
kernels cover (`with_cuda`, `max_kernel_t`, `dtypes`, `activation_codes`), which backends.py reads. The
package works without the extension: `EXTENSION` then says why it is missing, and the op falls back or
raises (backends.py).
"""
from typing import NamedTuple

import torch

from ..activations import ACTIVATION_CODES

REINSTALL = "reinstall with `pip install --no-build-isolation -e .` (without ST_ADAPTER_FAST_NO_EXTENSION=1)"


class Extension(NamedTuple):
    """The compiled extension as loaded: `module` (st_adapter_fast._C), or None and `error` saying why not."""

    module: object
    error: str | None


def checked_extension(module):
    """`module` (an imported st_adapter_fast._C) as an Extension, refused when its activation codes are not
    this package's (activations.ACTIVATION_CODES): it was built from other sources, and its kernels would
    compute another activation than the one asked for."""
    codes = getattr(module, "activation_codes", None)
    if codes is None or dict(codes) != ACTIVATION_CODES:
        found = "states none" if codes is None else f"are {dict(codes)}"
        return Extension(None, f"the compiled extension st_adapter_fast._C does not match this package (its "
                               f"activation codes {found}, the package's are {ACTIVATION_CODES}): it was built from "
                               f"other sources; {REINSTALL}")
    return Extension(module, None)


def _import_extension():
    try:
        from .. import _C
    except ImportError as error:
        return Extension(None, f"the compiled extension st_adapter_fast._C is not available ({error}); {REINSTALL}")
    return checked_extension(_C)


# Imported once, here: importing registers torch.ops.st_adapter_fast.temporal_conv_act* on
# `import st_adapter_fast`, and torch.compile then traces a plain global read (not a cached call).
EXTENSION = _import_extension()


def extension_info():
    """{'available': bool, 'with_cuda': bool, 'error': str or None}: how the extension was built, if at all."""
    module, error = EXTENSION
    return {"available": module is not None, "with_cuda": bool(module and module.with_cuda), "error": error}
