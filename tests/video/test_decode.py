"""The exact decoder: for every container the tests make, the frames chosen are the full decode's, pixel for
pixel, and they are the frames asked for (their barcodes say which); damaged files decode to the right frames
or are refused, never to other frames."""
import av
import numpy as np
import pytest

from barcoded_videos import CONTAINERS, read_barcodes, write_barcoded
from st_adapter_fast.video import decode
from st_adapter_fast.video.data import sample_frame_indices
from st_adapter_fast.video.decode import count_frames, decode_sequential, decode_video

FRAMES = 45


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("barcoded")
    return {name: write_barcoded(root / name, name, FRAMES) for name in CONTAINERS}


def choices(rng):
    """choose_indices functions as the dataset uses them, and odd ones (unsorted, repeated, one frame)."""
    yield None
    yield lambda n: np.array([n - 1, 0, 0, 3, n // 2, n // 2 + 1])
    yield lambda n: np.array([n - 1])
    yield lambda n: np.array([0])
    for rate in (None, 2, 4, 16):
        seed = int(rng.integers(1000))
        yield lambda n, rate=rate, seed=seed: sample_frame_indices(n, 8, rate, rng=np.random.default_rng(seed))
        yield lambda n, rate=rate: np.concatenate([sample_frame_indices(n, 8, rate, view=v, num_views=3)
                                                   for v in range(3)])


@pytest.mark.parametrize("container", CONTAINERS)
def test_chosen_frames_are_the_full_decodes_pixel_for_pixel(container, videos):
    path = videos[container]
    full = decode_sequential(path)
    assert full.shape == (FRAMES, 32, 64, 3) and np.array_equal(read_barcodes(full), np.arange(FRAMES))
    for choose in choices(np.random.default_rng(0)):
        wanted = np.arange(FRAMES) if choose is None else choose(FRAMES)
        frames = decode_video(path, choose)
        assert frames.dtype == np.uint8 and np.array_equal(frames, full[wanted]), container
        assert np.array_equal(read_barcodes(frames), wanted)


@pytest.mark.parametrize("container", CONTAINERS)
def test_the_exact_path_needs_no_fallback_and_counts_frames_without_a_stated_count(container, videos, monkeypatch):
    path = videos[container]
    with av.open(path) as c:
        stated = c.streams.video[0].frames   # WebM states none (0)
    assert count_frames(path) == FRAMES, stated
    expected = decode_sequential(path, lambda n: np.array([40, 3, 41]))

    def refuse(*args, **kwargs):
        raise AssertionError("the sequential fallback ran")
    monkeypatch.setattr(decode, "decode_sequential", refuse)
    assert np.array_equal(decode_video(path, lambda n: np.array([40, 3, 41])), expected)


def test_decoding_jumps_forward_to_a_keyframe_only_when_it_skips_packets(videos):
    class Packet:
        def __init__(self, pts, is_keyframe):
            self.pts, self.is_keyframe = pts, is_keyframe
    # decode order with B-frames: keyframes at positions 0, 4 and 8; pts 10 sits before keyframe 4 (pts 12)
    packets = [Packet(pts, key) for pts, key in [(0, True), (3, False), (1, False), (2, False), (12, True),
                                                 (10, False), (11, False), (13, False), (20, True), (21, False)]]
    assert decode._runs(packets, {2}) == [[0, 4]]
    assert decode._runs(packets, {13}) == [[4, 8]]                # the frames before keyframe 4 are skipped
    assert decode._runs(packets, {10}) == [[0, 6]]                # pts 10 is before keyframe 4's time
    assert decode._runs(packets, {0, 21}) == [[0, 1], [8, 10]]
    assert decode._runs(packets, {3, 12}) == [[0, 2], [4, 5]]     # skips pts 1 and 2 (positions 2, 3)
    assert decode._runs(packets, {2, 12}) == [[0, 5]]             # jumping to 4 would skip nothing


def damaged_copies(path, out_dir):
    data = open(path, "rb").read()
    rng = np.random.default_rng(1)
    for fraction in (0.5, 0.9):
        yield f"truncated at {fraction:.0%}", data[:int(len(data) * fraction)]
    for fraction in (0.3, 0.6):
        damaged = bytearray(data)
        at = int(len(damaged) * fraction)
        damaged[at:at + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        yield f"64 bytes overwritten at {fraction:.0%}", bytes(damaged)


@pytest.mark.parametrize("container", CONTAINERS)
def test_damaged_files_give_the_right_frames_or_are_refused(container, videos, tmp_path):
    suffix = CONTAINERS[container][0]
    for case, data in damaged_copies(videos[container], tmp_path):
        path = tmp_path / f"damaged{suffix}"
        path.write_bytes(data)
        counts = []

        def choose(count):
            counts.append(count)
            return np.array([count - 1, 0, count // 2, count // 3])
        try:
            full = decode_sequential(str(path))
        except Exception:   # noqa: BLE001 -- what a full decode refuses, the exact path may refuse too
            full = None
        try:
            frames = decode_video(str(path), choose)
        except Exception:   # noqa: BLE001
            assert full is None, f"{container}, {case}: the full decode reads it, the exact path fails"
            continue
        wanted = choose(counts[-1])
        if full is not None:   # the full decode's frames (a damaged file may have lost some: then its count)
            assert np.array_equal(frames, full[wanted]), f"{container}, {case}"
        else:   # the damage lies where the exact path does not decode: the frames asked for, all the same
            assert np.array_equal(read_barcodes(frames), wanted), f"{container}, {case}"


def test_files_that_are_not_videos_raise(tmp_path):
    (tmp_path / "text.mp4").write_bytes(b"not a video at all" * 10)
    (tmp_path / "empty.webm").write_bytes(b"")
    for name in ("text.mp4", "empty.webm"):
        with pytest.raises((ValueError, av.error.FFmpegError)):
            decode_video(str(tmp_path / name))
    with pytest.raises(FileNotFoundError):
        decode_video(str(tmp_path / "missing.mp4"))
    frames = write_barcoded(tmp_path / "ok", "h264-gop10", 12)
    with pytest.raises(ValueError, match="outside"):
        decode_video(frames, lambda n: np.array([n]))
