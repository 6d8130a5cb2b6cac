"""Data loading speed: clips/s per core and per DataLoader worker of a run's VideoDataset on a list of videos
or a frame store (`st-adapter-fast bench --data LIST`), and realistic test videos made with PyAV's encoders.

Per core: the median CPU time (time.process_time) of one clip in this process with one torch thread; CPU
time, not wall time, because a machine shared with other work disturbs it far less. Per worker: the wall
clips/s of the training DataLoader with N worker processes, divided by N.

Realistic videos (`write_realistic_video`): a camera panning over a smooth texture with fine detail, moving
blobs and sensor noise, encoded as Kinetics-400 and Something-Something v2 are distributed:
"k400": H.264 (libx264, its default CRF, preset and GOP), 340x256, 10 s at 30 fps, mp4;
"ssv2": VP9 (libvpx-vp9, its defaults), 427x240, 4 s at 12 fps, WebM.
"""
import time

import numpy as np
import torch

from ..console import nonnegative_int, positive_int

KINDS = {"k400": dict(codec="libx264", width=340, height=256, fps=30, seconds=10, suffix=".mp4"),
         "ssv2": dict(codec="libvpx-vp9", width=427, height=240, fps=12, seconds=4, suffix=".webm")}


def write_realistic_video(path, kind="k400", seed=0, **changes):
    """Write a realistic test video of `kind` ("k400" or "ssv2", see the module docstring; `changes`
    override its width, height, fps, seconds or codec) to `path`; returns `path`."""
    from ..video.synthetic import write_video
    spec = dict(KINDS[kind], **changes)
    frames = _scene(np.random.default_rng(seed), round(spec["seconds"] * spec["fps"]), spec["height"], spec["width"])
    write_video(path, frames, spec["fps"], spec["codec"])
    return path


