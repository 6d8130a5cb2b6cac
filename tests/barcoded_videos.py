"""Tiny videos whose frames say which frame they are: the frame index as a barcode of black and white
blocks across the top half (readable after lossy encoding), moving noise below it."""
import numpy as np

from st_adapter_fast.video.synthetic import write_video

HEIGHT, WIDTH, BITS = 32, 64, 8   # 8 blocks of 8 x 16 pixels: frames 0..255

# name: (file suffix, PyAV codec, encoder options): H.264 as x264 encodes by default (B-frames, CRF 23) with
# a GOP shorter than the video (so decoding jumps forward) and with its default GOP, VP9 in WebM, lossless H.264
# as make-synthetic writes it, and MPEG-4 part 2 (make-synthetic's fallback)
CONTAINERS = {
    "h264-gop10": (".mp4", "libx264", {"g": "10"}),
    "h264-default": (".mp4", "libx264", {}),
    "vp9-webm": (".webm", "libvpx-vp9", {"g": "10"}),
    "h264-lossless": (".mp4", "libx264", {"crf": "0", "preset": "veryfast"}),
    "mpeg4": (".mp4", "mpeg4", {"qscale": "2", "g": "8"}),
}


def barcoded_frames(count, seed=0):
    """uint8 (count, HEIGHT, WIDTH, 3) frames, frame i showing i as a barcode in its top half."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (HEIGHT // 2, 2 * WIDTH, 3), dtype=np.uint8)
    frames = np.empty((count, HEIGHT, WIDTH, 3), np.uint8)
    for i in range(count):
        bits = (i >> np.arange(BITS)) & 1
        frames[i, :HEIGHT // 2] = np.repeat(bits * 255, WIDTH // BITS)[None, :, None]
        frames[i, HEIGHT // 2:] = noise[:, i % WIDTH:i % WIDTH + WIDTH]
    return frames


def read_barcodes(frames):
    """The frame index each of the (N, H, W, 3) or (N, 3, H, W) uint8 frames shows."""
    frames = np.asarray(frames)
    if frames.shape[1] == 3:
        frames = frames.transpose(0, 2, 3, 1)
    blocks = frames[:, 2:HEIGHT // 2 - 2].reshape(len(frames), HEIGHT // 2 - 4, BITS, WIDTH // BITS, 3)
    bits = blocks[:, :, :, 2:-2].mean(axis=(1, 3, 4)) > 128
    return (bits * (1 << np.arange(BITS))).sum(axis=1)


def write_barcoded(path_without_suffix, container, count, fps=12, seed=0):
    """Write a barcoded video of `count` frames in `container` (a CONTAINERS name); returns its path."""
    suffix, codec, options = CONTAINERS[container]
    path = str(path_without_suffix) + suffix
    write_video(path, barcoded_frames(count, seed), fps, codec, options)
    return path
