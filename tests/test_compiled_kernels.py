"""The compiled kernels of csrc/ (backends "cpu" and, on a GPU, "cuda") vs the float64 reference, the ops
as registered with torch (direct calls, errors, Meta, opcheck), gradcheck in float64, determinism.

The extension must be built for this suite: a missing `st_adapter_fast._C` fails these tests rather than
skipping them (build with `pip install --no-build-isolation -e .`).
"""
import pytest
import torch

import st_adapter_fast as saf
from st_adapter_fast.compiled import extension_info
from st_adapter_fast.parity import random_inputs
from conftest import DEVICE
from parity_checks import C, CA, check_backward_deterministic, check_parity, check_strided_inputs

pytestmark = pytest.mark.compiled

BACKENDS = [("cpu", "cpu")] + ([("cuda", "cuda")] if DEVICE == "cuda" else [])
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
ops = torch.ops.st_adapter_fast


@pytest.fixture(autouse=True)
def extension_is_built():
    info = extension_info()
    assert info["available"], info["error"]


def naive_conv_act(h, weight, bias, num_frames, activation):
    """The temporal conv + activation as plain loops over frames, in float64."""
    h, weight, bias = h.double(), weight.double(), bias.double()
    frames = h.shape[0]
    clips = h.view(frames // num_frames, num_frames, *h.shape[1:])
    pad = weight.shape[1] // 2
    out = torch.zeros_like(clips) + bias
    for t in range(num_frames):
        for d in range(weight.shape[1]):
            if 0 <= t + d - pad < num_frames:
                out[:, t] += weight[:, d] * clips[:, t + d - pad]
    return saf.activations.apply_activation(out, None if activation == "none" else activation).view(h.shape)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ("gelu", "quick_gelu", None))
@pytest.mark.parametrize("kernel_t", (1, 3, 5, 7))
@pytest.mark.parametrize("frames", (1, 2, 3, 8))
def test_parity_grid(frames, kernel_t, activation, dtype, backend, device, poison_empty):
    check_parity(1 if frames == 8 else 2, frames, kernel_t, activation, dtype, backend=backend, device=device)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("prefix", (0, 1, 5))
@pytest.mark.parametrize("grid", [(2, 7), (5, 3), (1, 1)])
def test_prefix_tokens_and_grids(grid, prefix, backend, device, poison_empty):
    check_parity(2, 3, 3, "gelu", torch.float32, prefix=prefix, grid=grid, backend=backend, device=device)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("channels, adapter_channels", [(24, 8), (100, 65), (64, 33), (768, 384)])
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_channel_sizes(channels, adapter_channels, dtype, backend, device, poison_empty):
    # 65 and 33 channels rule out vector loads on CUDA (the one-element path); 384 takes the vector path.
    check_parity(1, 4, 3, "gelu", dtype, channels=channels, adapter_channels=adapter_channels, backend=backend,
                 device=device)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_strided_and_non_contiguous_inputs(backend, device):
    check_strided_inputs(backend, device)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_backward_is_deterministic(backend, device):
    check_backward_deterministic(backend, device, num_tokens=37)


def test_cpu_kernel_reductions_do_not_depend_on_the_thread_count():
    """The kernel's own reductions are fixed-order (per-block partials); the GEMMs around it are MKL's,
    whose results may change with the thread count, so only the op itself is compared here."""
    gen = torch.Generator().manual_seed(0)
    h, grad_a = torch.randn(2 * 8, 37, CA, generator=gen), torch.randn(2 * 8, 37, CA, generator=gen)
    weight, bias = torch.randn(CA, 3, generator=gen), torch.randn(CA, generator=gen)
    threads = torch.get_num_threads()
    runs = []
    try:
        for num_threads in (max(threads, 2), 1):
            torch.set_num_threads(num_threads)
            runs.append(ops.temporal_conv_act_backward(grad_a, h, weight, bias, 8, "gelu"))
    finally:
        torch.set_num_threads(threads)
    for first, second in zip(*runs):
        assert torch.equal(first, second)