def _scene(rng, count, height, width):
    """uint8 frames: a pan over a smooth texture twice the frame's size, four moving blobs, noise."""
    import torch.nn.functional as F
    coarse = torch.from_numpy(rng.random((3, height // 4 + 1, width // 4 + 1), dtype=np.float32))[None]
    texture = F.interpolate(coarse, size=(2 * height, 2 * width), mode="bicubic", align_corners=False)[0]
    texture = texture.permute(1, 2, 0).numpy() * 0.85 + rng.random((2 * height, 2 * width, 3)) * 0.15
    texture = np.clip(texture * 255, 0, 255).astype(np.int16)
    ys, xs = np.mgrid[0:height, 0:width]
    blobs = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(-2, 2), rng.uniform(-2, 2),
              rng.uniform(0.04, 0.12) * height, rng.integers(0, 255, 3)) for _ in range(4)]
    for t in range(count):
        top = int(height * (0.5 + 0.5 * np.sin(t / 40)))
        left = int(width * (0.5 + 0.5 * np.cos(t / 55)))
        frame = texture[top:top + height, left:left + width].copy()
        for x, y, vx, vy, radius, color in blobs:
            frame[(xs - (x + vx * t) % width) ** 2 + (ys - (y + vy * t) % height) ** 2 < radius ** 2] = color
        frame += rng.normal(0, 3, frame.shape).astype(np.int16)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def cpu_seconds_per_item(get_item, keys):
    """CPU seconds (this process) of `get_item(key)` for each key, with one torch thread."""
    from ..measure import one_torch_thread
    seconds = []
    with one_torch_thread():
        for key in keys:
            start = time.process_time()
            get_item(key)
            seconds.append(time.process_time() - start)
    return seconds


def summarize(seconds):
    """Median and quartiles of per-clip CPU seconds (in ms) and the clips/s per core of the median."""
    q1, median, q3 = np.percentile(seconds, [25, 50, 75])
    return dict(clips=len(seconds), median_ms=1e3 * median, quartiles_ms=[1e3 * q1, 1e3 * q3],
                clips_per_s_per_core=1 / median)


def dataset_keys(dataset, clips, seed=0):
    """`clips` item keys of `dataset` cycling over its videos: (index, epoch) in training, index in eval."""
    order = np.random.default_rng(seed).permutation(len(dataset))
    keys = [int(order[i % len(dataset)]) for i in range(clips)]
    return [(key, i // len(dataset)) for i, key in enumerate(keys)] if dataset.train else keys


def machine():
    """Where and with what a data measurement ran: CPU, the machine's load (1, 5, 15 min; others' work
    there inflates CPU times too), versions (torch, torchvision, PyAV and its FFmpeg), command and date."""
    import os
    import platform
    import sys

    import av
    import torchvision

    from .benchmark import cpu_name
    return dict(cpu=cpu_name(), load_average=os.getloadavg(), python=platform.python_version(),
                torch=torch.__version__, torchvision=torchvision.__version__, av=av.__version__,
                ffmpeg=av.ffmpeg_version_info, command=" ".join(sys.argv), date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))


def add_arguments(parser):
    """The data mode's flags of `st-adapter-fast bench`."""
    group = parser.add_argument_group("data loading (--data LIST): clips/s per core and per worker of a run's "
                                      "dataset")
    group.add_argument("--data", metavar="LIST", help="a list file of videos: time its clips instead of the adapter")
    group.add_argument("--data-root", default=".", help="its videos' directory, or a frame store (prepare)")
    group.add_argument("--recipe", help="a train recipe whose sampling and augmentation to time (authors-k400, "
                                        "authors-ssv2)")
    group.add_argument("--num-frames", type=int, help="frames per clip (default: the recipe's, else 8)")
    group.add_argument("--sampling-rate", type=int, help="every r-th frame (default: the recipe's, else frames "
                                                         "evenly covering the video)")
    group.add_argument("--input-size", type=int, default=224, help="side of the square frames")
    group.add_argument("--eval", action="store_true", help="time eval clips (views x crops), not training clips")
    group.add_argument("--clips", type=positive_int, default=48, help="clips to time per core")
    group.add_argument("--num-workers", type=nonnegative_int, nargs="*", default=[],
                       help="also time the training DataLoader with these numbers of worker processes")
    parser.set_defaults(data_options=tuple(action.dest for action in group._group_actions))


def check_mode_options(parser, args):
    """A usage error (parser.error: exit 2) for an option of the other mode of `bench` than the one asked for:
    the microbenchmark's options with --data, the data mode's without it. Either would be ignored."""
    shared = {"help", "debug", "out", "progress", "data"}
    wrong = [action.option_strings[0] for action in parser._actions
             if action.option_strings and action.dest not in shared
             and (action.dest in args.data_options) != bool(args.data)
             and getattr(args, action.dest, action.default) != action.default]
    if wrong:
        parser.error(f"{', '.join(wrong)}: {'not' if args.data else 'only'} an option of the data mode (--data LIST)")


def run(args):
    """The data mode of `st-adapter-fast bench`: prints clips/s per core (and per worker), writes --out."""
    import dataclasses
    import json

    from ..files import write_files
    from ..video.demo import loader_clips_per_second
    from ..video.store import is_store
    from ..video.train import TrainConfig
    from ..video.train.loader import make_dataset
    from .benchmark import check_results_file
    given = {k: v for k, v in dict(recipe=args.recipe, num_frames=args.num_frames,
                                   sampling_rate=args.sampling_rate).items() if v is not None}
    config = TrainConfig(train_list=args.data, val_list=args.data, data_root=args.data_root,
                         input_size=args.input_size, batch_size=8, num_workers=0, **given)
    if args.out:
        check_results_file(args.out)
    dataset = make_dataset(config, train=not args.eval)
    source = "frame store" if is_store(args.data_root) else "video files"
    seconds = _readable_seconds(dataset, dataset_keys(dataset, args.clips), args.data)
    result = dict(list=args.data, data_root=args.data_root, source=source, mode="eval" if args.eval else "train",
                  recipe=args.recipe, num_frames=config.num_frames, sampling_rate=config.sampling_rate,
                  input_size=config.input_size, per_core=summarize(seconds), workers={},
                  **machine())
    print(f"{source}, {result['mode']} clips of {config.num_frames} frames at {config.input_size}: "
          f"{result['per_core']['clips_per_s_per_core']:.1f} clips/s per core (median CPU time per clip "
          f"{result['per_core']['median_ms']:.1f} ms over {len(seconds)} clips)")
    batch = min(config.batch_size, len(dataset))
    for workers in args.num_workers:
        rate = loader_clips_per_second(dataclasses.replace(config, num_workers=workers, batch_size=batch),
                                       batches=max(args.clips // batch, 2))
        result["workers"][str(workers)] = dict(clips_per_s=rate, clips_per_s_per_worker=rate / max(workers, 1))
        print(f"DataLoader, {workers} workers: {rate:.1f} clips/s, {rate / max(workers, 1):.1f} per worker (wall)")
    if args.out:
        write_files({args.out: json.dumps(result, indent=1)})
    return result


def _readable_seconds(dataset, keys, list_path):
    """CPU seconds of each clip of `keys` that could be read; a warning naming the unreadable ones, and
    ValueError if none could be (their failures are no measure of loading)."""
    import warnings
    failed = {}

    def read(key):
        item = dataset[key]
        if item["clip"] is None:
            failed[key] = f"{item['path']}: {item['error']}"

    seconds = [s for key, s in zip(keys, cpu_seconds_per_item(read, keys)) if key not in failed]
    if failed:
        message = f"{len(failed)} of {len(set(keys))} videos of --data {list_path} could not be read (first: " \
                  f"{next(iter(failed.values()))})"
        if not seconds:
            raise ValueError(message + ": nothing to time")
        warnings.warn(message + "; their clips are not timed", stacklevel=2)
    return seconds
