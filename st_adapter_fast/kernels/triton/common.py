"""Pieces shared by the Triton kernels: activation math, dot settings."""
import torch
import triton
import triton.language as tl

from ... import activations
from . import interpreting

# Globals read inside @triton.jit functions must be constexpr.
GELU = tl.constexpr(activations.ACTIVATION_CODES["gelu"])
QUICK_GELU = tl.constexpr(activations.ACTIVATION_CODES["quick_gelu"])
QUICK_GELU_ALPHA = tl.constexpr(activations.QUICK_GELU_ALPHA)
INV_SQRT2 = tl.constexpr(activations.INV_SQRT2)
INV_SQRT_2PI = tl.constexpr(activations.INV_SQRT_2PI)


def dot_settings(dtype):
    """(operand dtype, input precision) for tl.dot on operands of torch `dtype`.

    fp32 dots follow torch's tf32 switch, so fused and torch GEMMs round alike. Under the interpreter,
    bf16 dots return garbage (triton 3.8/3.9), so bf16 operands are upcast to fp32 there: the loads and
    stores stay bf16, the products are exact, the result still goes through bf16 where the kernel stores.
    """
    if dtype == torch.float16:
        return tl.float16, "ieee"
    if dtype == torch.bfloat16:
        return (tl.float32, "ieee") if interpreting() else (tl.bfloat16, "ieee")
    return tl.float32, ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee")


@triton.jit
def _sigmoid(v):
    # Spelled out, constexpr factors on the right: tl.sigmoid and `constexpr * tensor`
    # fail under the triton 3.8 interpreter.
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def activation_fwd(c, ACT: tl.constexpr):
    """act(c) in fp32; ACT is a code from activations.ACTIVATION_CODES."""
    if ACT == GELU:
        return 0.5 * c * (1.0 + tl.erf(c * INV_SQRT2))
    elif ACT == QUICK_GELU:
        return c * _sigmoid(c * QUICK_GELU_ALPHA)
    else:
        return c


@triton.jit
def activation_fwd_and_grad(c, ACT: tl.constexpr):
    """(act(c), act'(c)) in fp32."""
    if ACT == GELU:
        cdf = 0.5 * (1.0 + tl.erf(c * INV_SQRT2))
        pdf = tl.exp(-0.5 * c * c) * INV_SQRT_2PI
        return c * cdf, cdf + c * pdf
    elif ACT == QUICK_GELU:
        s = _sigmoid(c * QUICK_GELU_ALPHA)
        return c * s, s + c * QUICK_GELU_ALPHA * s * (1.0 - s)
    else:
        return c, tl.full(c.shape, 1.0, tl.float32)
