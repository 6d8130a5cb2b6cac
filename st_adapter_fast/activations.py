"""The activations an adapter may use, in one place for the reference and the kernels' callers."""
import math

import torch
import torch.nn.functional as F

ACTIVATIONS = ("gelu", "quick_gelu", None)

QUICK_GELU_ALPHA = 1.702          # quick_gelu(c) = c * sigmoid(1.702 c), as in CLIP
INV_SQRT2 = 1.0 / math.sqrt(2.0)  # constants of the erf GELU and its derivative (Triton kernels)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# Op schemas cannot carry None in a str argument; this is the spelling the ops use for "no activation".
NO_ACTIVATION = "none"

# The kernels' activation codes, by the name the ops take: the Triton kernels use these; the compiled
# extension states its own (st_adapter_fast._C.activation_codes, from csrc/temporal_conv.h), which must be
# these: kernels/compiled.py refuses to load an extension whose codes differ.
ACTIVATION_CODES = {NO_ACTIVATION: 0, "gelu": 1, "quick_gelu": 2}


def check_activation(activation):
    """`activation` if it is one of ACTIVATIONS, else a ValueError."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def activation_op_name(activation):
    """Name of `activation` as the registered ops take it (a plain string)."""
    return NO_ACTIVATION if activation is None else activation


def apply_activation(c, activation):
    """act(c) in torch ops, exactly as the reference defines it (erf GELU, as nn.GELU())."""
    if activation is None or activation == NO_ACTIVATION:
        return c
    if activation == "gelu":
        return F.gelu(c)
    if activation == "quick_gelu":
        return c * torch.sigmoid(QUICK_GELU_ALPHA * c)
    raise ValueError(f"unknown activation {activation!r}")

