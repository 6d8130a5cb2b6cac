"""The video application's commands of `st-adapter-fast`: `train`, `eval`, `make-synthetic`, `demo`, `prepare`
(the console script is cli.py, which adds these to its parser)."""
import argparse
import os

from ..console import (HelpFormatter, flag_namer, nonnegative_int, positive_int, print_error, print_warning,
                       renamed_error)

# What the commands import beyond the kernel library (the [video] extra installs them; numpy is a core dependency).
TRAIN_MODULES = ("av", "yaml", "tqdm", "timm")   # train and eval (yaml: config files and train_config.json)
SYNTHETIC_MODULES = ("av", "tqdm")
DEMO_MODULES = TRAIN_MODULES + ("matplotlib",)   # the demo plots its curves
PREPARE_MODULES = ("av", "tqdm", "torchvision")   # torchvision: the JPEG encoder


def train_command(args):
    """Train from flags / a config file; prints the final metrics and where the files are. Run under
    torchrun for DDP."""
    from .train import (NonFiniteLossError, TrainConfig, check_can_train, config_values_from_args, config_warnings,
                        format_metrics, train)
    config = TrainConfig.from_dict(config_values_from_args(args), source=args.config or "flags")
    check_can_train(config)
    rank0 = int(os.environ.get("RANK", 0)) == 0
    if rank0:
        for message in config_warnings(config):
            print_warning(message)
    try:
        result = train(config)
    except KeyboardInterrupt:
        if rank0:
            _print_interrupted(config, args.argv)
        return 130
    except NonFiniteLossError as error:   # the run's own outcome, not a bug: one line, no traceback
        if rank0:
            print_error(str(error))
        return 1
    if rank0:
        print(result["parameters"])
        print(f"backbone computed in {result['backbone_compute_dtype']} (the dtype its Linear layers' outputs "
              "had on the first step)")
        if result["metrics"]:
            print(f"final eval: {format_metrics(result['metrics'])}")
        elif result["steps_done"] < result["config"].steps:   # the run's steps (--epochs sets them)
            print(f"stopped at step {result['steps_done']} of {result['config'].steps} (--stop-at); the same "
                  "command without --stop-at resumes and finishes the run")
        else:
            print("no final eval (no --val-list)")
        _print_run_files(config)
    return 0


def _resume_command(argv):
    """The command that resumes a run started with `argv` (without --no-resume, which would start over)."""
    import shlex
    return "st-adapter-fast " + shlex.join(arg for arg in argv if arg != "--no-resume")


def _print_interrupted(config, argv):
    from .train import checkpoint_step
    step = checkpoint_step(config.output_dir)
    if step is None:
        print_error(f"interrupted before the first checkpoint (--save-every {config.save_every}; 0 writes one "
                     f"only at the end): nothing to resume from in {config.output_dir}")
    else:
        print_error(f"interrupted; the checkpoint of step {step} is kept in "
                     f"{os.path.join(config.output_dir, 'checkpoint.pt')}. Resume with the same command: "
                     f"{_resume_command(argv)}")


def _print_run_files(config):
    from .train import ADAPTERS_NAME, RUN_FILES
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

    from .train import config_values_from_args, evaluate_adapters, format_metrics
    metrics = evaluate_adapters(args.adapters, config_values_from_args(args))
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(metrics))
        print(format_metrics(metrics))
    return 0


def make_synthetic_command(args):
    """Write the synthetic temporal-order videos and list files."""
    from .synthetic import SYNTHETIC_ARGUMENTS, make_synthetic
    try:
        train_list, val_list = make_synthetic(args.out, args.num_train, args.num_val, num_frames=args.num_frames,
                                              size=args.size, seed=args.seed, progress=True)
    except (ValueError, TypeError) as error:   # its message starts with the argument's name: name the flag
        raise renamed_error(error, flag_namer(*SYNTHETIC_ARGUMENTS)) from None
    print(f"wrote {train_list} and {val_list}")
    return 0


def prepare_command(args):
    """Decode the listed videos once into a frame store; prints what it holds and how to train from it."""
    from .prepare import prepare_store
    from .store import StoreSettings
    try:
        settings = StoreSettings(short_side=args.short_side, fps=args.fps, frames_per_video=args.frames_per_video,
                                 encoding=args.encoding, quality=args.quality, videos_per_shard=args.videos_per_shard)
    except ValueError as error:   # its message starts with the setting's name: name the flag
        raise renamed_error(error, flag_namer()) from None
    result = prepare_store(args.lists, args.data_root, args.out, settings, workers=args.num_workers,
                           progress=args.progress)
    print(f"prepared {result['out']}: {result['videos']} videos ({len(result['unreadable'])} unreadable), "
          f"{result['shards']} shards, {result['bytes'] / 2 ** 30:.2f} GiB of frames")
    print(f"train and eval from it with the same list files: --data-root {result['out']}")
    return 0


