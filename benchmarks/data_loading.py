"""Data loading on one core: today's path (the sequential decode and float32 transforms of the previous
VideoDataset) against the exact fast decoder with uint8 transforms, and reading a prepared frame store.

    python benchmarks/data_loading.py [--videos /tmp/st-adapter-fast-videos] [--clips 24] [--out JSON]

Writes realistic videos with PyAV's encoders (bench/data.py: Kinetics-400-like H.264 340x256 and 640x360,
10 s at 30 fps, x264's default CRF, preset and GOP; SSv2-like VP9 WebM 427x240, 4 s at 12 fps) into
--videos (kept for later runs), then for each kind and each mode (train: 8 frames evenly covering the
video, random square crop; train with the authors' K400 sampling, every 16th frame; eval: segment middles,
resize + centre crop), 8 frames at 224:
- old: the previous VideoDataset's item (decode_sequential, then float32 crop, resize and normalisation),
- new: VideoDataset(normalize=False)'s item (the exact decoder, uint8 crop and resize; the training loop
  normalises on the device),
one after the other on the same clip, CPU time (time.process_time, one torch thread) per clip: a machine
shared with other work disturbs CPU time far less than wall time. Every clip's decoded uint8 frames are
checked pixel for pixel: decode_video against decode_sequential for the same chosen frames. Then the
K400-like 340x256 videos go into a frame store (JPEG q90 and raw, every frame at short side 256) and
VideoDataset reads clips from it (train with the authors' K400 recipe, and eval).
Result: JSON with medians, quartiles, clips/s per core, the speedups (ratio of medians and median of
per-clip ratios), the frame check, the machine, versions, command and date.
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from st_adapter_fast.bench.data import cpu_seconds_per_item, dataset_keys, machine, summarize, write_realistic_video
from st_adapter_fast.video.data import VideoDataset, sample_frame_indices
from st_adapter_fast.video.decode import decode_sequential, decode_video
from st_adapter_fast.video.prepare import prepare_store
from st_adapter_fast.video.store import StoreSettings
from st_adapter_fast.video.transforms import CLIP_MEAN, CLIP_STD

KINDS = {"k400-340x256": dict(kind="k400"), "k400-640x360": dict(kind="k400", width=640, height=360),
         "ssv2-427x240": dict(kind="ssv2")}
MODES = {"train": dict(train=True, sampling_rate=None), "train, every 16th frame": dict(train=True, sampling_rate=16),
         "eval": dict(train=False, sampling_rate=None)}


def legacy_item(dataset, key):
    """The previous VideoDataset.__getitem__ (before the exact decoder and uint8 transforms), as it was."""
    index, epoch = key if isinstance(key, tuple) else (key, 0)
    record = dataset.records[index]
    rng = np.random.default_rng([dataset.seed, epoch, index]) if dataset.train else None
    choose = lambda n: sample_frame_indices(n, dataset.num_frames, dataset.sampling_rate, rng=rng)  # noqa: E731
    frames = decode_sequential(record.path, choose)
    if dataset.train:
        return legacy_transform(frames, dataset.size, rng=rng, flip=dataset.flip)
    return legacy_transform(frames, dataset.size)[None]


def legacy_transform(frames, size, *, rng=None, flip=True, scale=(0.5, 1.0), crop_position=0.5):
    """The previous float32 transform_clip."""
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    height, width = clip.shape[-2:]
    short = min(height, width)

    def resize(x, h, w):
        return x if tuple(x.shape[-2:]) == (h, w) else F.interpolate(x, size=(h, w), mode="bilinear",
                                                                     align_corners=False, antialias=True)
    if rng is not None:
        side = max(1, int(round(short * np.sqrt(rng.uniform(*scale)))))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        clip = resize(clip[:, :, top:top + side, left:left + side], size, size)
        if flip and rng.random() < 0.5:
            clip = clip.flip(-1)
    else:
        new_h, new_w = (size, max(size, round(width * size / height))) if height <= width else \
            (max(size, round(height * size / width)), size)
        clip = resize(clip, new_h, new_w)
        top, left = round((new_h - size) * crop_position), round((new_w - size) * crop_position)
        clip = clip[:, :, top:top + size, left:left + size]
    clip = clip / 255.0
    clip = (clip - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return clip.transpose(0, 1).contiguous()


def make_videos(directory, count):
    """{kind: list file} of `count` realistic videos per kind under `directory` (written once)."""
    lists = {}
    for name, spec in KINDS.items():
        os.makedirs(os.path.join(directory, name), exist_ok=True)
        lines = []
        for i in range(count):
            relative = os.path.join(name, f"{i}{'.webm' if spec['kind'] == 'ssv2' else '.mp4'}")
            if not os.path.exists(os.path.join(directory, relative)):
                print(f"writing {relative}", flush=True)
                write_realistic_video(os.path.join(directory, relative), seed=i, **spec)
            lines.append(f"{relative} {i % 2}\n")
        lists[name] = os.path.join(directory, f"{name}.txt")
        with open(lists[name], "w") as f:
            f.writelines(lines)
    return lists


def frames_identical(dataset, keys):
    """(identical, compared): decode_video against decode_sequential, uint8, for each clip's chosen frames."""
    same = 0
    for key in keys:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        seed = [dataset.seed, epoch, index]
        choose = lambda n: sample_frame_indices(n, dataset.num_frames, dataset.sampling_rate,  # noqa: E731
                                                rng=np.random.default_rng(seed) if dataset.train else None)
        path = dataset.records[index].path
        same += np.array_equal(decode_video(path, choose), decode_sequential(path, choose))
    return same, len(keys)


