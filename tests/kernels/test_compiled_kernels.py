"""The compiled kernels of csrc/ (backends "cpu" and, on a GPU, "cuda") vs the float64 reference, the ops
as registered with torch (direct calls, errors, Meta, opcheck), gradcheck in float64, determinism.

The extension must be built for this suite: a missing `st_adapter_fast._C` fails these tests rather than
skipping them (build with `pip install --no-build-isolation -e .`).
"""
import pytest
import torch

import st_adapter_fast as saf
from st_adapter_fast.kernels.compiled import extension_info
from st_adapter_fast.bench.parity import random_inputs
from conftest import DEVICE
from parity_checks import (C, CA, check_backward_deterministic, check_double_backward, check_parity,
                           check_prefix_isolation, check_strided_inputs, check_strided_parameters)

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


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_strided_parameters(backend, device):
    check_strided_parameters(backend, device)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype, autocast_dtype", [(torch.float32, None), (torch.float64, None),
                                                   (torch.float32, torch.bfloat16)], ids=str)
def test_prefix_tokens_isolated_from_non_finite_values(backend, device, dtype, autocast_dtype):
    check_prefix_isolation(backend, device, dtype, autocast_dtype)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("via_custom_op", [False, True])
def test_double_backward_matches_reference(backend, device, via_custom_op):
    check_double_backward(backend, device, torch.float64, via_custom_op=via_custom_op)


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
_buf = torch.randn(8, 3, 6)                  # h and an out that share its memory


def _fwd_out(out, h=None, weight=None):
    return ops.temporal_conv_act_out(_h if h is None else h, _w if weight is None else weight, _b, 2, "gelu", out)


def _bwd_out(grad_h, a, h=None):
    h = _h if h is None else h
    return ops.temporal_conv_act_backward_out(torch.randn_like(h), h, _w, _b, 2, "gelu", grad_h, a)


BAD_OP_CALLS = {   # (call, error, message); the module-level tensors are looked up at call time
    "frames not divisible": (lambda: ops.temporal_conv_act(_h, _w, _b, 3, "gelu"), ValueError, "divide the frame"),
    "unknown activation": (lambda: ops.temporal_conv_act(_h, _w, _b, 2, "relu"), ValueError, "activation must be"),
    "even kt": (lambda: ops.temporal_conv_act(_h, torch.randn(6, 2), _b, 2, "gelu"), ValueError, "kt must be odd"),
    "kt too large": (lambda: ops.temporal_conv_act(_h, torch.randn(6, 9), _b, 2, "gelu"), ValueError, "kt must be odd"),
    "channel mismatch": (lambda: ops.temporal_conv_act(_h, torch.randn(5, 3), _b, 2, "gelu"), ValueError, "channels"),
    "mixed dtypes": (lambda: ops.temporal_conv_act(_h.double(), _w, _b, 2, "gelu"), TypeError, "one dtype"),
    "integer dtype": (lambda: ops.temporal_conv_act(*(t.long() for t in (_h, _w, _b)), 2, "gelu"), TypeError,
                      "float32"),
    "channel stride": (lambda: ops.temporal_conv_act(_h.transpose(1, 2), _w, _b, 2, "gelu"), ValueError,
                       "channel stride"),
    "bad out": (lambda: _fwd_out(torch.empty(4, 3, 5)), ValueError, "out must have"),
    "out is h": (lambda: _fwd_out(_h), ValueError, "out overlaps h"),
    "out overlaps h": (lambda: _fwd_out(_buf[2:6], h=_buf[:4]), ValueError, "out overlaps h"),
    "out overlaps weight": (lambda: _fwd_out(_buf[:4], weight=_buf.view(-1)[:18].view(6, 3)), ValueError,
                            "out overlaps weight"),
    "out with stride 0": (lambda: _fwd_out(torch.empty(1, 3, 6).expand(4, 3, 6)), ValueError,
                          "out has elements that share memory"),
    "out with overlapping rows": (lambda: _fwd_out(torch.empty(40).as_strided((4, 3, 6), (6, 2, 1))), ValueError,
                                  "share memory"),
    "grad_h is h": (lambda: _bwd_out(_h, torch.empty_like(_h)), ValueError, "grad_h overlaps h"),
    "a is grad_h": (lambda: _bwd_out(*[torch.empty_like(_h)] * 2), ValueError, "grad_h overlaps a"),
    "a overlaps h": (lambda: _bwd_out(torch.empty(4, 3, 6), _buf[2:6], h=_buf[:4]), ValueError, "a overlaps h"),
    "a with stride 0": (lambda: _bwd_out(torch.empty_like(_h), torch.empty(4, 1, 6).expand(4, 3, 6)), ValueError,
                        "a has elements that share memory"),
}


@pytest.mark.parametrize("case", list(BAD_OP_CALLS))
def test_ops_reject_bad_input_with_clear_errors(case):
    call, error, match = BAD_OP_CALLS[case]
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("case", [c for c in BAD_OP_CALLS if "out" in c or "grad_h" in c or " a " in f" {c} "])
def test_meta_implementations_make_the_same_checks(case):
    """The Meta implementations share the checks (torch.compile sees the same errors as eager)."""
    call, error, match = BAD_OP_CALLS[case]
    with torch.device("meta"), pytest.raises(error, match=match):
        _meta_call(call)


def _meta_call(call):
    """Run `call` with its module-level tensors moved to the meta device (views kept as views)."""
    global _h, _w, _b, _buf
    saved = _h, _w, _b, _buf
    _buf = _buf.to("meta")
    _h, _w, _b = _h.to("meta"), _w.to("meta"), _b.to("meta")
    try:
        call()
    finally:
        _h, _w, _b, _buf = saved


def test_out_ops_accept_the_views_the_adapter_passes():
    """Patch rows of (frames, L, Ca [+ 8]) buffers, as fused.py passes them: strided, not overlapping."""
    h_full, a_full = torch.randn(4, 5, 6), torch.randn(4, 5, 6 + 8)
    h, a = h_full[:, 1:], a_full[:, 1:, :6]
    ops.temporal_conv_act_out(h, _w, _b, 2, "gelu", a)
    torch.testing.assert_close(a, naive_conv_act(h, _w, _b, 2, "gelu").float())


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
    torch.library.opcheck(saf.ops.adapter_fwd, (x, None, *params, 3, 1, "gelu", True, "compiled"))


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
