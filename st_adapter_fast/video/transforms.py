"""Clip transforms in uint8: training augmentation (crops, flip, RandAugment), eval resize and crops, and the
normalisation that the training loop applies on the device.

A clip's frames are a uint8 tensor (T, 3, H, W) (any strides: a view of PyAV's (T, H, W, 3) frames costs
no copy) and the transforms return uint8 (3, T, size, size). Every random choice is drawn once per clip
from the clip's numpy Generator, so the same crop, flip and RandAugment operations apply to every frame.
Resizing runs in uint8 (torch's antialiased bilinear / bicubic kernels on channels-last tensors), several
times faster than in float32; `normalize_clip` then gives the float32 input of the model, on whatever
device the clip is on.
"""
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TRAIN_CROPS = ("random-square", "short-side-jitter", "random-resized")
INTERPOLATIONS = ("bilinear", "bicubic")
# crop_scale when not given: the fraction of the area a crop covers (random-square: of the shorter side's
# square, random-resized: of the frame)
DEFAULT_CROP_SCALE = {"random-square": (0.5, 1.0), "random-resized": (0.08, 1.0)}
DEFAULT_SCALE_JITTER = (1.0, 1.15)


@dataclass(frozen=True)
class Augmentation:
    """How training clips are augmented.

    crop: "random-square" (a random square covering `crop_scale` of the shorter side's square, resized to
    the input size), "short-side-jitter" (the shorter side resized to input size x U(scale_jitter), then a
    random crop of the input size: the authors' Kinetics-400 recipe) or "random-resized" (torchvision's
    RandomResizedCrop: `crop_scale` of the area, aspect ratio 3/4 to 4/3, resized: their SSv2 recipe).
    flip: a horizontal flip with probability 1/2. rand_augment: a timm RandAugment string such as
    "rand-m7-n4-mstd0.5-inc1", applied to the frames before the crop (as the authors do), or None.
    interpolation: "bilinear" or "bicubic", for every resize and RandAugment's geometric operations.
    """

    crop: str = "random-square"
    crop_scale: tuple = None
    scale_jitter: tuple = DEFAULT_SCALE_JITTER
    flip: bool = True
    rand_augment: str = None
    interpolation: str = "bilinear"

    def __post_init__(self):
        check_augmentation(self.crop, self.crop_scale, self.scale_jitter, self.rand_augment, self.interpolation)
        if self.crop_scale is None and self.crop in DEFAULT_CROP_SCALE:
            object.__setattr__(self, "crop_scale", DEFAULT_CROP_SCALE[self.crop])
        object.__setattr__(self, "scale_jitter", tuple(self.scale_jitter))
        if self.crop_scale is not None:
            object.__setattr__(self, "crop_scale", tuple(self.crop_scale))


