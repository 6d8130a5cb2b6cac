"""Video data as the authors read it: list files, frame sampling, VideoDataset (clips of video files or of a
frame store), batching of clips with unreadable videos, and the resumable sampler.

A list file has one video per line, `<relative/path/to/video> <int label>`, paths relative to a root
directory: a directory of videos, or a frame store made from the list by `prepare` (store.py), which holds
the frames of the same paths. A clip is `num_frames` frames picked either evenly over the whole video
(`sampling_rate=None`, one frame per segment: a random frame of each segment in training, the segment's
middle in eval) or every `sampling_rate`-th frame from a start point (random in training, evenly spaced
views in eval). From a store, frame indices count the stored frames: the same frames as the video's when
it kept them all, every k-th of them when it kept a lower frame rate. Frames are decoded exactly
(decode.py), then cropped, resized, flipped and augmented in uint8 (transforms.py); a clip is uint8
(3, T, H, W), normalised with the CLIP mean/std to float32 by the dataset (`normalize=True`, the default) or
on the device by the training loop.

Unreadable videos never stop a run: the dataset returns them with clip=None, `collate_clips` drops
them and reports their paths, and the training and eval loops count and report them. A listed video
that does not exist (in the root directory, or in the store) is an error when the list is read (a wrong
root would otherwise skip everything).
"""
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..files import read_text
from .decode import decode_video
from .store import is_store, open_store
from .transforms import CLIP_MEAN, CLIP_STD, Augmentation, augment_clip, eval_clip, frames_tensor, normalize_clip

__all__ = ["CLIP_MEAN", "CLIP_STD", "ResumableSampler", "SkipCounter", "VideoDataset", "VideoRecord", "collate_clips",
           "decode_video", "read_video_list", "sample_frame_indices", "transform_clip"]


@dataclass(frozen=True)
class VideoRecord:
    """One line of a list file: the video's full path, its label and where it was listed."""

    path: str
    label: int
    source: str   # "list.txt:12", for error messages
    name: str = None   # the path as listed, relative to the root: the video's name in a frame store


def read_video_list(list_path, root, num_classes=None):
    """Parse a list file of `<relative/path> <int label>` lines (blank lines ignored) into VideoRecords.

    The list is UTF-8 text, or UTF-16 / UTF-32 / UTF-8 with a byte-order mark (as Windows editors save it).
    Raises FileNotFoundError if the list file or a listed video does not exist (under `root`, or in the
    frame store `root`), and ValueError naming the file and line for a list in another encoding or that is
    not a regular file, a malformed line, a label outside [0, num_classes), or a listed video that is not a
    regular file (a FIFO would block the decoder).
    """
    records = []
    for number, line in enumerate(read_text(list_path, "video list file").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{list_path}:{number}"
        records.append(_parse_line(line, root, where, num_classes))
    if not records:
        raise ValueError(f"{list_path}: the list has no videos")
    if is_store(root):
        store = open_store(root)
        missing = [r for r in records if r.name not in store]
        where = f"in the frame store {root!r} (st-adapter-fast prepare made it from other lists)"
    else:
        missing = [r for r in records if not os.path.exists(r.path)]
        where = f"under root {root!r}"
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed video(s) not found {where}, first: "
                                + "; ".join(f"{r.source}: {r.path}" for r in missing[:3]))
    irregular = [] if is_store(root) else [r for r in records if not os.path.isfile(r.path)]
    if irregular:
        raise ValueError(f"{len(irregular)} listed video(s) are not regular files (a folder, a FIFO...), first: "
                         + "; ".join(f"{r.source}: {r.path}" for r in irregular[:3]))
    return records


def _parse_line(line, root, where, num_classes):
    # The path may contain spaces; the label is the last field (after a space or a tab).
    fields = line.rsplit(maxsplit=1)
    if len(fields) != 2:
        raise ValueError(f"{where}: expected '<relative/path/to/video> <int label>', got {line.strip()!r}")
    path, label = fields
    try:
        label = int(label)
    except ValueError:
        raise ValueError(f"{where}: label {label!r} is not an integer") from None
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise ValueError(f"{where}: label {label} is outside [0, {num_classes if num_classes else 'inf'})")
    name = os.path.normpath(path.strip())
    return VideoRecord(os.path.join(root, name), label, where, name)


