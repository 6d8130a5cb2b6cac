"""Shared parity assertion for the kernel backends' tests (Triton, compiled CPU/CUDA)."""
import torch

import st_adapter_fast as saf
from st_adapter_fast.parity import TOLERANCE, forward_backward, parity_errors, random_inputs
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