def check_augmentation(crop, crop_scale, scale_jitter, rand_augment, interpolation):
    """ValueError naming the argument when an augmentation setting is not valid."""
    if crop not in TRAIN_CROPS:
        raise ValueError(f"crop must be one of {', '.join(TRAIN_CROPS)}, got {crop!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if crop_scale is not None and not (len(crop_scale) == 2 and 0 < crop_scale[0] <= crop_scale[1] <= 1):
        raise ValueError(f"crop_scale must be two fractions of the area, 0 < low <= high <= 1, got {crop_scale}")
    if not (len(scale_jitter) == 2 and 1 <= scale_jitter[0] <= scale_jitter[1]):
        raise ValueError(f"scale_jitter must be two factors of the input size, 1 <= low <= high, got {scale_jitter}")
    if rand_augment is not None:
        _rand_augment_ops(rand_augment, 224, 224, interpolation)   # raises for a string timm does not read


def frames_tensor(frames):
    """uint8 (T, 3, H, W) tensor of a clip's frames: from numpy (T, H, W, 3) (a view, no copy, unless the
    array is read-only) or a tensor already (T, 3, H, W)."""
    if isinstance(frames, np.ndarray):
        return torch.from_numpy(frames if frames.flags.writeable else frames.copy()).permute(0, 3, 1, 2)
    return frames


def augment_clip(frames, size, rng, augmentation=Augmentation()):
    """uint8 (T, 3, H, W) frames (or numpy (T, H, W, 3)) -> uint8 (3, T, size, size): RandAugment, the crop
    and the flip of `augmentation`, drawn from `rng` (a numpy Generator) once for the whole clip."""
    clip = frames_tensor(frames)
    if augmentation.rand_augment:
        clip = rand_augment(clip, augmentation.rand_augment, rng, augmentation.interpolation)
    clip = _CROPS[augmentation.crop](clip, size, rng, augmentation).transpose(0, 1).contiguous()
    if augmentation.flip and rng.random() < 0.5:
        clip = clip.flip(-1)   # on the contiguous clip: cheaper than on the channels-last crop
    return clip


def eval_clip(frames, size, crop_position=0.5, interpolation="bilinear"):
    """uint8 (T, 3, H, W) frames (or numpy (T, H, W, 3)) -> uint8 (3, T, size, size): the shorter side
    resized to `size`, then a `size` crop at `crop_position` along the longer side (0: left / top,
    0.5: centre, 1: right / bottom)."""
    clip = frames_tensor(frames)
    new_h, new_w = scaled_size(*clip.shape[-2:], size)
    clip = resize(clip, new_h, new_w, interpolation)
    top, left = round((new_h - size) * crop_position), round((new_w - size) * crop_position)
    return clip[:, :, top:top + size, left:left + size].transpose(0, 1).contiguous()


def normalize_clip(clip, mean=CLIP_MEAN, std=CLIP_STD):
    """Float32 clip(s) normalised with `mean` and `std` per channel, from uint8 values 0-255 (or floats on
    that scale), on the clip's device. The channel axis is the 4th from the end: (3, T, H, W),
    (B, 3, T, H, W) or (B, V, 3, T, H, W)."""
    shape = (3, 1, 1, 1)
    mean = torch.tensor(mean, device=clip.device).view(shape) * 255
    scale = 1 / (torch.tensor(std, device=clip.device).view(shape) * 255)
    return (clip.float() - mean) * scale


def scaled_size(height, width, short_side):
    """(height, width) scaled so that the shorter side is `short_side`, the aspect ratio kept (rounded)."""
    if height <= width:
        return short_side, max(short_side, round(width * short_side / height))
    return max(short_side, round(height * short_side / width)), short_side


def resize(clip, height, width, interpolation="bilinear"):
    """uint8 (T, 3, h, w) frames resized to (height, width), antialiased (channels-last: torch's fast
    uint8 kernels)."""
    if tuple(clip.shape[-2:]) == (height, width):
        return clip
    clip = clip.contiguous(memory_format=torch.channels_last)
    return F.interpolate(clip, size=(height, width), mode=interpolation, align_corners=False, antialias=True)


def _random_square(clip, size, rng, augmentation):
    height, width = clip.shape[-2:]
    side = max(1, int(round(min(height, width) * np.sqrt(rng.uniform(*augmentation.crop_scale)))))
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    return resize(clip[:, :, top:top + side, left:left + side], size, size, augmentation.interpolation)


def _short_side_jitter(clip, size, rng, augmentation):
    height, width = clip.shape[-2:]
    low, high = (round(size * factor) for factor in augmentation.scale_jitter)
    short = int(round(rng.uniform(low, high)))
    new_h, new_w = (short, math.floor(width / height * short)) if height <= width else \
        (math.floor(height / width * short), short)
    clip = resize(clip, new_h, new_w, augmentation.interpolation)
    top, left = rng.integers(0, new_h - size + 1), rng.integers(0, new_w - size + 1)
    return clip[:, :, top:top + size, left:left + size]


def _random_resized(clip, size, rng, augmentation, ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop, drawn from `rng`: ten tries at a box of the drawn area and aspect
    ratio, else the whole frame's centre at the nearest allowed ratio."""
    height, width = clip.shape[-2:]
    area = height * width
    box = None
    for _ in range(10):
        target = area * rng.uniform(*augmentation.crop_scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            box = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
            break
    if box is None:
        aspect = width / height
        w, h = (width, int(round(width / min(max(aspect, ratio[0]), ratio[1])))) if aspect < ratio[0] else \
            (int(round(height * min(max(aspect, ratio[0]), ratio[1]))), height)
        w, h = min(w, width), min(h, height)
        box = (height - h) // 2, (width - w) // 2, h, w
    top, left, h, w = box
    return resize(clip[:, :, top:top + h, left:left + w], size, size, augmentation.interpolation)


_CROPS = {"random-square": _random_square, "short-side-jitter": _short_side_jitter,
          "random-resized": _random_resized}


def rand_augment(clip, config, rng, interpolation="bilinear"):
    """timm's RandAugment (`config`, e.g. "rand-m7-n4-mstd0.5-inc1") on every frame of uint8 (T, 3, H, W)
    `clip`, with the same operations and magnitudes on each: timm draws them from Python's and numpy's
    global generators, which are seeded from `rng` for the clip, reset before each frame, and restored
    afterwards (the caller's random state is left as it was)."""
    from PIL import Image
    frames = clip.permute(0, 2, 3, 1).contiguous().numpy()
    ops = _rand_augment_ops(config, frames.shape[1], frames.shape[2], interpolation)
    seed = int(rng.integers(2 ** 32))
    saved = random.getstate(), np.random.get_state()
    try:
        out = []
        for frame in frames:
            random.seed(seed)
            np.random.seed(seed)
            out.append(np.asarray(ops(Image.fromarray(frame))))
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


_RAND_AUGMENTS = {}


def _rand_augment_ops(config, height, width, interpolation):
    """timm's RandAugment transform for `config` on frames of (height, width) (cached): translations up to
    45% of the shorter side, as the authors' (SlowFast's) video RandAugment."""
    key = config, min(height, width), interpolation
    if key not in _RAND_AUGMENTS:
        from PIL import Image
        from timm.data.auto_augment import rand_augment_transform
        hparams = dict(translate_const=int(min(height, width) * 0.45),
                       interpolation=Image.BICUBIC if interpolation == "bicubic" else Image.BILINEAR)
        try:
            _RAND_AUGMENTS[key] = rand_augment_transform(config, hparams)
        except Exception as error:   # timm asserts and raises various errors on a string it cannot read
            detail = f" ({type(error).__name__}: {error})" if str(error) else ""
            raise ValueError(f"rand_augment: timm cannot read {config!r}{detail}; expected e.g. "
                             "'rand-m7-n4-mstd0.5-inc1'") from None
    return _RAND_AUGMENTS[key]