def sample_frame_indices(num_total, num_frames, sampling_rate=None, *, rng=None, view=0, num_views=1):
    """Indices of the `num_frames` frames of one clip from a video of `num_total` frames.

    sampling_rate=None: the video is cut into num_frames equal segments and one frame is taken from each,
    at a random position (rng given, training) or at fraction (view + 0.5) / num_views of the segment.
    sampling_rate=r: frames start, start + r, ...; start is random (training) or the view-th of num_views
    evenly spaced starts. Indices past the end repeat the last frame.
    """
    if num_total < 1 or num_frames < 1:
        raise ValueError(f"need at least one frame, got num_total={num_total}, num_frames={num_frames}")
    if sampling_rate is None:
        segment = num_total / num_frames
        if rng is not None:
            offsets = rng.random(num_frames)
        else:
            offsets = np.full(num_frames, (view + 0.5) / num_views)
        positions = (np.arange(num_frames) + offsets) * segment
    else:
        span = (num_frames - 1) * sampling_rate + 1
        room = max(num_total - span, 0)
        if rng is not None:
            start = rng.integers(0, room + 1)
        else:
            start = round(room * (view + 0.5) / num_views)
        positions = start + np.arange(num_frames) * sampling_rate
    return np.minimum(positions.astype(np.int64), num_total - 1)


def transform_clip(frames, size, *, rng=None, flip=True, scale=(0.5, 1.0), crop_position=0.5,
                   mean=CLIP_MEAN, std=CLIP_STD):
    """uint8 (T, H, W, 3) frames -> normalised float32 (3, T, size, size).

    Training (rng given): a random square crop covering `scale` of the shorter side's square, resized to
    `size`, and a horizontal flip with probability 1/2 if `flip`. Eval: the shorter side resized to
    `size` and a `size` crop at `crop_position` (0: left/top, 0.5: centre, 1: right/bottom) along the
    longer side. The same crop and flip apply to every frame of the clip; resizing runs in uint8
    (transforms.py has the other crops and RandAugment).
    """
    if rng is not None:
        clip = augment_clip(frames, size, rng, Augmentation("random-square", crop_scale=scale, flip=flip))
    else:
        clip = eval_clip(frames, size, crop_position)
    return normalize_clip(clip, mean, std)


