"""A synthetic temporal-order task written as real mp4 files plus list files.

Each clip shows a disk drifting vertically over a noisy background, wrapping around at the edges. The
videos come in pairs: a clip of the disk moving down (label 0) and the same frames in reverse order, the
disk moving up (label 1). A pair has the same set of frames, so anything that looks at frames one at a
time and averages over time (a frozen image model with temporal mean pooling) gives both videos of a pair
the same score and cannot beat chance; telling them apart needs the order of the frames. Vertical motion
keeps the label under horizontal flips, the usual training augmentation.
"""
import os

import numpy as np

from ..files import check_writable_folder, write_files
from ..validation import as_int

CLASS_NAMES = ("down", "up")


def render_clip(rng, num_frames, size):
    """uint8 (num_frames, size, size, 3) frames of a disk moving down with wrap-around."""
    background = rng.uniform(0, 90, size=3)
    color = rng.uniform(150, 255, size=3)
    radius = rng.uniform(0.12, 0.2) * size
    x0, y0 = rng.uniform(0, size, size=2)
    speed_y = rng.uniform(0.05, 0.09) * size          # pixels per frame
    speed_x = rng.uniform(-0.02, 0.02) * size
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        cx, cy = (x0 + speed_x * t) % size, (y0 + speed_y * t) % size
        # distance on the torus, so the disk wraps around the edges
        dx = np.abs(xs - cx)
        dx = np.minimum(dx, size - dx)
        dy = np.abs(ys - cy)
        dy = np.minimum(dy, size - dy)
        inside = (dx ** 2 + dy ** 2 <= radius ** 2)[..., None]
        image = np.where(inside, color, background) + rng.normal(0, 8, size=(size, size, 3))
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames


def write_mp4(path, frames, fps=8):
    """Write uint8 (T, H, W, 3) RGB frames (H, W even) to an mp4 file with PyAV (H.264, else MPEG-4)."""
    import av
    try:
        write_video(path, frames, fps, "libx264", {"crf": "0", "preset": "veryfast"})
    except (av.error.FFmpegError, ValueError):   # an ffmpeg build without libx264
        write_video(path, frames, fps, "mpeg4", {"qscale": "2"})


def write_video(path, frames, fps, codec, options=None):
    """Write uint8 RGB frames (an iterable of (H, W, 3) arrays, H and W even) with PyAV's encoder `codec`
    (libx264, libvpx-vp9, mpeg4, ...: the container follows the file's extension) and its `options`, in
    yuv420p at `fps` frames per second."""
    import av
    with av.open(path, "w") as container:
        stream = None
        for image in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=fps, options=options or {})
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = "yuv420p"
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        for packet in stream.encode():
            container.mux(packet)


SYNTHETIC_ARGUMENTS = ("num_train", "num_val", "num_frames", "size", "seed")
MAX_FRAMES, MAX_SIZE = 1024, 512   # a clip is rendered in memory: at most 0.8 GB


def check_synthetic_arguments(num_train, num_val, num_frames, size, seed):
    """make_synthetic's sizes and seed as a dict of ints; ValueError / TypeError naming a bad one."""
    values = dict(num_train=as_int("num_train", num_train, 2), num_val=as_int("num_val", num_val, 2),
                  num_frames=as_int("num_frames", num_frames, 1), size=as_int("size", size, 2),
                  seed=as_int("seed", seed, 0))
    for name, why in (("num_train", "pairs of a clip and its reversal"), ("num_val", "pairs of a clip and its "
                      "reversal"), ("size", "yuv420p")):
        if values[name] % 2:
            raise ValueError(f"{name} must be even ({why}), got {values[name]}")
    for name, maximum in (("num_frames", MAX_FRAMES), ("size", MAX_SIZE)):
        if values[name] > maximum:
            raise ValueError(f"{name} must be <= {maximum} (a clip is rendered in memory), got {values[name]}")
    return values


def make_synthetic(out_dir, num_train=200, num_val=100, *, num_frames=16, size=32, seed=0, progress=False):
    """Write `num_train` + `num_val` videos (even counts: pairs of a clip and its reversal) under
    `out_dir`/videos and the list files `out_dir`/train.txt and val.txt. Returns the two list paths.
    Every argument is checked before anything is written (ValueError / TypeError naming it)."""
    values = check_synthetic_arguments(num_train, num_val, num_frames, size, seed)
    num_train, num_val, num_frames, size = (values[name] for name in ("num_train", "num_val", "num_frames", "size"))
    from tqdm import tqdm
    check_writable_folder(out_dir, "out_dir")
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    rng = np.random.default_rng(values["seed"])
    lists = {}
    for split, count in (("train", num_train), ("val", num_val)):
        lines = []
        for pair in tqdm(range(count // 2), desc=f"writing {split} videos", disable=not progress):
            frames = render_clip(rng, num_frames, size)
            for label, clip in enumerate((frames, frames[::-1])):
                name = f"videos/{split}_{pair:05d}_{CLASS_NAMES[label]}.mp4"
                write_mp4(os.path.join(out_dir, name), clip)
                lines.append(f"{name} {label}\n")
        lists[split] = os.path.join(out_dir, f"{split}.txt")
        write_files({lists[split]: "".join(lines)})
    return lists["train"], lists["val"]
