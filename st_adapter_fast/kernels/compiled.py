"""The compiled kernels (st_adapter_fast._C, built from csrc/) as a `fused.ConvKernels` backend.

Importing `_C` registers torch.ops.st_adapter_fast.temporal_conv_act[_out] and
temporal_conv_act_backward[_out] (CPU, CUDA when built with it, and Meta). The package works without
the extension: `unavailable_reason()` says why a backend cannot run, and ops.py falls back or raises.
"""
import torch

from ..fused import ConvKernels
from ..validation import temporal_kernel_reason

KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)   # CPU and CUDA alike
MAX_KERNEL_T = 7


def _import_extension():
    """(module, None) or (None, why it could not be imported)."""
    try:
        from .. import _C
    except ImportError as error:
        return None, (f"the compiled extension st_adapter_fast._C is not available ({error}); reinstall with "
                      "`pip install --no-build-isolation -e .` (without ST_ADAPTER_FAST_NO_EXTENSION=1)")
    return _C, None


# Imported once, here: importing registers torch.ops.st_adapter_fast.temporal_conv_act* on
# `import st_adapter_fast`, and torch.compile then traces a plain global read (not a cached call).
_EXTENSION = _import_extension()


def _load():
    """(module, None) or (None, why the extension could not be imported)."""
    return _EXTENSION


def extension_info():
    """{'available': bool, 'with_cuda': bool, 'error': str or None}: how the extension was built, if at all."""
    module, error = _load()
    return {"available": module is not None, "with_cuda": bool(module and module.with_cuda), "error": error}


def unavailable_reason(backend, x, compute_dtype, kernel_size):
    """Why the compiled `backend` ("cpu" or "cuda") cannot run this call, or None if it can."""
    module, error = _load()
    if module is None:
        return error
    if backend == "cuda" and not module.with_cuda:
        return "this build of st_adapter_fast._C has no CUDA kernels (no CUDA toolkit was found when it was built)"
    if x.device.type != backend:
        return f"backend={backend!r} runs on {backend} tensors, x is on {x.device}"
    if compute_dtype not in KERNEL_DTYPES:
        return (f"dtype {compute_dtype} is not supported by the compiled kernels "
                f"({', '.join(map(str, KERNEL_DTYPES))} are)")
    return temporal_kernel_reason(kernel_size, MAX_KERNEL_T, "the compiled kernels")


class CompiledKernels(ConvKernels):
    """The conv + activation kernels of csrc/ (CPU or CUDA by the tensors' device); GEMMs stay in torch."""
    name = "compiled"
    fused_gemm = False

    def fold_fc2_bias(self, device):
        return device.type == "cuda"   # on the CPU a separate bias add is cheaper (see fused.BIAS_COLUMNS)

    def conv_act_forward(self, *, h, a, conv_weight, conv_bias, num_frames, activation, **_):
        torch.ops.st_adapter_fast.temporal_conv_act_out(h, conv_weight, conv_bias, num_frames, activation, a)

    def conv_act_backward(self, *, g_patch, h, conv_weight, conv_bias, a, grad_h, num_frames, activation, **_):
        return torch.ops.st_adapter_fast.temporal_conv_act_backward_out(g_patch, h, conv_weight, conv_bias,
                                                                        num_frames, activation, grad_h, a)

    def matmul_residual(self, a, b, residual, out):
        return torch.add(residual, a @ b, out=out)


COMPILED_KERNELS = CompiledKernels()
