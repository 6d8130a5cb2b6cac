"""The temporal-reasoning demo: a frozen image ViT with (a) a linear probe on temporally mean-pooled
frame features and (b) ST-Adapters, trained the same way on the synthetic clip-vs-reversal task.

The backbone is a small timm ViT with random, frozen weights: (a) is at chance for any backbone because
both videos of a pair have the same frames, and (b) needs only what the adapters learn on top of a
random patch embedding (an information-preserving random projection), so pretraining the backbone would
cost demo time without changing the comparison.

    st-adapter-fast demo --out runs/demo

writes data/ (mp4s and lists), probe/ and adapters/ (train runs), demo.json (accuracies, trainable
parameters, wall times, loader clips/s) and curves.png.
"""
import argparse
import dataclasses
import json
import os
import time

from ..console import flag_namer, nonnegative_int, positive_int, renamed_error
from ..files import check_writable_folder, write_files
from .train import default_num_workers

MODEL = dict(model="vit_tiny_patch16_224", model_kwargs=dict(patch_size=8, depth=4), input_size=32)


def add_arguments(parser):
    parser.add_argument("--out", default="runs/demo", help="output directory")
    parser.add_argument("--num-train", type=positive_int, default=400, help="training videos (pairs: even)")
    parser.add_argument("--num-val", type=positive_int, default=200, help="validation videos (pairs: even)")
    parser.add_argument("--steps", type=positive_int, default=300, help="optimizer steps of each model")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="clips per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--num-workers", type=nonnegative_int, default=default_num_workers(),
                        help="DataLoader workers per run")
    parser.add_argument("--workers", dest="num_workers", type=nonnegative_int, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)   # the old name
    parser.add_argument("--depth", type=positive_int, default=4, help="ViT blocks")
    parser.add_argument("--results", help="also copy demo.json and curves.png to this file stem")


def demo_config(args, data_dir, name, linear_probe):
    """The TrainConfig of one of the two demo models."""
    from .train import TrainConfig
    return TrainConfig(
        train_list=os.path.join(data_dir, "train.txt"), val_list=os.path.join(data_dir, "val.txt"),
        data_root=data_dir, num_classes=2, num_frames=8,
        **dict(MODEL, model_kwargs=dict(MODEL["model_kwargs"], depth=args.depth)),
        adapter_channels=64, linear_probe=linear_probe, dropout=0.0, batch_size=args.batch_size,
        steps=args.steps, warmup_steps=max(args.steps // 10, 1), lr=args.lr, weight_decay=0.05,
        num_workers=args.num_workers, output_dir=os.path.join(args.out, name), resume=False,
        log_every=max(args.steps // 30, 1), eval_every=max(args.steps // 6, 1), progress=True)


def loader_clips_per_second(config, batches=60):
    """Clips/s of the training DataLoader alone (decode + sample + augment), after its first batch."""
    from .train import iterate_batches, make_train_loader
    loader, sampler = make_train_loader(config)
    stream = iterate_batches(loader, sampler, dict(epoch=0, batch=0))
    next(stream)
    start, clips = time.perf_counter(), 0
    for _ in range(batches):
        clips += len(next(stream)["label"])
    return clips / (time.perf_counter() - start)


def run(args):
    """Generate the data, measure the loader, train and evaluate both models, write demo.json and
    curves.png under args.out. Returns 0."""
    from .synthetic import check_synthetic_arguments, make_synthetic
    from .train import train
    started = time.perf_counter()
    data_dir = os.path.join(args.out, "data")
    for linear_probe in (True, False):   # every value checked (TrainConfig's checks) before any work
        demo_config(args, data_dir, "check", linear_probe)
    try:
        check_synthetic_arguments(args.num_train, args.num_val, num_frames=16, size=32, seed=0)
    except ValueError as error:
        raise renamed_error(error, flag_namer("num_train", "num_val")) from None
    if args.results:   # checked now: it is written after minutes of training
        check_writable_folder(os.path.dirname(args.results) or ".", "--results' folder")
    check_writable_folder(args.out, "--out")
    make_synthetic(data_dir, args.num_train, args.num_val, num_frames=16, size=32, seed=0, progress=True)
    generated = time.perf_counter()
    results = dict(task="synthetic clip vs time reversal (disk moving down / up), 32x32, 16 frames, "
                        "8 sampled per clip", backbone=f"{MODEL['model']} {dict(MODEL['model_kwargs'], depth=args.depth)}"
                        f" at {MODEL['input_size']}px, random init, frozen",
                   num_train=args.num_train, num_val=args.num_val, steps=args.steps, batch_size=args.batch_size,
                   generate_s=generated - started, models={})
    probe_config = demo_config(args, data_dir, "probe", linear_probe=True)
    results["loader_clips_per_s"] = {f"{w}_workers": loader_clips_per_second(dataclasses.replace(probe_config, num_workers=w))
                                     for w in sorted({0, args.num_workers})}
    histories = {}
    for name, config in (("linear_probe", probe_config),
                         ("st_adapters", demo_config(args, data_dir, "adapters", linear_probe=False))):
        result = train(config)   # resume=False: a fresh run each time, the previous one deleted
        histories[name] = result["history"]
        report = result["parameters"]
        results["models"][name] = dict(top1=result["metrics"]["top1"], skipped=result["metrics"]["skipped"],
                                       trainable_params=report.trainable, total_params=report.total,
                                       train_wall_s=result["wall_time_s"])
        print(f"{name}: top-1 {result['metrics']['top1']:.1f}%, {report.trainable:,} trainable parameters, "
              f"{result['wall_time_s']:.0f} s")
    results["total_wall_s"] = time.perf_counter() - started
    _write(results, histories, args)
    print(json.dumps(results, indent=1))
    return 0


def _write(results, histories, args):
    import shutil
    json_path, plot_path = os.path.join(args.out, "demo.json"), os.path.join(args.out, "curves.png")
    write_files({json_path: json.dumps(dict(results, histories=histories), indent=1)})
    plot_curves(histories, plot_path)
    if args.results:
        shutil.copy(json_path, args.results + ".json")
        shutil.copy(plot_path, args.results + ".png")


def plot_curves(histories, path):
    """Training loss and validation top-1 against step, one line per model, to a small PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    for name, history in histories.items():
        train_rows = [r for r in history if "loss" in r]
        eval_rows = [r for r in history if "top1" in r]
        loss_axis.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label=name)
        acc_axis.plot([r["step"] for r in eval_rows], [r["top1"] for r in eval_rows], marker="o", label=name)
    loss_axis.set(xlabel="step", ylabel="training loss", title="training loss")
    acc_axis.set(xlabel="step", ylabel="val top-1 (%)", title="validation accuracy", ylim=(0, 102))
    acc_axis.axhline(50, color="grey", lw=0.5, ls="--")
    acc_axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
