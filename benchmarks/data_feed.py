"""Does loading keep the GPU fed? The authors' K400 training step (CLIP ViT-B/16 QuickGELU, 12 adapters of 384
channels before the MLPs, no activation, fp16 autocast, 64 clips of 8 frames at 224, torch.compile) fed by
the training DataLoader with the authors' K400 recipe, from a frame store (or from the videos), on all the
machine's cores: the fraction of the time the loop waits for data (goal: <= 5% from a store).

    python benchmarks/data_feed.py [--source store|videos] [--num-workers N] [--out JSON]

Writes `--count` K400-like videos (bench/data.py: H.264 340x256, 10 s at 30 fps) in parallel, a list that
repeats them (`--repeat` times, random labels of 400 classes), and with --source store a JPEG frame store
(short side 256, every frame). Then it builds the model as `train` does (random weights: the speed is the
same), runs `--warmup` steps (compilation, the workers' start), and times `--steps` steps with the loop's
own measurement: the time spent waiting for the next batch (video.train.loop.DataWait) against the steps'
wall time (each step ends in a synchronising .item()). Also times the same step on one batch held on the
GPU (no loading at all), the step time loading must keep up with.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def make_videos(directory, count, repeat, workers):
    """A list file of `count` K400-like videos, each listed `repeat` times, written in parallel."""
    import multiprocessing

    from st_adapter_fast.bench.data import write_realistic_video
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, f"{i}.mp4") for i in range(count)]
    todo = [(path, "k400", i) for i, path in enumerate(paths) if not os.path.exists(path)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.starmap(write_realistic_video, todo)
    labels = np.random.default_rng(0).integers(0, 400, count * repeat)
    list_path = os.path.join(directory, "train.txt")
    with open(list_path, "w") as f:
        f.writelines(f"{os.path.basename(paths[i % count])} {label}\n" for i, label in enumerate(labels))
    return list_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", default="/tmp/st-adapter-fast-feed", help="where videos and the store go")
    parser.add_argument("--count", type=int, default=32, help="distinct videos")
    parser.add_argument("--repeat", type=int, default=20, help="times each video is listed")
    parser.add_argument("--source", choices=("store", "videos"), default="store")
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--num-workers", type=int, default=max(cores - 1, 1), help="DataLoader workers")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps (compilation, workers' start)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps")
    parser.add_argument("--no-compile", action="store_true", help="eager model (default: torch.compile)")
    parser.add_argument("--model", default="vit_base_patch16_clip_quickgelu_224", help="timm model (a smoke run: "
                        "vit_tiny_patch16_224)")
    parser.add_argument("--device", default="cuda", help="cuda (or cpu for a smoke run of this script)")
    parser.add_argument("--out", help="JSON file of the result")
    args = parser.parse_args(argv)

    from st_adapter_fast.bench.data import machine
    from st_adapter_fast.video.data import SkipCounter
    from st_adapter_fast.video.prepare import prepare_store
    from st_adapter_fast.video.store import StoreSettings
    from st_adapter_fast.video.train import TrainConfig, build_model, build_optimizer, iterate_batches, make_train_loader
    from st_adapter_fast.video.train.loop import DataWait, train_step
    started = time.perf_counter()
    list_path = make_videos(args.videos, args.count, args.repeat, cores)
    root = args.videos
    if args.source == "store":
        root = os.path.join(args.videos, "store")
        prepare_store([list_path], args.videos, root, StoreSettings(short_side=256), workers=cores, progress=False)
    print(f"data ready in {time.perf_counter() - started:.0f} s", flush=True)
    device = torch.device(args.device)
    config = TrainConfig(recipe="authors-k400", train_list=list_path, data_root=root, num_classes=400,
                         model=args.model, activation="none", adapter_channels=384,
                         placement=["mlp"], batch_size=args.batch_size, num_workers=args.num_workers, dropout=0.5,
                         steps=10 ** 6, warmup_steps=10, lr=1e-3, progress=False)
    model = build_model(config).to(device)
    call = model if args.no_compile else torch.compile(model)
    optimizer, scheduler = build_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    loader, sampler = make_train_loader(config, device=device)
    batches = DataWait(iterate_batches(loader, sampler, dict(epoch=0, batch=0)))
    skips = SkipCounter()

    def run(steps, stream):
        waited, start, times = stream.seconds, time.perf_counter(), []
        for _ in range(steps):
            t = time.perf_counter()
            train_step(call, stream, optimizer, scheduler, scaler, config, device, skips)
            times.append(time.perf_counter() - t)
        return stream.seconds - waited, time.perf_counter() - start, times

    run(args.warmup, batches)
    wait, wall, times = run(args.steps, batches)
    held = next(batches)
    held = dict(held, clip=held["clip"].to(device))
    fed = DataWait(iter(lambda: held, None))
    _, _, held_times = run(max(args.steps // 2, 5), fed)
    result = dict(machine(), gpu=torch.cuda.get_device_name() if device.type == "cuda" else None, source=args.source, num_workers=args.num_workers,
                  cores=cores, batch_size=args.batch_size, compiled=not args.no_compile, amp=config.amp,
                  steps=args.steps, data_wait_s=wait, wall_s=wall, data_wait_fraction=wait / wall,
                  step_median_ms=1e3 * float(np.median(times)), clips_per_s=args.steps * args.batch_size / wall,
                  step_without_loading_median_ms=1e3 * float(np.median(held_times)),
                  skipped_videos=len(skips), goal="data_wait_fraction <= 0.05 from a store")
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