def add_video_commands(sub, common):
    """The video commands (train, eval, make-synthetic, demo, prepare) as subparsers of `sub`, with `common`'s
    options."""
    from .train import EVAL_FIELDS, add_config_arguments
    t = sub.add_parser("train", parents=[common], formatter_class=HelpFormatter,
                       help="fine-tune adapters on a video list (torchrun for multi-GPU/multi-node)",
                       description="Fine-tune ST-Adapters on a frozen timm ViT. Every flag is also a key of the "
                       "--config file. Rerunning with the same --output-dir resumes.")
    add_config_arguments(t)
    t.set_defaults(func=train_command, needs=lambda args: ("video", TRAIN_MODULES))
    e = sub.add_parser("eval", parents=[common], formatter_class=HelpFormatter,
                       help="evaluate the adapters/ folder of a train run on a video list",
                       description="Evaluate a train run's adapters/ folder: the model as trained (from its "
                       "train_config.json), on its val_list or the one given.")
    e.add_argument("adapters", help="a train run's output_dir/adapters")
    add_config_arguments(e, only=EVAL_FIELDS, default_text="the run's, from its train_config.json")
    e.set_defaults(func=eval_command, needs=lambda args: ("video", TRAIN_MODULES))
    m = sub.add_parser("make-synthetic", parents=[common], formatter_class=HelpFormatter,
                       help="write the synthetic temporal-order task (mp4s + list files)")
    m.add_argument("out", help="output directory")
    m.add_argument("--num-train", type=positive_int, default=400, help="training videos (pairs: even)")
    m.add_argument("--num-val", type=positive_int, default=200, help="validation videos (pairs: even)")
    m.add_argument("--num-frames", type=positive_int, default=16, help="frames per video")
    m.add_argument("--frames", dest="num_frames", type=positive_int, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)
    m.add_argument("--size", type=positive_int, default=32, help="side of the square frames (even)")
    m.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the videos' randomness")
    m.set_defaults(func=make_synthetic_command, needs=lambda args: ("video", SYNTHETIC_MODULES))
    d = sub.add_parser("demo", parents=[common], formatter_class=HelpFormatter,
                       help="linear probe vs ST-Adapters on the synthetic task (see st_adapter_fast/video/demo.py)")
    from . import demo
    demo.add_arguments(d)
    d.set_defaults(func=demo.run, needs=lambda args: ("video", DEMO_MODULES))
    p = sub.add_parser("prepare", parents=[common], formatter_class=HelpFormatter,
                       help="decode the videos of list files once into a frame store that train and eval read "
                            "(--data-root STORE)",
                       description="Decode the videos of list files once into a frame store: frames at a chosen "
                       "shorter side and frame rate or count, as JPEG or raw uint8, in shards with an index, written "
                       "in parallel. A rerun finishes an interrupted one. Then train and eval read it with the same "
                       "list files and --data-root STORE.")
    p.add_argument("lists", nargs="+", help="list files of videos (e.g. train.txt val.txt)")
    p.add_argument("--data-root", default=".", help="the directory the lists' paths are relative to")
    p.add_argument("--out", required=True, help="the store's directory (new or empty, or a store to finish)")
    p.add_argument("--short-side", type=int, help="resize frames to this shorter side, e.g. 256 for 224 crops "
                                                  "(default: as decoded)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--fps", type=float, help="keep frames at this rate (default: every frame); --sampling-rate "
                                                "then counts the kept frames")
    rate.add_argument("--frames-per-video", type=int, help="keep this many frames evenly covering each video")
    p.add_argument("--encoding", choices=("jpeg", "raw"), default="jpeg",
                   help="JPEG (small; decoded in batches by torchvision) or raw uint8 (fastest to read, large)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality, 1-100")
    p.add_argument("--videos-per-shard", type=int, default=32, help="videos per shard (the unit of resuming)")
    p.add_argument("--num-workers", type=nonnegative_int, default=None,
                   help="processes decoding videos (default: the cores available; 0: this process)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar")
    p.set_defaults(func=prepare_command, needs=lambda args: ("video", PREPARE_MODULES))
