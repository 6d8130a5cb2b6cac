"""Triton path vs the float64 reference: forward output and all seven gradients.

Runs natively on a GPU, under the Triton interpreter on a CPU (shapes kept small for that).
"""
import pytest
import torch

import st_adapter_fast as saf
from st_adapter_fast.bench.parity import TOLERANCE, parity_errors, random_inputs, rel_err
from conftest import DEVICE
from parity_checks import (C, CA, check_backward_deterministic, check_double_backward, check_parity,
                           check_prefix_isolation, check_strided_inputs, check_strided_parameters)
from st_adapter_fast.measure import saved_activation_bytes

pytestmark = pytest.mark.triton

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ACTIVATIONS = ("gelu", "quick_gelu", None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kernel_t", (1, 3, 5))
@pytest.mark.parametrize("frames", (1, 2, 3, 8))
def test_parity_grid(frames, kernel_t, activation, dtype, poison_empty):
    batch = 1 if frames == 8 else 2
    check_parity(batch, frames, kernel_t, activation, dtype)


@pytest.mark.parametrize("kernel_t", (5, 7))
def test_kernel_longer_than_clip(kernel_t, poison_empty):
    # Taps reaching past both ends of a 2-frame clip must see zeros; kt=7 is the largest fused kernel.
    check_parity(2, 2, kernel_t, "gelu", torch.float32)
    check_parity(1, 9, kernel_t, "quick_gelu", torch.float16)


@pytest.mark.parametrize("prefix", (0, 1, 5))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_prefix_tokens(prefix, dtype, poison_empty):
    check_parity(2, 3, 3, "gelu", dtype, prefix=prefix, grid=(4, 4))


@pytest.mark.parametrize("grid", [(2, 7), (5, 3), (1, 1)])
def test_non_square_grids(grid, poison_empty):
    check_parity(2, 3, 3, "gelu", torch.float32, grid=grid)


@pytest.mark.parametrize("channels, adapter_channels", [(24, 8), (100, 65), (64, 33)])
def test_channel_sizes(channels, adapter_channels, poison_empty):
    check_parity(1, 4, 3, "gelu", torch.float32, channels=channels, adapter_channels=adapter_channels)
    check_parity(1, 4, 3, None, torch.bfloat16, channels=channels, adapter_channels=adapter_channels)


def test_strided_input_matches_contiguous(monkeypatch):
    monkeypatch.setattr(saf.backends, "_warned", set())
    x, params, expected = check_strided_inputs("triton")
    channels_strided = x.transpose(1, 2).contiguous().transpose(1, 2)   # last stride != 1: copied, with a warning
    with pytest.warns(UserWarning, match="contiguous copy"):
        torch.testing.assert_close(saf.st_adapter(channels_strided, 3, *params, backend="triton"), expected)


def test_no_grad_forward_matches(poison_empty):
    x, params = random_inputs(2, 3, 13, C, CA, (3, 1, 1), device=DEVICE)
    x, params = x.float(), [p.float() for p in params]
    with torch.no_grad():
        y = saf.st_adapter(x, 3, *params, grid_size=(3, 4), backend="triton")
    y_ref = saf.st_adapter(x.double(), 3, *[p.double() for p in params], grid_size=(3, 4), backend="reference")
    assert rel_err(y, y_ref) <= TOLERANCE[torch.float32]


def test_input_is_not_written():
    x, params = random_inputs(2, 3, 17, C, CA, (3, 1, 1), device=DEVICE)
    x, params = x.float().requires_grad_(), [p.float() for p in params]
    before = x.detach().clone()
    saf.st_adapter(x, 3, *params, backend="triton").sum().backward()
    assert torch.equal(x.detach(), before)


@pytest.mark.parametrize("kernel_t", (1, 3, 7))
def test_backward_reductions_match_the_compiled_kernels(kernel_t):
    """Both kernel families write their partial sums in one layout, (blocks, kt + 2, Ca): Triton's summed and
    split by fused.conv_reductions give the compiled op's conv-weight, conv-bias and fc1-bias gradients."""
    from st_adapter_fast.kernels.triton.adapter import TRITON_KERNELS
    gen = torch.Generator().manual_seed(kernel_t)
    frames, num_frames, tokens, ca = 6, 3, 37, CA   # 37 tokens: three blocks, the last one partial
    h, grad_a = (torch.randn(frames, tokens, ca, generator=gen).to(DEVICE) for _ in range(2))
    weight = torch.randn(ca, kernel_t, generator=gen).to(DEVICE)
    bias = torch.randn(ca, generator=gen).to(DEVICE)
    a, grad_h = torch.empty_like(h), torch.empty_like(h)
    ours = TRITON_KERNELS.conv_act_backward(g_patch=grad_a, fc2_weight=torch.empty(C, ca, device=DEVICE), h=h,
                                            conv_weight=weight, conv_bias=bias, a=a, grad_h=grad_h,
                                            num_frames=num_frames, activation="gelu")
    expected = torch.ops.st_adapter_fast.temporal_conv_act_backward(grad_a, h, weight, bias, num_frames, "gelu")
    torch.testing.assert_close(grad_h, expected[0], rtol=1e-5, atol=1e-5)
    for name, got, want in zip(("conv.weight", "conv.bias", "fc1.bias"), ours, expected[2:]):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, msg=lambda m: f"{name}: {m}")


