"""Checks that only mean something on a GPU (skipped without one): which GEMM path the kernels take, that a
training step's adapter calls never synchronise the host with the device, and that a CUDA graph of a forward
+ backward replays with the eager gradients."""
import pytest
import torch

import st_adapter_fast as saf
from st_adapter_fast import fused
from st_adapter_fast.bench.parity import random_inputs

pytestmark = pytest.mark.gpu
BACKENDS = ["triton", "cuda"]


def _inputs(dtype=torch.float32):
    x, params = random_inputs(2, 8, 197, 96, 48, (3, 1, 1), device="cuda")
    return x.to(dtype).requires_grad_(), [p.to(dtype).requires_grad_() for p in params]


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_fp32_residual_takes_one_cublas_call(backend, monkeypatch):
    """Under autocast the residual stream is fp32 and the adapter computes in bf16: fc2 + bias + residual
    (and dx in backward) must be one addmm with out_dtype=float32, not the slower fallback (a GEMM, then an
    add into a new tensor)."""
    if not fused._HAS_ADDMM_OUT_DTYPE:
        pytest.skip(f"torch {torch.__version__} has no addmm(out_dtype=...)")
    if backend == "triton":
        from st_adapter_fast.kernels.triton.adapter import TRITON_KERNELS

        def no_fallback(*args, **kwargs):
            raise AssertionError("the fallback matmul_residual ran")
        monkeypatch.setattr(type(TRITON_KERNELS), "matmul_residual", no_fallback)
    x, params = _inputs()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = saf.st_adapter(x, 8, *params, backend=backend)
            y_ref = saf.st_adapter(x.detach(), 8, *[p.detach() for p in params], backend="reference")
        y.sum().backward()
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)
    if backend == "cuda":   # the C++ op's fallback is at::add_out after at::mm
        names = [e.name for e in prof.events()]
        assert "aten::add" not in names and names.count("aten::addmm") >= 2, names


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_training_step_never_synchronises(backend, autocast):
    """No host-device synchronisation in forward + backward (what would stall a pipelined step and what CUDA
    graph capture forbids): torch raises under sync debug mode "error"."""
    x, params = _inputs()
    for _ in range(2):   # the first call may autotune (Triton) or initialise lazily
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            saf.st_adapter(x, 8, *params, backend=backend).sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            y = saf.st_adapter(x, 8, *params, backend=backend)
        torch.autograd.grad(y, [x, *params], torch.ones_like(y))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_graph_of_forward_and_backward_replays_the_eager_gradients(backend):
    x, params = _inputs(torch.bfloat16)
    grad_y = torch.randn_like(x)
    leaves = [x, *params]

    def step():
        return torch.autograd.grad(saf.st_adapter(x, 8, *params, backend=backend), leaves, grad_y)

    eager = step()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):   # warm-up outside the graph
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():   # new inputs in place: the replay must see them
        x.mul_(0.5)
    graph.replay()
    expected = step()
    for got, want, before in zip(captured, expected, eager):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert not torch.equal(got, before) or got.abs().max() == 0
