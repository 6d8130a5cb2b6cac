"""The Triton kernels: temporal_conv.py (conv + activation, forward and backward), matmul_residual.py (the
residual GEMM fallback), common.py (activation math, dot settings), adapter.py (launches, as a ConvKernels).

This file imports no triton (the submodules do: import them only where triton is installed, after
TRITON_INTERPRET is settled); it states what the kernels cover, which backends.py reads.
"""
import os

import torch

# temporal_conv.py keeps the conv's window in seven named tiles (offsets -3..3): odd kt up to 7.
MAX_KERNEL_T = 7
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting():
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1): CPU tensors then run too."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
