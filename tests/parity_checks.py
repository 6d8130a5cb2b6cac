"""Shared parity assertion for the kernel backends' tests (Triton, compiled CPU/CUDA)."""
import torch

from st_adapter_fast.parity import TOLERANCE, parity_errors
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