def compare(list_path, root, mode, clips):
    """Old against new on the same clips, alternating, CPU seconds per clip."""
    dataset = VideoDataset(list_path, root, num_frames=8, size=224, normalize=False, **mode)
    keys = dataset_keys(dataset, clips)
    old, new = [], []
    for key in keys:   # alternating: both paths see the same moments of a shared machine
        old += cpu_seconds_per_item(lambda k: legacy_item(dataset, k), [key])
        new += cpu_seconds_per_item(dataset.__getitem__, [key])
    same, compared = frames_identical(dataset, keys)
    ratios = np.array(old) / np.array(new)
    return dict(old=summarize(old), new=summarize(new), speedup=float(np.median(old) / np.median(new)),
                speedup_median_of_ratios=float(np.median(ratios)), frames_identical=f"{same} of {compared} clips")


STORE_MODES = {"train, authors-k400": dict(train=True, sampling_rate=16, crop="short-side-jitter", interpolation="bicubic"),
               "eval": dict(train=False, sampling_rate=None)}


def store_rates(list_path, root, out_dir, clips):
    """Clips/s per core of VideoDataset reading a JPEG and a raw store of the videos (authors' K400 train
    recipe, and eval; all four timed clip by clip in turn, so that a shared machine's load falls on each
    alike), and what preparing them cost."""
    results, datasets = {}, {}
    for encoding in ("jpeg", "raw"):
        out = os.path.join(out_dir, f"store-{encoding}")
        shutil.rmtree(out, ignore_errors=True)   # timed from scratch
        start = time.perf_counter()
        prepared = prepare_store([list_path], root, out, StoreSettings(short_side=256, encoding=encoding),
                                 workers=0, progress=False)
        results[encoding] = dict(prepare_wall_s=time.perf_counter() - start, bytes=prepared["bytes"])
        for mode, options in STORE_MODES.items():
            datasets[encoding, mode] = VideoDataset(list_path, out, num_frames=8, size=224, normalize=False, **options)
    # the same clips from the videos, the previous way (today's train item), in the same turns: the ratio
    # to it does not depend on the machine's load
    videos = VideoDataset(list_path, root, num_frames=8, size=224, normalize=False, train=True)
    datasets["videos, previous VideoDataset", "train"] = videos
    seconds = {case: [] for case in datasets}
    for key in dataset_keys(videos, clips):
        for (source, mode), dataset in datasets.items():
            get = (lambda k: legacy_item(videos, k)) if source.startswith("videos") else dataset.__getitem__
            seconds[source, mode] += cpu_seconds_per_item(get, [key if dataset.train else key[0]])
    previous = np.median(seconds["videos, previous VideoDataset", "train"])
    for (source, mode), values in seconds.items():
        results.setdefault(source, {})[mode] = dict(summarize(values), vs_previous=float(previous / np.median(values)))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", default="/tmp/st-adapter-fast-videos", help="where the test videos are written")
    parser.add_argument("--count", type=int, default=3, help="videos per kind")
    parser.add_argument("--clips", type=int, default=24, help="clips timed per kind and mode")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/<cpu>.data_loading.json)")
    parser.add_argument("--parts", nargs="+", choices=("compare", "store"), default=["compare", "store"],
                        help="what to measure; the parts not measured are kept from an existing --out")
    args = parser.parse_args(argv)
    from st_adapter_fast.bench.benchmark import device_slug
    result = dict(machine(), note="CPU time per clip, one process, one torch thread; 8 frames at 224", kinds={})
    out = args.out or os.path.join("benchmarks", "results", device_slug(result["cpu"]) + ".data_loading.json")
    if os.path.exists(out) and set(args.parts) != {"compare", "store"}:
        with open(out) as f:
            result = dict(json.load(f), **{f"{part}_run": machine() for part in args.parts})
    lists = make_videos(args.videos, args.count)
    for name, list_path in lists.items() if "compare" in args.parts else ():
        result["kinds"][name] = {}
        for mode_name, mode in MODES.items():
            row = result["kinds"][name][mode_name] = compare(list_path, args.videos, mode, args.clips)
            print(f"{name:14} {mode_name:24} old {row['old']['clips_per_s_per_core']:6.1f} clips/s, new "
                  f"{row['new']['clips_per_s_per_core']:6.1f} clips/s per core: {row['speedup']:.2f}x "
                  f"(median of per-clip ratios {row['speedup_median_of_ratios']:.2f}x); frames identical: "
                  f"{row['frames_identical']}", flush=True)
    if "store" in args.parts:
        result["store"] = store_rates(lists["k400-340x256"], args.videos, args.videos, args.clips)
    for source, rows in result["store"].items():
        for mode, row in rows.items():
            if isinstance(row, dict):
                print(f"{source:30} {mode:20} {row['clips_per_s_per_core']:6.1f} clips/s per core (median "
                      f"{row['median_ms']:.1f} ms), {row['vs_previous']:.1f}x the previous VideoDataset", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
