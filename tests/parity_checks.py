"""Shared parity assertion for the kernel backends' tests (Triton, compiled CPU/CUDA)."""
import torch

import st_adapter_fast as saf
from st_adapter_fast.bench.parity import GRADIENT_NAMES, TOLERANCE, forward_backward, parity_errors, random_inputs, rel_err
from conftest import DEVICE

# C and Ca not powers of two; 12 patches (3 x 4 grid) is not a multiple of the token block.
C, CA = 72, 40


def check_parity(batch, frames, kernel_t, activation, dtype, *, prefix=1, grid=(3, 4), channels=C,
                 adapter_channels=CA, seed=0, backend="triton", device=DEVICE):
    """Forward and all seven gradients of `backend` within TOLERANCE[dtype] of the float64 reference;
    prefix tokens and their gradient pass through bit-exactly. Returns the errors."""
    errors, y, grads, x, grad_y = parity_errors(
        backend, dtype, batch=batch, frames=frames, grid=grid, channels=channels,
        adapter_channels=adapter_channels, kernel_size=(kernel_t, 1, 1), prefix=prefix, activation=activation,
        device=device, seed=seed)
    assert y.dtype == dtype and y.shape == x.shape
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCE[dtype]}
    assert not bad, f"relative errors above {TOLERANCE[dtype]:g} for {dtype}: {bad}"
    # Prefix tokens pass through bit-exactly, and their gradient is grad_y's.
    assert torch.equal(y[:, :prefix], x[:, :prefix].to(dtype))
    assert torch.equal(grads[0][:, :prefix], grad_y[:, :prefix].to(dtype))
    return errors


def check_strided_inputs(backend, device=DEVICE):
    """Inputs whose row or frame strides are not the contiguous ones give the contiguous result.
    Returns (x, params, expected) for further checks."""
    x, params = random_inputs(2, 3, 17, C, CA, (3, 1, 1), device=device)
    x, params = x.float(), [p.float() for p in params]
    wide = torch.randn(6, 17, C + 8, device=device)
    wide[..., 3:3 + C] = x
    sliced = wide[..., 3:3 + C]                     # row stride C + 8, last stride 1
    transposed = x.transpose(0, 1).contiguous().transpose(0, 1)   # frame stride not the largest
    expected = saf.st_adapter(x, 3, *params, backend=backend)
    for view in (sliced, transposed):
        assert not view.is_contiguous()
        torch.testing.assert_close(saf.st_adapter(view, 3, *params, backend=backend), expected)
    return x, params, expected


def check_backward_deterministic(backend, device=DEVICE, num_tokens=17):
    """Two forward + backward runs give bit-identical gradients."""
    x, params = random_inputs(4, 8, num_tokens, C, CA, (3, 1, 1), device=device)
    grad_y = torch.randn(x.shape, dtype=torch.float64).to(device)
    runs = [forward_backward(lambda x_, *p: saf.st_adapter(x_, 8, *p, backend=backend), x, params, grad_y,
                             torch.float32)[1] for _ in range(2)]
    for first, second in zip(*runs):
        assert torch.equal(first, second)


def strided_views(params):
    """The six parameters as strided views with the same values: every second element of a buffer (the
    biases), a transposed copy (fc1.weight), a slice of a wider buffer (fc2.weight, conv.weight).
    Returns (views, bases): gradients reach the bases."""
    fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias = params

    def every_second(v):
        base = torch.zeros(2 * v.numel(), dtype=v.dtype, device=v.device)
        base[::2] = v.reshape(-1)
        return base

    bases = [fc1_weight.t().contiguous(), every_second(fc1_bias), torch.cat([conv_weight, conv_weight], -1),
             every_second(conv_bias), torch.cat([fc2_weight, fc2_weight], 1), every_second(fc2_bias)]
    bases = [b.detach().requires_grad_() for b in bases]
    views = [bases[0].t(), bases[1][::2], bases[2][..., :1], bases[3][::2], bases[4][:, :fc2_weight.shape[1]],
             bases[5][::2]]
    for view, p in zip(views, params):
        assert not view.is_contiguous() and torch.equal(view, p)
    return views, bases


def check_strided_parameters(backend, device=DEVICE):
    """Parameters that are strided views give the result (forward and every gradient) of contiguous ones."""
    x, params = random_inputs(2, 3, 13, C, CA, (3, 1, 1), device=device)
    x, params = x.float(), [p.float() for p in params]
    grad_y = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).to(device)
    fn = lambda x_, *p: saf.st_adapter(x_, 3, *p, grid_size=(3, 4), backend=backend)
    y, grads = forward_backward(fn, x, params, grad_y, torch.float32)
    views, bases = strided_views(params)
    y_strided = fn(x, *views)
    grads_strided = torch.autograd.grad(y_strided, views, grad_y)
    torch.testing.assert_close(y_strided, y)
    for name, g, g_ref in zip(GRADIENT_NAMES[1:], grads_strided, grads[1:]):
        torch.testing.assert_close(g, g_ref, msg=lambda m: f"{name}: {m}")


