"""Parity of a backend against the float64 reference: used by `st-adapter-fast check` and the tests."""
import torch

from ..ops import st_adapter
from ..reference import st_adapter_reference

# ||out - ref|| / ||ref|| bounds against the float64 reference (DESIGN.md section 4).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float64: 1e-12}
GRADIENT_NAMES = ("x", "fc1_weight", "fc1_bias", "conv_weight", "conv_bias", "fc2_weight", "fc2_bias")


def random_inputs(batch, frames, num_tokens, channels, adapter_channels, kernel_size, *, device="cpu", seed=0):
    """x and the six parameters in float64, all random and non-zero (the default init would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape, scale=1.0: (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device)
    x = rand(batch * frames, num_tokens, channels)
    params = (rand(adapter_channels, channels, scale=channels ** -0.5), rand(adapter_channels, scale=0.2),
              rand(adapter_channels, 1, *kernel_size, scale=0.5), rand(adapter_channels, scale=0.2),
              rand(channels, adapter_channels, scale=adapter_channels ** -0.5), rand(channels, scale=0.2))
    return x, params


def rel_err(out, ref):
    """||out - ref|| / ||ref|| in float64; inf if out has a non-finite value."""
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def forward_backward(fn, x, params, grad_y, dtype):
    """Run fn on leaf copies of x and params cast to `dtype`; return (y, [grad of x, grads of params])."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (x, *params)]
    y = fn(leaves[0], *leaves[1:])
    y.backward(grad_y.to(y.dtype))
    return y, [t.grad for t in leaves]


def parity_errors(backend, dtype, *, batch, frames, grid, channels, adapter_channels, kernel_size=(3, 1, 1),
                  prefix=1, activation="gelu", device="cpu", seed=0):
    """Relative errors of `backend` in `dtype` against the float64 reference: forward and every gradient.

    Returns (errors, y, grads, x, grad_y) with errors a dict {"y": .., "grad_x": .., "grad_fc1_weight": ..}.
    """
    x, params = random_inputs(batch, frames, prefix + grid[0] * grid[1], channels, adapter_channels, kernel_size,
                              device=device, seed=seed)
    grad_y = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(device)
    kwargs = dict(activation=activation, num_prefix_tokens=prefix, grid_size=grid)
    y_ref, grads_ref = forward_backward(lambda x_, *p: st_adapter_reference(x_, frames, *p, **kwargs),
                                        x, params, grad_y, torch.float64)
    y, grads = forward_backward(lambda x_, *p: st_adapter(x_, frames, *p, backend=backend, **kwargs),
                                x, params, grad_y, dtype)
    errors = {"y": rel_err(y, y_ref)}
    errors.update({f"grad_{name}": rel_err(g, g_ref) for name, g, g_ref in zip(GRADIENT_NAMES, grads, grads_ref)})
    return errors, y, grads, x, grad_y
