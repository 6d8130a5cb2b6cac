"""The two kernel families behind `fused.ConvKernels`: the compiled kernels of csrc/ (compiled.py) and the
Triton kernels (triton/)."""
