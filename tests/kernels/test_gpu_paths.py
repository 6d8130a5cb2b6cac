"""Checks that only mean something on a GPU (skipped without one): which GEMM path the kernels take."""
import pytest
import torch

import st_adapter_fast as saf
from st_adapter_fast import fused
from st_adapter_fast.bench.parity import random_inputs

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_autocast_fp32_residual_takes_one_cublas_call(backend, monkeypatch):
    """Under autocast the residual stream is fp32 and the adapter computes in bf16: fc2 + bias + residual
    (and dx in backward) must be one addmm with out_dtype=float32, not the slower fallback GEMM."""
    if not fused._HAS_ADDMM_OUT_DTYPE:
        pytest.skip(f"torch {torch.__version__} has no addmm(out_dtype=...)")

    def no_fallback(*args, **kwargs):
        raise AssertionError("the fallback matmul_residual ran")

    kernels = saf.ops._kernels("triton" if backend == "triton" else "compiled")
    monkeypatch.setattr(type(kernels), "matmul_residual", no_fallback)
    x, params = random_inputs(2, 8, 197, 96, 48, (3, 1, 1), device="cuda")
    x = x.float().requires_grad_()
    params = [p.float().requires_grad_() for p in params]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = saf.st_adapter(x, 8, *params, backend=backend)
        y_ref = saf.st_adapter(x, 8, *params, backend="reference")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)
    y.sum().backward()
