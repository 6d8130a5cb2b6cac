"""`prepare`: decode the videos of list files once into a frame store (store.py has the format), in parallel
processes, shard by shard, with a progress bar; a rerun finishes an interrupted one."""
import dataclasses
import hashlib
import json
import os
import warnings
import zlib

import numpy as np
import torch

from ..measure import one_torch_thread
from .data import read_video_list, sample_frame_indices
from .decode import decode_video
from .store import (INDEX_FILE, SHARDS_DIR, STORE_FILE, STORE_FORMAT, StoreError, StoreSettings, is_store,
                    quiet_torchvision_image_io, read_json, shard_path, write_json)


def prepare_store(list_paths, root, out, settings=StoreSettings(), *, workers=None, progress=True):
    """Decode the videos of `list_paths` (list files whose paths are relative to `root`) once into the store
    `out`, in `workers` processes (0: in this one; None: one per core available), shard by shard. A rerun
    finishes an interrupted run (complete shards are kept); a store made from other videos or settings is
    refused (StoreError). Videos that cannot be decoded are stored as unreadable (reading them reports why,
    as decoding them would) and warned about. Returns a dict: out, videos, unreadable ({name: error}),
    shards, bytes (of the frames)."""
    from tqdm import tqdm
    if is_store(root):
        raise StoreError(f"{root} is a frame store: prepare reads the videos themselves; give their folder as root "
                         "(--data-root)")
    named = {record.name: record.path for path in list_paths for record in read_video_list(path, root)}
    names = sorted(named.items())
    header = dict(format=STORE_FORMAT, settings=dataclasses.asdict(settings), videos=len(names),
                  names_sha256=hashlib.sha256("\n".join(name for name, _ in names).encode()).hexdigest())
    _start_store(out, header)
    size = settings.videos_per_shard
    tasks = [(out, shard, names[shard * size:(shard + 1) * size], settings)
             for shard in range((len(names) + size - 1) // size)]
    todo = [task for task in tasks if not os.path.exists(shard_path(out, task[1], ".json"))]
    with tqdm(total=len(names), initial=len(names) - sum(len(task[2]) for task in todo), desc="prepare",
              unit="video", disable=not progress) as bar:
        for done in _map(_write_shard, todo, workers):
            bar.update(done)
    entries = {}
    for shard in range(len(tasks)):
        with open(shard_path(out, shard, ".json")) as f:
            entries.update({entry.pop("name"): dict(entry, shard=shard) for entry in json.load(f)})
    write_json(os.path.join(out, INDEX_FILE), entries)
    unreadable = {name: entry["error"] for name, entry in entries.items() if entry.get("error")}
    if unreadable:
        name, error = next(iter(unreadable.items()))
        if len(unreadable) == len(entries):
            raise StoreError(f"none of the {len(entries)} videos of {', '.join(list_paths)} could be decoded (first: "
                             f"{name}: {error}): the store {out} holds no frames")
        warnings.warn(f"{len(unreadable)} of {len(entries)} videos could not be decoded and are stored as "
                      f"unreadable (first: {name}: {error})", stacklevel=2)
    stored = sum(os.path.getsize(shard_path(out, shard, ".bin")) for shard in range(len(tasks)))
    return dict(out=out, videos=len(entries), unreadable=unreadable, shards=len(tasks), bytes=stored)


def frame_indices(settings, count, source_fps):
    """Which of a video's `count` frames (at `source_fps` frames per second) a store with `settings` keeps."""
    if settings.frames_per_video is not None:
        return sample_frame_indices(count, settings.frames_per_video)
    if settings.fps is None or not source_fps or settings.fps >= source_fps:
        return np.arange(count)
    step = source_fps / settings.fps
    return np.floor(np.arange(0, count / step) * step).astype(np.int64)


def _start_store(out, header):
    """Create the store `out` with `header`, or check that the one there was started with the same."""
    path = os.path.join(out, STORE_FILE)
    if os.path.lexists(out) and not os.path.isdir(out):
        raise StoreError(f"{out} is a file, not a folder: give a new or empty directory for the store")
    if os.path.lexists(path):
        previous = read_json(path)
        if previous != header:
            settings, before = header["settings"], previous.get("settings", {})
            differ = sorted(k for k in set(settings) | set(before) if settings.get(k) != before.get(k))
            what = f"other settings ({', '.join(differ)})" if differ else "other videos"
            raise StoreError(f"{out} holds a store prepared with {what}: give another output directory, or "
                             "delete that one first")
        return
    if os.path.isdir(out) and os.listdir(out):
        raise StoreError(f"{out} exists and is not a store: give a new or empty directory")
    os.makedirs(os.path.join(out, SHARDS_DIR), exist_ok=True)
    write_json(path, header)


def _map(function, tasks, workers):
    """function(task) for each task, in `workers` processes (0: here), results as they come."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers == 0 or len(tasks) <= 1:
        yield from map(function, tasks)
        return
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)), initializer=torch.set_num_threads,
                                                   initargs=(1,)) as pool:
        yield from pool.imap_unordered(function, tasks)


def _write_shard(task):
    """Write one shard: its frames, its frame table, then (last: the shard is complete) its videos' entries.
    Returns its number of videos."""
    out, shard, names, settings = task
    rows, entries = [], []
    with open(shard_path(out, shard, ".bin.tmp"), "wb") as data:
        for name, path in names:
            entry = dict(name=name, first=len(rows))
            try:
                frames, source_count, source_fps = _decode_for_store(path, settings)
            except Exception as error:   # any decoder failure: stored as unreadable, reported on read
                entries.append(dict(entry, frames=0, error=f"{type(error).__name__}: {error}"))
                continue
            for blob in _encode(frames, settings):
                rows.append((data.tell(), len(blob), zlib.crc32(blob)))
                data.write(blob)
            entries.append(dict(entry, frames=len(frames), height=frames.shape[1], width=frames.shape[2],
                                source_frames=source_count, source_fps=source_fps))
    np.save(shard_path(out, shard, ".npy"), np.array(rows, dtype=np.int64).reshape(-1, 3))
    os.replace(shard_path(out, shard, ".bin.tmp"), shard_path(out, shard, ".bin"))
    write_json(shard_path(out, shard, ".json"), entries)
    return len(names)


def _decode_for_store(path, settings):
    """(uint8 frames (N, H, W, 3), the video's frame count, its frame rate) of what the store keeps."""
    import av
    with av.open(path) as container:
        rate = container.streams.video[0].average_rate if container.streams.video else None
    source_fps = float(rate) if rate else None
    counted = []

    def choose(count):
        counted.append(count)
        return frame_indices(settings, count, source_fps)

    frames = decode_video(path, choose, short_side=settings.short_side)
    return frames, counted[-1], source_fps


def _encode(frames, settings):
    """Each frame's bytes: JPEG at the settings' quality (one batched call), or raw uint8 (H, W, 3)."""
    if settings.encoding == "raw":
        return [frame.tobytes() for frame in frames]
    with quiet_torchvision_image_io(), one_torch_thread():   # threads: 10x the CPU time of encoding a list
        from torchvision.io import encode_jpeg
        images = [torch.from_numpy(frame).permute(2, 0, 1).contiguous() for frame in frames]
        return [blob.numpy().tobytes() for blob in encode_jpeg(images, quality=settings.quality)]
