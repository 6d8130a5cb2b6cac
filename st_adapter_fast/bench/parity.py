"""Parity of a backend against the float64 reference: the `st-adapter-fast check` report, and what the
tests assert with."""
import os
import sys

import torch

from ..ops import st_adapter
from ..reference import st_adapter_reference

# ||out - ref|| / ||ref|| bounds against the float64 reference (the README's accuracy bounds).
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


# ---------------------------------------------------------------------------------------- st-adapter-fast check

CHECK_CONFIGS = {
    # name: (batch, frames, grid, channels, adapter_channels)
    "small": (2, 8, (6, 7), 72, 40),
    "vit-b": (2, 8, (14, 14), 768, 384),
}


def check_cases(device):
    """(backend, dtypes) to check on `device`: every backend the capability table (backends.py) says can run
    there, in the dtypes it takes among float32, bfloat16 and float16 (float64 is the reference it is
    checked against); on the CPU the reference in float32 and bfloat16, as the check has always run it."""
    from ..backends import available_on
    cases = []
    for capability in available_on(device):
        dtypes = [d for d in (torch.float32, torch.bfloat16, torch.float16) if d in capability.dtypes]
        if capability.name == "reference" and device == "cpu":
            dtypes.remove(torch.float16)
        cases.append((capability.name, dtypes))
    return cases


def add_check_arguments(parser):
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--config", choices=sorted(CHECK_CONFIGS), help="default: vit-b on cuda, small on cpu")
    parser.add_argument("--interpret", action="store_true",
                        help="on the CPU, also check the Triton kernels under TRITON_INTERPRET=1 (slow)")


def _progress(iterable, **options):
    """tqdm's progress bar over `iterable` where tqdm is installed (not a dependency of the kernel library)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **options)


def check(args):
    """Parity of every available backend against the float64 reference; prints a table, returns exit code."""
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here (use --device cpu)")
    config = args.config or ("vit-b" if device == "cuda" else "small")
    batch, frames, grid, channels, adapter_channels = CHECK_CONFIGS[config]
    cases = [(backend, dtype, activation) for backend, dtypes in check_cases(device) for dtype in dtypes
             for activation in ("gelu", None)]
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"st-adapter-fast check on {where} ({device}), config {config!r}: B={batch} T={frames} grid={grid} "
          f"C={channels} Ca={adapter_channels} kernel (3,1,1); errors are ||out - ref|| / ||ref|| vs float64")
    rows, failed = [], 0
    for backend, dtype, activation in _progress(cases, desc="checking", unit="case", file=sys.stderr):
        errors = parity_errors(backend, dtype, batch=batch, frames=frames, grid=grid, channels=channels,
                               adapter_channels=adapter_channels, activation=activation, device=device)[0]
        worst = max((k for k in errors if k != "y"), key=errors.get)
        ok = all(v <= TOLERANCE[dtype] for v in errors.values())
        failed += not ok
        rows.append((backend, str(dtype).replace("torch.", ""), str(activation), f"{errors['y']:.2e}",
                     f"{errors[worst]:.2e} ({worst[5:]})", f"{TOLERANCE[dtype]:.0e}", "ok" if ok else "FAIL"))
    header = ("backend", "dtype", "activation", "y", "worst gradient", "tolerance", "")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    print(f"{len(rows) - failed}/{len(rows)} within tolerance")
    return 1 if failed else 0
