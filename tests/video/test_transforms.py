"""Clip transforms: every augmentation is the same on every frame of a clip, the crops have the authors'
geometry, RandAugment leaves the caller's random state alone, and uint8 clips normalised on the device equal
the dataset's float clips."""
import random

import numpy as np
import pytest
import torch

from st_adapter_fast.video.transforms import (CLIP_MEAN, CLIP_STD, Augmentation, augment_clip, eval_clip,
                                              normalize_clip)

AUGMENTATIONS = {
    "random-square": Augmentation(),
    "short-side-jitter": Augmentation("short-side-jitter", flip=True),
    "random-resized bicubic": Augmentation("random-resized", interpolation="bicubic", flip=True),
    "authors-ssv2": Augmentation("random-resized", crop_scale=(0.08, 1.0), flip=False,
                                 rand_augment="rand-m7-n4-mstd0.5-inc1", interpolation="bicubic"),
    "rand-augment, more layers": Augmentation(rand_augment="rand-m9-n6-mstd0.5-inc1"),
}


def images(seed, count, height=40, width=56):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_augmentation_is_the_same_on_every_frame_of_a_clip(name):
    augmentation = AUGMENTATIONS[name]
    x, y = images(0, 2)
    for seed in range(12):   # many draws: crops, flips and RandAugment operations all vary
        mixed = augment_clip(np.stack([x, x, y]), 24, np.random.default_rng(seed), augmentation)
        only_x = augment_clip(np.stack([x, x, x]), 24, np.random.default_rng(seed), augmentation)
        only_y = augment_clip(np.stack([y, y, y]), 24, np.random.default_rng(seed), augmentation)
        assert mixed.shape == (3, 3, 24, 24) and mixed.dtype == torch.uint8
        assert torch.equal(mixed[:, 0], mixed[:, 1]) and torch.equal(mixed[:, 0], only_x[:, 2])
        assert torch.equal(mixed[:, 2], only_y[:, 0])


def test_augmentations_vary_between_clips_and_flips_follow_the_flag():
    frames = images(1, 2)
    ssv2 = AUGMENTATIONS["authors-ssv2"]
    clips = {augment_clip(frames, 24, np.random.default_rng(s), ssv2).numpy().tobytes() for s in range(6)}
    assert len(clips) == 6
    flipped = 0
    for seed in range(12):   # the same crop (the flip is drawn last): either as is or mirrored
        plain = augment_clip(frames, 24, np.random.default_rng(seed), Augmentation(flip=False))
        maybe = augment_clip(frames, 24, np.random.default_rng(seed), Augmentation(flip=True))
        assert torch.equal(maybe, plain) or torch.equal(maybe, plain.flip(-1))
        flipped += not torch.equal(maybe, plain)
    assert 0 < flipped < 12


def test_short_side_jitter_scales_the_shorter_side_then_crops():
    # a frame whose columns are their index: the crop's first and last column tell the scale
    frame = np.broadcast_to(np.arange(200, dtype=np.uint8)[None, :, None], (100, 200, 3))
    spans = []
    for seed in range(40):
        clip = augment_clip(frame[None], 50, np.random.default_rng(seed), Augmentation("short-side-jitter", flip=False))
        columns = clip[0, 0, 25].float()
        spans.append((columns[-1] - columns[0]).item() / 49)   # source columns per output column
        assert clip.shape == (3, 1, 50, 50)
    scales = 1 / np.array(spans) * 2   # short side 100 -> 50 x U(1, 1.15): output / source = 0.5 x U(1, 1.15)
    assert 0.97 < scales.min() and scales.max() < 1.18 and scales.max() - scales.min() > 0.05


def test_random_resized_crop_stays_inside_the_frame_and_covers_the_area_range():
    frame = images(2, 1, 64, 96)
    for seed in range(30):
        clip = augment_clip(frame, 32, np.random.default_rng(seed), Augmentation("random-resized", flip=False))
        assert clip.shape == (3, 1, 32, 32)


def test_eval_clip_resizes_the_shorter_side_and_crops_left_centre_right():
    frames = images(3, 2, 32, 64)
    crops = [eval_clip(frames, 32, position) for position in (0.0, 0.5, 1.0)]
    for crop, left in zip(crops, (0, 16, 32)):   # no resize needed: the crops are slices
        assert torch.equal(crop, torch.from_numpy(frames[:, :, left:left + 32]).permute(3, 0, 1, 2))


def test_rand_augment_leaves_the_callers_random_state_alone():
    random.seed(5)
    np.random.seed(5)
    expected = random.random(), np.random.random()
    random.seed(5)
    np.random.seed(5)
    augment_clip(images(4, 3), 24, np.random.default_rng(0), AUGMENTATIONS["authors-ssv2"])
    assert (random.random(), np.random.random()) == expected


def test_normalize_clip_on_uint8_equals_the_float_formula():
    clip = torch.from_numpy(images(5, 4)).permute(3, 0, 1, 2)
    expected = (clip.float() / 255 - torch.tensor(CLIP_MEAN).view(3, 1, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1, 1)
    torch.testing.assert_close(normalize_clip(clip), expected, rtol=0, atol=2e-6)
    batch = clip[None, None].expand(2, 3, -1, -1, -1, -1)   # (B, V, 3, T, H, W)
    torch.testing.assert_close(normalize_clip(batch)[1, 2], expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(crop="center"), "crop must be one of"),
    (dict(crop_scale=(0.5,)), "crop_scale must be"),
    (dict(crop_scale=(0.9, 0.5)), "crop_scale must be"),
    (dict(scale_jitter=(0.8, 1.1)), "scale_jitter must be"),
    (dict(interpolation="nearest"), "interpolation must be one of"),
    (dict(rand_augment="augmix-m5"), "rand_augment: timm cannot read 'augmix-m5'"),
])
def test_bad_augmentation_settings_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Augmentation(**kwargs)