def test_gradcheck_float64_through_the_cpu_kernels():
    x, params = random_inputs(2, 3, 1 + 6, 10, 6, (3, 1, 1))
    leaves = [t.clone().requires_grad_() for t in (x, *params)]
    fn = lambda x_, *p: saf.st_adapter(x_, 3, *p, grid_size=(2, 3), activation="gelu", backend="cpu")
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8)
    h, weight, bias = (torch.randn(6, 5, 4, dtype=torch.float64, requires_grad=True),
                       torch.randn(4, 5, dtype=torch.float64), torch.randn(4, dtype=torch.float64))

    class ConvAct(torch.autograd.Function):   # the op pair alone, as its own autograd function
        @staticmethod
        def forward(ctx, h, weight, bias):
            ctx.save_for_backward(h, weight, bias)
            return ops.temporal_conv_act(h, weight, bias, 3, "quick_gelu")

        @staticmethod
        def backward(ctx, grad_a):
            h, weight, bias = ctx.saved_tensors
            grad_h, _, grad_weight, grad_bias, _ = ops.temporal_conv_act_backward(grad_a, h, weight, bias, 3,
                                                                                  "quick_gelu")
            return grad_h, grad_weight, grad_bias

    assert torch.autograd.gradcheck(ConvAct.apply, (h, weight.requires_grad_(), bias.requires_grad_()))


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("activation", ("none", "gelu", "quick_gelu"))
def test_ops_match_a_naive_loop(activation, backend, device):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2 * 5, 7, 9, generator=gen, dtype=torch.float64).to(device)
    weight = torch.randn(9, 5, generator=gen, dtype=torch.float64).to(device)
    bias = torch.randn(9, generator=gen, dtype=torch.float64).to(device)
    a = ops.temporal_conv_act(h, weight, bias, 5, activation)
    torch.testing.assert_close(a, naive_conv_act(h, weight, bias, 5, activation), rtol=1e-12, atol=1e-12)
    grad_a = torch.randn_like(h)
    grad_h, a_again, grad_weight, grad_bias, grad_h_sum = ops.temporal_conv_act_backward(grad_a, h, weight, bias, 5,
                                                                                         activation)
    leaves = [t.clone().requires_grad_() for t in (h, weight, bias)]
    naive_conv_act(*leaves, 5, activation).backward(grad_a)
    torch.testing.assert_close(a_again, a, rtol=0, atol=0)
    for ours, expected in zip((grad_h, grad_weight, grad_bias), (t.grad for t in leaves)):
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_h_sum, grad_h.sum((0, 1)), rtol=1e-12, atol=1e-12)


_h, _w, _b = torch.randn(4, 3, 6), torch.randn(6, 3), torch.randn(6)
BAD_OP_CALLS = {
    "frames not divisible": (lambda: ops.temporal_conv_act(_h, _w, _b, 3, "gelu"), "divide the frame count"),
    "unknown activation": (lambda: ops.temporal_conv_act(_h, _w, _b, 2, "relu"), "activation must be"),
    "even kt": (lambda: ops.temporal_conv_act(_h, torch.randn(6, 2), _b, 2, "gelu"), "kt must be odd"),
    "kt too large": (lambda: ops.temporal_conv_act(_h, torch.randn(6, 9), _b, 2, "gelu"), "kt must be odd"),
    "channel mismatch": (lambda: ops.temporal_conv_act(_h, torch.randn(5, 3), _b, 2, "gelu"), "channels"),
    "mixed dtypes": (lambda: ops.temporal_conv_act(_h.double(), _w, _b, 2, "gelu"), "one dtype"),
    "channel stride": (lambda: ops.temporal_conv_act(_h.transpose(1, 2), _w, _b, 2, "gelu"), "channel stride"),
    "bad out": (lambda: ops.temporal_conv_act_out(_h, _w, _b, 2, "gelu", torch.empty(4, 3, 5)), "out must have"),
}


@pytest.mark.parametrize("case", list(BAD_OP_CALLS))
def test_ops_reject_bad_input_with_clear_errors(case):
    call, match = BAD_OP_CALLS[case]
    with pytest.raises(RuntimeError, match=match):
        call()


def test_meta_implementations_give_shapes():
    h = torch.empty(8, 7, 6, device="meta", dtype=torch.bfloat16)
    weight, bias = torch.empty(6, 3, device="meta", dtype=torch.bfloat16), torch.empty(6, device="meta",
                                                                                       dtype=torch.bfloat16)
    assert ops.temporal_conv_act(h, weight, bias, 4, "gelu").shape == h.shape
    grad_h, a, grad_weight, grad_bias, grad_h_sum = ops.temporal_conv_act_backward(h, h, weight, bias, 4, "gelu")
    assert grad_h.shape == a.shape == h.shape and grad_weight.shape == (6, 3)
    assert grad_bias.shape == grad_h_sum.shape == (6,) and grad_weight.dtype == torch.bfloat16


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_opcheck(backend, device):
    h = torch.randn(6, 5, 8, device=device)
    weight, bias = torch.randn(8, 3, device=device), torch.randn(8, device=device)
    torch.library.opcheck(ops.temporal_conv_act, (h, weight, bias, 3, "gelu"))
    torch.library.opcheck(ops.temporal_conv_act_backward, (torch.randn_like(h), h, weight, bias, 3, "gelu"))
    x, params = random_inputs(2, 3, 13, C, CA, (3, 1, 1), device=device)
    x, params = x.float().requires_grad_(), [p.float().requires_grad_() for p in params]
    torch.library.opcheck(saf.ops.adapter_fwd, (x, *params, 3, 1, "gelu", True, "compiled"))


def test_autocast_on_cpu_matches_reference_dtype_behaviour():
    x, params = random_inputs(2, 3, 17, C, CA, (3, 1, 1))
    x, params = x.float(), [p.float() for p in params]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = saf.st_adapter(x, 3, *params, backend="cpu")
        y_ref = saf.st_adapter(x, 3, *params, backend="reference")
    assert y.dtype == y_ref.dtype
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)


def test_cuda_kernels_were_compiled_when_a_toolkit_is_present():
    """CI has nvcc but no GPU: this is how it knows the CUDA code compiled into the extension."""
    from torch.utils.cpp_extension import CUDA_HOME
    if CUDA_HOME is None or torch.version.cuda is None:
        assert not extension_info()["with_cuda"]
    else:
        assert extension_info()["with_cuda"], "a CUDA toolkit is present but the extension has no CUDA kernels"
