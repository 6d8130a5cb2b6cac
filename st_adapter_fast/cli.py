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


def check_cases(device):
    """(backend, dtypes) to check on `device`: every backend the capability table (backends.py) says can run
    there, in the dtypes it takes among float32, bfloat16 and float16 (float64 is the reference it is
    checked against); on the CPU the reference in float32 and bfloat16, as the check has always run it."""
    import torch

    from .backends import available_on
    cases = []
    for capability in available_on(device):
        dtypes = [d for d in (torch.float32, torch.bfloat16, torch.float16) if d in capability.dtypes]
        if capability.name == "reference" and device == "cpu":
            dtypes.remove(torch.float16)
        cases.append((capability.name, dtypes))
    return cases


def check(args):
    """Parity of every available backend against the float64 reference; prints a table, returns exit code."""
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from tqdm import tqdm

    from .bench.parity import TOLERANCE, parity_errors

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = args.config or ("vit-b" if device == "cuda" else "small")
    batch, frames, grid, channels, adapter_channels = CONFIGS[config]
    cases = [(backend, dtype, activation) for backend, dtypes in check_cases(device) for dtype in dtypes
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


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help followed by its default, unless it has none worth showing (None, False) or the
    help already speaks of it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or "default" in text or text == argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """A usage error is one line, `st-adapter-fast: error: ...` with the command, not the whole usage."""

    def error(self, message):
        self.exit(2, f"st-adapter-fast: error: {message} (see {self.prog} --help)\n")


def _print_error(message):
    print(f"st-adapter-fast: error: {message}", file=sys.stderr)


def _print_warning(message):
    print(f"st-adapter-fast: warning: {message}", file=sys.stderr)


def train_command(args):
    """Train from flags / a config file; prints the final metrics and where the files are. Run under
    torchrun for DDP."""
    from .video.train import TrainConfig, check_can_train, config_values_from_args, config_warnings, format_metrics, train
    config = TrainConfig.from_dict(config_values_from_args(args), source=args.config or "flags")
    check_can_train(config)
    rank0 = int(os.environ.get("RANK", 0)) == 0
    if rank0:
        for message in config_warnings(config):
            _print_warning(message)
    try:
        result = train(config)
    except KeyboardInterrupt:
        if rank0:
            _print_interrupted(config, args.argv)
        return 130
    if rank0:
        print(result["parameters"])
        print(f"backbone computed in {result['backbone_compute_dtype']} (the dtype its Linear layers' outputs "
              "had on the first step)")
        if result["metrics"]:
            print(f"final eval: {format_metrics(result['metrics'])}")
        elif result["steps_done"] < config.steps:
            print(f"stopped at step {result['steps_done']} of {config.steps} (--stop-at); the same command without "
                  "--stop-at resumes and finishes the run")
        else:
            print("no final eval (no --val-list)")
        _print_run_files(config)
    return 0


def _resume_command(argv):
    """The command that resumes a run started with `argv` (without --no-resume, which would start over)."""
    import shlex
    return "st-adapter-fast " + shlex.join(arg for arg in argv if arg != "--no-resume")


def _print_interrupted(config, argv):
    from .video.train import checkpoint_step
    step = checkpoint_step(config.output_dir)
    if step is None:
        _print_error(f"interrupted before the first checkpoint (--save-every {config.save_every}; 0 writes one "
                     f"only at the end): nothing to resume from in {config.output_dir}")
    else:
        _print_error(f"interrupted; the checkpoint of step {step} is kept in "
                     f"{os.path.join(config.output_dir, 'checkpoint.pt')}. Resume with the same command: "
                     f"{_resume_command(argv)}")


def _print_run_files(config):
    from .video.train import ADAPTERS_NAME, RUN_FILES
    output_dir = os.path.abspath(config.output_dir)
    present = [name for name in RUN_FILES if os.path.exists(os.path.join(output_dir, name))]
    print(f"run files in {output_dir}: "
          + ", ".join(name + "/" * os.path.isdir(os.path.join(output_dir, name)) for name in present))
    adapters = os.path.join(output_dir, ADAPTERS_NAME)
    if ADAPTERS_NAME in present:
        print(f"evaluate: st-adapter-fast eval {adapters} [--val-list LIST --data-root DIR]")
        print(f"in Python: model = st_adapter_fast.from_pretrained({adapters!r})")


def eval_command(args):
    """Evaluate a run's adapters/ folder; prints top-1/top-5 and how many videos were skipped."""
    import json

    from .video.train import config_values_from_args, evaluate_adapters, format_metrics
    metrics = evaluate_adapters(args.adapters, config_values_from_args(args))
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(metrics))
        print(format_metrics(metrics))
    return 0


