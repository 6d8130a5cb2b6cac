"""`st-adapter-fast` command line: `check` (parity report of every available backend), `bench`, and the
video workflow: `make-synthetic`, `train`, `eval`, `demo`."""
import argparse
import os
import sys

CONFIGS = {
    # name: (batch, frames, grid, channels, adapter_channels)
    "small": (2, 8, (6, 7), 72, 40),
    "vit-b": (2, 8, (14, 14), 768, 384),
}


def _available_backends(device):
    """(backend, dtypes) pairs that can run on `device` in this installation."""
    import torch

    from .compiled import extension_info
    from .ops import HAS_TRITON, _interpreting
    low_precision = [torch.bfloat16, torch.float16] if device == "cuda" else [torch.bfloat16]
    backends = [("reference", [torch.float32] + low_precision)]
    info = extension_info()
    if info["available"] and (device == "cpu" or info["with_cuda"]):
        backends.append((device, [torch.float32, torch.bfloat16, torch.float16]))
    if HAS_TRITON and (device == "cuda" or _interpreting()):
        backends.append(("triton", [torch.float32, torch.bfloat16, torch.float16]))
    return backends


def check(args):
    """Parity of every available backend against the float64 reference; prints a table, returns exit code."""
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from tqdm import tqdm

    from .parity import TOLERANCE, parity_errors

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = args.config or ("vit-b" if device == "cuda" else "small")
    batch, frames, grid, channels, adapter_channels = CONFIGS[config]
    cases = [(backend, dtype, activation) for backend, dtypes in _available_backends(device) for dtype in dtypes
             for activation in ("gelu", None)]
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"st-adapter-fast check on {where} ({device}), config {config!r}: B={batch} T={frames} grid={grid} "
          f"C={channels} Ca={adapter_channels} kernel (3,1,1); errors are ||out - ref|| / ||ref|| vs float64")
    rows, failed = [], 0
    for backend, dtype, activation in tqdm(cases, desc="checking", unit="case", file=sys.stderr):
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


def train_command(args):
    """Train from flags / a config file; prints the final metrics. Run under torchrun for DDP."""
    from .train import TrainConfig, config_values_from_args, train
    result = train(TrainConfig.from_dict(config_values_from_args(args), source=args.config or "flags"))
    if int(os.environ.get("RANK", 0)) == 0:
        print(result["parameters"])
        print(f"backbone computed in {result['backbone_compute_dtype']} (the dtype its Linear layers' outputs "
              "had on the first step)")
        print(f"final eval: {result['metrics']}" if result["metrics"] else "no final eval (no val_list, or stopped early)")
    return 0


def eval_command(args):
    """Evaluate a run's adapters/ folder; prints top-1/top-5 and how many videos were skipped."""
    import json

    from .train import config_values_from_args, evaluate_adapters
    metrics = evaluate_adapters(args.adapters, config_values_from_args(args))
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(metrics))
        print(f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}% on {metrics['videos']} of "
              f"{metrics['listed']} videos ({metrics['skipped']} unreadable, skipped)")
    return 0


def make_synthetic_command(args):
    """Write the synthetic temporal-order videos and list files."""
    from .synthetic import make_synthetic
    train_list, val_list = make_synthetic(args.out, args.num_train, args.num_val, num_frames=args.frames,
                                          size=args.size, seed=args.seed, progress=True)
    print(f"wrote {train_list} and {val_list}")
    return 0


def _add_video_commands(sub):
    from .train import add_config_arguments
    t = sub.add_parser("train", help="fine-tune adapters on a video list (torchrun for multi-GPU/multi-node)")
    add_config_arguments(t)
    t.set_defaults(func=train_command)
    e = sub.add_parser("eval", help="evaluate the adapters/ folder of a train run on a video list")
    e.add_argument("adapters", help="a train run's output_dir/adapters")
    add_config_arguments(e, exclude=("train_list",))
    e.set_defaults(func=eval_command)
    m = sub.add_parser("make-synthetic", help="write the synthetic temporal-order task (mp4s + list files)")
    m.add_argument("out", help="output directory")
    m.add_argument("--num-train", type=int, default=400)
    m.add_argument("--num-val", type=int, default=200)
    m.add_argument("--frames", type=int, default=16)
    m.add_argument("--size", type=int, default=32)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=make_synthetic_command)
    d = sub.add_parser("demo", help="linear probe vs ST-Adapters on the synthetic task (see demo.py)")
    from . import demo
    demo.add_arguments(d)
    d.set_defaults(func=demo.run)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="st-adapter-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="parity report of every available backend against the float64 reference")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--config", choices=sorted(CONFIGS), help="default: vit-b on cuda, small on cpu")
    p.add_argument("--interpret", action="store_true",
                   help="on the CPU, also check the Triton kernels under TRITON_INTERPRET=1 (slow)")
    p.set_defaults(func=check)
    b = sub.add_parser("bench", help="time every backend and baseline (see st_adapter_fast/benchmark.py)")
    from . import benchmark
    benchmark.add_arguments(b)
    b.set_defaults(func=lambda args: benchmark.run(args) and 0)
    _add_video_commands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
