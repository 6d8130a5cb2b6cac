"""A frame store: the frames of a list's videos decoded once (prepare.py, the `prepare` command) and read
back without decoding a video (`FrameStore`, what `VideoDataset` reads when its root is a store).

Layout of a store directory:

    store.json             format, settings (short side, frame rate or count, encoding, quality, videos per
                           shard) and a digest of the videos' names; a rerun must match them
    shards/NNNNN.bin       the encoded frames of a shard's videos, one after another
    shards/NNNNN.npy       per frame of the shard: byte offset, length and CRC-32 (checked on every read)
    shards/NNNNN.json      per video of the shard: name, first row in the .npy, frame count, height, width,
                           source frame count and rate, or the error that made it unreadable; written last,
                           so a shard with its .json is complete: a rerun of `prepare` skips it
    index.json             every shard's videos, written when the last shard is: a store without it is
                           incomplete and is refused

A video is stored under its path as the list file gives it (relative to the list's root), so the same list
files name the videos of the store. Frames are stored at a chosen shorter side, and all of them, those at a
chosen frame rate, or a chosen number evenly covering the video; as JPEG (torchvision's encoder and
decoder; one batched decode per clip) or raw uint8.
"""
import contextlib
import dataclasses
import functools
import json
import os
import warnings
import zlib

import numpy as np
import torch

STORE_FILE, INDEX_FILE, SHARDS_DIR = "store.json", "index.json", "shards"
STORE_FORMAT = "st-adapter-fast frame store 1"
ENCODINGS = ("jpeg", "raw")


def is_store(root):
    """Whether directory `root` is a frame store (it holds store.json)."""
    return os.path.isfile(os.path.join(root, STORE_FILE))


class StoreError(ValueError):
    """A store that cannot be read as asked: incomplete, damaged, or made with other settings."""