def test_backward_is_deterministic():
    check_backward_deterministic("triton")


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
def test_autocast_matches_reference_dtype_behaviour(dtype):
    x, params = random_inputs(2, 3, 17, C, CA, (3, 1, 1), device=DEVICE)
    module_ref = saf.STAdapterReference(C, CA).to(DEVICE)
    module = saf.STAdapter(C, CA, backend="triton").to(DEVICE)
    with torch.no_grad():
        for m in (module_ref, module):
            for p, value in zip(m.adapter_params(), params):
                p.copy_(value)
    x = x.float()
    with torch.autocast(DEVICE, dtype=dtype):
        y_ref = module_ref(x, 3)
        y = module(x, 3)
    assert y.dtype == y_ref.dtype == torch.float32
    assert rel_err(y, y_ref) <= TOLERANCE[dtype]
    y.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in module.parameters())


def test_saved_bytes_at_most_half_of_reference():
    """Activations saved for backward other than x (the measure the README's numbers use: x is the block's input).
    Counting x, see test_saved_bytes_counting_x."""
    x, params = random_inputs(2, 8, 17, C, CA, (3, 1, 1), device=DEVICE)
    x = x.float().requires_grad_()
    params = [p.float().requires_grad_() for p in params]

    def saved_bytes(backend):
        return saved_activation_bytes(lambda: saf.st_adapter(x, 8, *params, backend=backend), x, *params)

    ours, reference = saved_bytes("triton"), saved_bytes("reference")
    assert ours <= 0.5 * reference, (ours, reference)


def test_opcheck():
    x, params = random_inputs(2, 3, 13, C, CA, (3, 1, 1), device=DEVICE)
    x, params = x.float().requires_grad_(), [p.float().requires_grad_() for p in params]
    torch.library.opcheck(saf.ops.adapter_fwd, (x, None, *params, 3, 1, "gelu", True, "triton"))
    low = [p.detach().to(torch.float16).requires_grad_() for p in params]
    x_low = saf.fused.zero_prefix_copy(x, torch.float16, 1)
    torch.library.opcheck(saf.ops.adapter_fwd, (x, x_low, *low, 3, 1, "gelu", True, "triton"))   # autocast-style
    torch.library.opcheck(saf.ops.adapter_fwd, (x.detach(), None, *[p.detach() for p in params], 3, 1, "none", False,
                                                "triton"))


@pytest.mark.parametrize("autocast", [False, True])
def test_saved_bytes_counting_x(autocast):
    """Everything saved but the parameters, x included: ours keeps x (in the compute dtype) and h, the
    reference keeps a copy of x's patch rows and three (N x Ca) tensors. About 0.6 for ViT-B/16 shapes;
    the issue's target of 0.5 would need x itself not to be kept (e.g. recomputed from y)."""
    x, params = random_inputs(2, 8, 197, 96, 48, (3, 1, 1), device=DEVICE)
    x = x.float().requires_grad_()
    params = [p.float().requires_grad_() for p in params]

    def saved_bytes(backend):
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
            return saved_activation_bytes(lambda: saf.st_adapter(x, 8, *params, backend=backend), *params)

    ours, reference = saved_bytes("triton"), saved_bytes("reference")
    assert ours <= 0.65 * reference, (ours, reference)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ("gelu", None))
@pytest.mark.parametrize("kernel_t", (1, 3, 7))
def test_fused_gemm_variant(kernel_t, activation, dtype, monkeypatch, poison_empty):
    """The variant that computes the down-projection (and grad_a) inside the conv kernels."""
    from st_adapter_fast.kernels.triton import adapter as triton_adapter
    monkeypatch.setattr(triton_adapter, "FUSED_GEMM", True)
    check_parity(2, 3, kernel_t, activation, dtype)
    check_parity(1, 8, kernel_t, activation, dtype, prefix=0, grid=(5, 5))


def test_empty_batch():
    x, params = random_inputs(1, 2, 10, C, CA, (3, 1, 1), device=DEVICE)
    x, params = x[:0].float().requires_grad_(), [p.float() for p in params]
    y = saf.st_adapter(x, 2, *params, backend="triton")
    assert y.shape == (0, 10, C)


@pytest.mark.parametrize("via_custom_op", [False, True])
def test_double_backward_matches_reference(via_custom_op):
    check_double_backward("triton", via_custom_op=via_custom_op)


@pytest.mark.parametrize("fused_gemm", [False, True])
def test_strided_parameters(fused_gemm, monkeypatch):
    from st_adapter_fast.kernels.triton import adapter as triton_adapter
    monkeypatch.setattr(triton_adapter, "FUSED_GEMM", fused_gemm)
    check_strided_parameters("triton")


@pytest.mark.parametrize("fused_gemm, autocast_dtype", [(False, None), (True, None), (False, torch.bfloat16)])
def test_prefix_tokens_isolated_from_non_finite_values(fused_gemm, autocast_dtype, monkeypatch):
    from st_adapter_fast.kernels.triton import adapter as triton_adapter
    monkeypatch.setattr(triton_adapter, "FUSED_GEMM", fused_gemm)
    check_prefix_isolation("triton", autocast_dtype=autocast_dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16] + ([torch.float16] if DEVICE == "cuda" else []), ids=str)
@pytest.mark.parametrize("activation", ("gelu", None))
def test_low_precision_error_at_most_twice_eager_reference(dtype, activation):
    """flash-attention's rule: against float64, the fused result's error is at most ~2x the error of the
    reference computed eagerly in the same low precision (plus a little slack for tiny errors)."""
    kwargs = dict(batch=2, frames=8, grid=(4, 5), channels=C, adapter_channels=CA, activation=activation,
                  device=DEVICE, seed=3)
    ours = parity_errors("triton", dtype, **kwargs)[0]
    eager = parity_errors("reference", dtype, **kwargs)[0]
    worse = {k: (ours[k], eager[k]) for k in ours if ours[k] > 2 * eager[k] + 1e-4}
    assert not worse, f"(fused, eager reference) errors where fused is worse than 2x: {worse}"