NON_FINITE = (float("inf"), float("-inf"), float("nan"))


def check_prefix_isolation(backend, device=DEVICE, dtype=torch.float32, autocast_dtype=None):
    """Prefix tokens pass through exactly whatever the weights hold (inf, NaN), and the weights' gradients
    do not depend on x's prefix rows (inf, NaN there included)."""
    P = 2
    x, params = random_inputs(2, 3, P + 9, C, CA, (3, 1, 1), device=device)
    x, params = x.to(dtype), [p.to(dtype) for p in params]
    grad_y = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=dtype).to(device)

    def run(x_, params_):
        leaves = [t.detach().clone().requires_grad_() for t in (x_, *params_)]
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            y = saf.st_adapter(leaves[0], 3, *leaves[1:], num_prefix_tokens=P, grid_size=(3, 3), backend=backend)
        y.backward(grad_y.to(y.dtype))
        return y.detach(), [t.grad for t in leaves]

    exact = lambda a, b, what: torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, check_dtype=False,
                                                           msg=lambda m: f"{what}: {m}")
    for index, name in enumerate(GRADIENT_NAMES[1:]):
        for value in NON_FINITE:
            poisoned = [p.clone() for p in params]
            poisoned[index].view(-1)[1] = value
            y, grads = run(x, poisoned)
            exact(y[:, :P], x[:, :P], f"y's prefix rows with {value} in {name}")
            exact(grads[0][:, :P], grad_y[:, :P], f"grad_x's prefix rows with {value} in {name}")

    y, grads = run(x, params)
    x_poisoned = x.clone()
    for channel, value in enumerate(NON_FINITE):
        x_poisoned[:, channel % P, channel] = value
    y_poisoned, grads_poisoned = run(x_poisoned, params)
    exact(y_poisoned[:, :P], x_poisoned[:, :P], "y's prefix rows with non-finite prefix tokens")
    # The rest as without them, finite, up to rounding: a BLAS may round differently for a matrix with an inf.
    close = lambda a, b, what: torch.testing.assert_close(a, b, msg=lambda m: f"{what}: {m}")
    close(y_poisoned[:, P:], y[:, P:], "y's patch rows with non-finite prefix tokens")
    exact(grads_poisoned[0], grads[0], "grad_x with non-finite prefix tokens")
    for name, g, g_ref in zip(GRADIENT_NAMES[1:], grads_poisoned[1:], grads[1:]):
        close(g, g_ref, f"{name}'s gradient with non-finite prefix tokens")


def check_double_backward(backend, device=DEVICE, dtype=torch.float32, via_custom_op=False):
    """Gradient penalties (second derivatives through the first backward, with a grad_y that has no graph
    and one that has) match the reference backend's in float64, to TOLERANCE[dtype]."""
    x, params = random_inputs(2, 3, 1 + 6, 12, 8, (3, 1, 1), device=device)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(device)

    def adapter(backend_, x_, *p):
        if via_custom_op:   # the registered op in eager mode, as torch.compile's graphs would call it
            kernels = "triton" if backend_ == "triton" else "compiled"
            return saf.ops.adapter_fwd(x_, None, *p, 3, 1, "gelu", True, kernels)[0]
        return saf.st_adapter(x_, 3, *p, grid_size=(2, 3), backend=backend_)

    def second_derivatives(backend_, dtype_, loss_fn):
        leaves = [t.detach().to(dtype_).requires_grad_() for t in (x, *params)]
        y = adapter(backend_, *leaves)
        grads = torch.autograd.grad(loss_fn(y), leaves, create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        return torch.autograd.grad(penalty, leaves, allow_unused=True, materialize_grads=True)

    for loss_name, loss_fn in (("(y * w).sum()", lambda y: (y * weights.to(y.dtype)).sum()),
                               ("y.square().sum()", lambda y: y.square().sum())):
        ours = second_derivatives(backend, dtype, loss_fn)
        expected = second_derivatives("reference", torch.float64, loss_fn)
        errors = {name: rel_err(g, g_ref) for name, g, g_ref in zip(GRADIENT_NAMES, ours, expected)}
        bad = {k: v for k, v in errors.items() if not v <= TOLERANCE[dtype]}
        assert not bad, f"{loss_name}: second-derivative errors above {TOLERANCE[dtype]:g}: {bad}"