@dataclasses.dataclass(frozen=True)
class StoreSettings:
    """What a store holds. short_side: frames resized (area averaging) so that their shorter side is this,
    or None (as decoded). fps: frames at this rate (every frame when the video's rate is not higher), or
    frames_per_video: that many frames, one from the middle of each of as many equal segments; neither:
    every frame. encoding: "jpeg" (at `quality`) or "raw" (uint8, large)."""

    short_side: int = None
    fps: float = None
    frames_per_video: int = None
    encoding: str = "jpeg"
    quality: int = 90
    videos_per_shard: int = 32

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        if self.fps is not None and self.frames_per_video is not None:
            raise ValueError("give fps or frames_per_video, not both")
        for name in ("short_side", "frames_per_video", "videos_per_shard"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fps is not None and not 0 < self.fps < float("inf"):
            raise ValueError(f"fps must be a finite number > 0, got {self.fps}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in [1, 100], got {self.quality}")


class FrameStore:
    """The frames of a prepared store (see the module's docstring), read and checked against their CRC-32.

    `read(name, choose_indices)` returns uint8 (N, 3, H, W) frames: those at `choose_indices(frame_count)`
    of the stored ones. Safe to use from DataLoader workers (files are opened in the process that reads)."""

    def __init__(self, root):
        header = read_json(os.path.join(root, STORE_FILE))
        if header.get("format") != STORE_FORMAT:
            raise StoreError(f"{root}: unknown store format {header.get('format')!r} (expected {STORE_FORMAT!r})")
        index = os.path.join(root, INDEX_FILE)
        if not os.path.isfile(index):
            raise StoreError(f"{root}: the store is incomplete (no {INDEX_FILE}): rerun the prepare command that "
                             "made it to finish it")
        self.videos = read_json(index)
        self.root, self.settings = root, StoreSettings(**header["settings"])
        self._files = {}

    def __getstate__(self):   # open files stay in the process that opened them
        return dict(self.__dict__, _files={})

    def __contains__(self, name):
        return os.path.normpath(name) in self.videos

    def entry(self, name):
        """The stored record of video `name` (frames, height, width, source_frames, source_fps, or error)."""
        return self.videos[os.path.normpath(name)]

    def read(self, name, choose_indices=None):
        entry = self.entry(name)
        if entry.get("error"):
            raise StoreError(f"{name} was unreadable when the store was prepared ({entry['error']})")
        from .decode import chosen_indices
        wanted = chosen_indices(choose_indices, entry["frames"])
        unique, where = np.unique(wanted, return_inverse=True)
        frames = self._frames(entry, unique, name)
        if len(unique) == len(wanted) and np.array_equal(unique, wanted):
            return frames
        return frames[torch.from_numpy(where.reshape(-1))]

    def _frames(self, entry, rows, name):
        handle, table = self._shard(entry["shard"])
        blobs = []
        for offset, length, crc in table[entry["first"] + rows]:
            blob = bytearray(int(length))
            if os.preadv(handle, [blob], int(offset)) != length or zlib.crc32(blob) != crc:
                raise StoreError(f"{shard_path(self.root, entry['shard'], '.bin')}: a frame of {name} does not match "
                                 "its checksum: the store is damaged; delete that shard's files and rerun prepare")
            blobs.append(blob)
        if self.settings.encoding == "raw":
            shape = (entry["height"], entry["width"], 3)
            frames = np.stack([np.frombuffer(blob, np.uint8).reshape(shape) for blob in blobs])
            return torch.from_numpy(frames).permute(0, 3, 1, 2)
        return decode_jpegs(blobs)

    def _shard(self, shard):
        """(open file, frame table) of a shard, checked once per process to hold all its table's bytes."""
        if shard not in self._files:
            table = np.load(shard_path(self.root, shard, ".npy"), mmap_mode="r")
            path = shard_path(self.root, shard, ".bin")
            if len(table) and os.path.getsize(path) < table[-1, 0] + table[-1, 1]:
                raise StoreError(f"{path} is shorter than its frame table: the store is damaged; delete that "
                                 "shard's files and rerun prepare")
            self._files[shard] = os.open(path, os.O_RDONLY), table
        return self._files[shard]

    def __del__(self):
        for handle, _ in getattr(self, "_files", {}).values():
            os.close(handle)


def shard_path(root, shard, suffix):
    """The file of shard number `shard` with `suffix` (.bin, .npy, .json) in the store at `root`."""
    return os.path.join(root, SHARDS_DIR, f"{shard:05d}{suffix}")


def read_json(path):
    """The JSON object (a dict) of a store's file `path`; StoreError naming it if it is not one (damaged)."""
    from ..files import read_text
    try:
        value = json.loads(read_text(path, "store file"))
    except ValueError as error:
        raise StoreError(f"{path}: not valid JSON ({error}): the store is damaged; delete it and rerun prepare") \
            from None
    if not isinstance(value, dict):
        raise StoreError(f"{path}: a JSON {type(value).__name__}, not an object: the store is damaged; delete it "
                         "and rerun prepare")
    return value


def write_json(path, value):
    """Write `value` to `path` as JSON, atomically (a reader never sees half a file)."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


def decode_jpegs(blobs, device="cpu"):
    """uint8 (N, 3, H, W) RGB frames (channels-last in memory) of N JPEG images of one size (bytes-like),
    decoded in one batched call of torchvision's decoder (on `device`: "cuda" decodes on the GPU)."""
    with quiet_torchvision_image_io():
        from torchvision.io import ImageReadMode, decode_jpeg
        data = [torch.frombuffer(blob, dtype=torch.uint8) for blob in blobs]
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    # the decoder's (3, H, W) images are (H, W, 3) in memory: stacked as such they stay one plain copy
    return torch.stack([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)


@contextlib.contextmanager
def quiet_torchvision_image_io():
    """torchvision >= 0.29 calls its image encoders and decoders deprecated (for torchcodec's); they are the
    fast batched JPEG codec we use, so the warning is not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        yield


@functools.lru_cache(maxsize=4)
def _open_store(root, stamp):
    return FrameStore(root)


def open_store(root):
    """The FrameStore at `root`, loaded once per process while its index file does not change."""
    index = os.path.join(root, INDEX_FILE)
    return _open_store(os.path.abspath(root), os.path.getmtime(index) if os.path.exists(index) else None)