class VideoDataset(torch.utils.data.Dataset):
    """Clips of the videos in a list file, decoded from the videos under `root`, or read from the frame
    store `root` (made by `st-adapter-fast prepare` from the list).

    Training (`train=True`): item `(index, epoch)` gives one randomly sampled and augmented clip; its
    randomness comes from (seed, epoch, index) only, so a run gives the same clips whatever the number
    of DataLoader workers and after a resume. The augmentation (`crop`, `crop_scale`, `scale_jitter`,
    `flip`, `rand_augment`, `interpolation`: see transforms.Augmentation) is the same for every frame of a
    clip. Eval: item `index` gives `num_views * num_crops` clips (temporal views x spatial crops), stacked
    as (V, 3, T, H, W).

    Clips are float32 normalised with the CLIP mean/std, or with `normalize=False` uint8 (0-255), to be
    normalised where the model runs (`transforms.normalize_clip`): a quarter of the bytes to move, and
    no float work in the loader. Returns a dict (clip, label, path, error); for a video that cannot be
    decoded, clip is None and error says why.
    """

    def __init__(self, list_path, root, *, num_frames=8, sampling_rate=None, size=224, train=True,
                 num_views=1, num_crops=1, flip=True, num_classes=None, seed=0, crop="random-square",
                 crop_scale=None, scale_jitter=(1.0, 1.15), rand_augment=None, interpolation="bilinear",
                 normalize=True):
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        for name, value in (("num_frames", num_frames), ("size", size), ("num_views", num_views),
                            ("sampling_rate", sampling_rate)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (sampling_rate: or None), got {value}")
        self.augmentation = Augmentation(crop, crop_scale, scale_jitter, flip, rand_augment, interpolation)
        self.records = read_video_list(list_path, root, num_classes)
        self.store = open_store(root) if is_store(root) else None
        self.num_frames, self.sampling_rate, self.size = num_frames, sampling_rate, size
        self.train, self.num_views, self.num_crops, self.flip, self.seed = train, num_views, num_crops, flip, seed
        self.normalize = normalize

    def __len__(self):
        return len(self.records)

    def read_frames(self, record, choose_indices):
        """uint8 (N, 3, H, W) frames of `record` at `choose_indices(frame_count)`: decoded, or from the store."""
        if self.store is not None:
            return self.store.read(record.name, choose_indices)
        return frames_tensor(decode_video(record.path, choose_indices))

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        record = self.records[index]
        rng = np.random.default_rng([self.seed, epoch, index]) if self.train else None
        views = 1 if self.train else self.num_views
        # the frames drawn from their own seed: the same whatever the decoder asks (and how often)
        sampling_seed = rng.integers(2 ** 63) if rng is not None else None

        def choose(frame_count):   # the frames of every view, one after the other
            sampling = np.random.default_rng(sampling_seed) if rng is not None else None
            return np.concatenate([sample_frame_indices(frame_count, self.num_frames, self.sampling_rate,
                                                        rng=sampling, view=view, num_views=views)
                                   for view in range(views)])

        try:
            frames = self.read_frames(record, choose)
        except Exception as error:   # any decoder or store failure: the video is reported and skipped
            return dict(clip=None, label=record.label, path=record.path, error=f"{type(error).__name__}: {error}")
        if self.train:
            clip = augment_clip(frames, self.size, rng, self.augmentation)
        else:
            crops = [0.5] if self.num_crops == 1 else [0.0, 0.5, 1.0]
            clip = torch.stack([eval_clip(frames[view * self.num_frames:(view + 1) * self.num_frames], self.size,
                                          crop, self.augmentation.interpolation)
                                for view in range(views) for crop in crops])
        return dict(clip=normalize_clip(clip) if self.normalize else clip, label=record.label, path=record.path,
                    error=None)


def collate_clips(items):
    """Batch the decodable items: dict(clip, label) tensors plus `skipped`, [(path, error)] of the rest."""
    good = [item for item in items if item["clip"] is not None]
    skipped = [(item["path"], item["error"]) for item in items if item["clip"] is None]
    if not good:
        return dict(clip=None, label=None, skipped=skipped)
    return dict(clip=torch.stack([item["clip"] for item in good]),
                label=torch.tensor([item["label"] for item in good]), skipped=skipped)


class SkipCounter:
    """Counts unreadable videos and warns once per path."""

    def __init__(self):
        self.paths = {}

    def add(self, skipped):
        for path, error in skipped:
            if path not in self.paths:
                warnings.warn(f"skipping unreadable video {path} ({error}); {len(self.paths) + 1} skipped so far",
                              stacklevel=2)
            self.paths[path] = error

    def __len__(self):
        return len(self.paths)


class ResumableSampler(torch.utils.data.Sampler):
    """This rank's share of a seeded permutation per epoch, from any position, yielding (index, epoch).

    Like DistributedSampler (padding the permutation by repetition so every rank gets as many items),
    plus `set_position(epoch, start)` to continue in the middle of an epoch after a resume.
    """

    def __init__(self, size, *, shuffle=True, seed=0, rank=0, world_size=1):
        self.size, self.shuffle, self.seed, self.rank, self.world_size = size, shuffle, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch, start=0):
        self.epoch, self.start = epoch, start

    def _local_indices(self):
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        padded = -(-self.size // self.world_size) * self.world_size
        order = torch.cat([order, order[:padded - self.size]]) if padded > self.size else order
        return order[self.rank::self.world_size].tolist()

    def __iter__(self):
        return iter([(i, self.epoch) for i in self._local_indices()[self.start:]])

    def __len__(self):
        return max(len(self._local_indices()) - self.start, 0)
