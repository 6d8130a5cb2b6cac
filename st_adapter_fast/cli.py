"""`st-adapter-fast` command line: `check` (parity report of every available backend), `bench`, and the
video workflow: `make-synthetic`, `train`, `eval`, `demo`.

A dispatcher: the commands live with what they run (check: bench/parity.py, bench: bench/benchmark.py, the
video commands: video/commands.py). A command whose dependencies beyond the kernel library are missing says
which extra installs them, in one line."""
import sys

from .console import PIP_NAMES, ArgumentParser, HelpFormatter, print_error, require  # noqa: F401 (PIP_NAMES: tests)


def _bench_needs(args):
    if args.data:   # the data loading benchmark: the video application's dataset
        return "video", ("av", "yaml", "tqdm", "timm", "torchvision")
    return "bench", ("tqdm", "timm") if args.e2e or args.e2e_only else ("tqdm",)


def build_parser():
    """The `st-adapter-fast` argument parser (every command). The measuring tools (bench/) and the video
    application (video/) add their own commands; their own dependencies are only imported when a command runs."""
    from .bench import benchmark, data, parity
    from .video.commands import add_video_commands
    parser = ArgumentParser(prog="st-adapter-fast", description=__doc__.split("\n\n")[0])
    common = ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", parents=[common], formatter_class=HelpFormatter,
                       help="parity report of every available backend against the float64 reference")
    parity.add_check_arguments(p)
    p.set_defaults(func=parity.check)
    b = sub.add_parser("bench", parents=[common], formatter_class=HelpFormatter,
                       help="time every backend and baseline (see st_adapter_fast/bench/benchmark.py), or with "
                            "--data a list's clips (bench/data.py)")
    benchmark.add_arguments(b)
    data.add_arguments(b)

    def bench(args):
        data.check_mode_options(b, args)
        return (data.run(args) if args.data else benchmark.run(args)) and 0
    b.set_defaults(func=bench, needs=_bench_needs)
    add_video_commands(sub, common)
    return parser


def _run(args):
    needs = getattr(args, "needs", None)
    if needs is not None:
        require(*needs(args), what=args.command)
    return args.func(args)


def main(argv=None):
    """Run a command; returns its exit code. A user error (bad flag value, missing file, unknown model...)
    prints one `st-adapter-fast: error: ...` line and returns 1; `--debug` raises it with its traceback."""
    import warnings
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.debug:
        return _run(args)
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"st-adapter-fast: warning: {message}\n"   # no source line
    try:
        return _run(args)
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130
    except Exception as error:   # noqa: BLE001 -- every error, one line; --debug shows the traceback
        message = " ".join(str(error).split()) or type(error).__name__
        if not isinstance(error, (ValueError, TypeError, OSError, ImportError)):
            message = f"{type(error).__name__}: {message} (--debug shows the traceback)"
        print_error(message)
        return 1
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