def make_synthetic_command(args):
    """Write the synthetic temporal-order videos and list files."""
    from .video.synthetic import make_synthetic
    train_list, val_list = make_synthetic(args.out, args.num_train, args.num_val, num_frames=args.num_frames,
                                          size=args.size, seed=args.seed, progress=True)
    print(f"wrote {train_list} and {val_list}")
    return 0


def _add_video_commands(sub, common):
    from .video.train import EVAL_FIELDS, add_config_arguments
    t = sub.add_parser("train", parents=[common], formatter_class=HelpFormatter,
                       help="fine-tune adapters on a video list (torchrun for multi-GPU/multi-node)",
                       description="Fine-tune ST-Adapters on a frozen timm ViT. Every flag is also a key of the "
                       "--config file. Rerunning with the same --output-dir resumes.")
    add_config_arguments(t)
    t.set_defaults(func=train_command)
    e = sub.add_parser("eval", parents=[common], formatter_class=HelpFormatter,
                       help="evaluate the adapters/ folder of a train run on a video list",
                       description="Evaluate a train run's adapters/ folder: the model as trained (from its "
                       "train_config.json), on its val_list or the one given.")
    e.add_argument("adapters", help="a train run's output_dir/adapters")
    add_config_arguments(e, only=EVAL_FIELDS, default_text="the run's, from its train_config.json")
    e.set_defaults(func=eval_command)
    m = sub.add_parser("make-synthetic", parents=[common], formatter_class=HelpFormatter,
                       help="write the synthetic temporal-order task (mp4s + list files)")
    m.add_argument("out", help="output directory")
    m.add_argument("--num-train", type=int, default=400, help="training videos (pairs: even)")
    m.add_argument("--num-val", type=int, default=200, help="validation videos (pairs: even)")
    m.add_argument("--num-frames", type=int, default=16, help="frames per video")
    m.add_argument("--frames", dest="num_frames", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    m.add_argument("--size", type=int, default=32, help="side of the square frames")
    m.add_argument("--seed", type=int, default=0, help="seed of the videos' randomness")
    m.set_defaults(func=make_synthetic_command)
    d = sub.add_parser("demo", parents=[common], formatter_class=HelpFormatter,
                       help="linear probe vs ST-Adapters on the synthetic task (see demo.py)")
    from .video import demo
    demo.add_arguments(d)
    d.set_defaults(func=demo.run)


def build_parser():
    """The `st-adapter-fast` argument parser (every command)."""
    parser = ArgumentParser(prog="st-adapter-fast", description=__doc__)
    common = ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", parents=[common], formatter_class=HelpFormatter,
                       help="parity report of every available backend against the float64 reference")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--config", choices=sorted(CONFIGS), help="default: vit-b on cuda, small on cpu")
    p.add_argument("--interpret", action="store_true",
                   help="on the CPU, also check the Triton kernels under TRITON_INTERPRET=1 (slow)")
    p.set_defaults(func=check)
    b = sub.add_parser("bench", parents=[common], formatter_class=HelpFormatter,
                       help="time every backend and baseline (see st_adapter_fast/bench/benchmark.py)")
    from .bench import benchmark
    benchmark.add_arguments(b)
    b.set_defaults(func=lambda args: benchmark.run(args) and 0)
    _add_video_commands(sub, common)
    return parser


def main(argv=None):
    """Run a command; returns its exit code. A user error (bad flag value, missing file, unknown model...)
    prints one `st-adapter-fast: error: ...` line and returns 1; `--debug` raises it with its traceback."""
    import warnings
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.debug:
        return args.func(args)
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"st-adapter-fast: warning: {message}\n"   # no source line
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _print_error("interrupted")
        return 130
    except Exception as error:   # noqa: BLE001 -- every error, one line; --debug shows the traceback
        message = " ".join(str(error).split()) or type(error).__name__
        if not isinstance(error, (ValueError, TypeError, OSError, ImportError)):
            message = f"{type(error).__name__}: {message} (--debug shows the traceback)"
        _print_error(message)
        return 1
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
