"""Frame stores: `prepare` writes what decoding gives, train/eval read it with the same sampling as the videos
(the same clips from a raw store of every frame), stores are resumable and verified on read, and mistakes
are named."""
import json
import os

import numpy as np
import pytest
import torch

from barcoded_videos import read_barcodes, write_barcoded
from st_adapter_fast import cli
from st_adapter_fast.video import prepare as prepare_module
from st_adapter_fast.video.data import VideoDataset, collate_clips
from st_adapter_fast.video.decode import decode_video
from st_adapter_fast.video.prepare import prepare_store
from st_adapter_fast.video.store import FrameStore, StoreError, StoreSettings, is_store

FRAMES = 30


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Barcoded videos (H.264 mp4 and VP9 WebM, one in a subdirectory) and a list of them."""
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    names = [os.path.relpath(write_barcoded(root / f"v{i}", container, FRAMES + i, seed=i), root)
             for i, container in enumerate(["h264-gop10", "vp9-webm", "h264-default"])]
    names.append(os.path.relpath(write_barcoded(root / "sub" / "w", "vp9-webm", FRAMES), root))
    (root / "train.txt").write_text("".join(f"{name} {i % 2}\n" for i, name in enumerate(names)))
    (root / "val.txt").write_text(f"{names[1]} 1\n{names[3]} 0\n")
    return root, names


def prepared(videos, tmp_path, **settings):
    root, _ = videos
    out = tmp_path / "store"
    prepare_store([str(root / "train.txt"), str(root / "val.txt")], str(root), str(out), StoreSettings(**settings),
                  workers=0, progress=False)
    return str(out)


def test_a_raw_store_reads_back_the_decoded_frames_and_gives_the_same_clips(videos, tmp_path):
    root, names = videos
    store_dir = prepared(videos, tmp_path, encoding="raw")
    assert is_store(store_dir) and not is_store(str(root))
    store = FrameStore(store_dir)
    for name in names:
        choose = lambda n: np.array([n - 1, 0, 5, 5])   # noqa: E731
        assert np.array_equal(store.read(name, choose).permute(0, 2, 3, 1).numpy(),
                              decode_video(str(root / name), choose))
    for train, options in ((True, dict(sampling_rate=None)), (True, dict(sampling_rate=3, crop="short-side-jitter")),
                           (False, dict(num_views=2, num_crops=3, sampling_rate=2))):
        from_videos = VideoDataset(str(root / "train.txt"), str(root), num_frames=4, size=16, train=train, **options)
        from_store = VideoDataset(str(root / "train.txt"), store_dir, num_frames=4, size=16, train=train, **options)
        for key in ([(i, e) for i in range(4) for e in (0, 1)] if train else range(4)):
            assert torch.equal(from_videos[key]["clip"], from_store[key]["clip"]), (train, key)


def test_a_jpeg_store_at_a_short_side_and_frame_rate(videos, tmp_path):
    root, names = videos
    store = FrameStore(prepared(videos, tmp_path, short_side=16, fps=6))   # the videos run at 12 fps
    entry = store.entry(names[0])
    assert (entry["height"], entry["width"], entry["frames"]) == (16, 32, FRAMES // 2)
    assert (entry["source_frames"], entry["source_fps"]) == (FRAMES, 12.0)
    frames = store.read(names[0])
    assert frames.shape == (FRAMES // 2, 3, 16, 32) and frames.dtype == torch.uint8
    big = torch.nn.functional.interpolate(frames.float(), size=(32, 64)).round().byte()   # the barcodes need 32 x 64
    assert read_barcodes(big).tolist() == list(range(0, FRAMES, 2))
    counted = FrameStore(prepared(videos, tmp_path / "count", frames_per_video=5)).entry(names[1])
    assert counted["frames"] == 5 and counted["source_frames"] == FRAMES + 1


def test_prepare_resumes_an_interrupted_run_and_keeps_finished_shards(videos, tmp_path, monkeypatch):
    root, names = videos
    lists, out = [str(root / "train.txt")], str(tmp_path / "store")
    settings = StoreSettings(videos_per_shard=1, encoding="raw")
    decode_for_store, calls = prepare_module._decode_for_store, []

    def interrupted(path, settings):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return decode_for_store(path, settings)
    monkeypatch.setattr(prepare_module, "_decode_for_store", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_store(lists, str(root), out, settings, workers=0, progress=False)
    with pytest.raises(StoreError, match="incomplete"):
        VideoDataset(lists[0], out)
    done = {name: os.path.getmtime(os.path.join(out, "shards", name)) for name in ("00000.bin", "00001.bin")}
    monkeypatch.setattr(prepare_module, "_decode_for_store", decode_for_store)
    result = prepare_store(lists, str(root), out, settings, workers=0, progress=False)
    assert result["videos"] == 4 and result["shards"] == 4 and not result["unreadable"]
    assert all(os.path.getmtime(os.path.join(out, "shards", name)) == t for name, t in done.items())
    straight = prepared(videos, tmp_path / "straight", encoding="raw")
    assert torch.equal(FrameStore(out).read(names[2]), FrameStore(straight).read(names[2]))


def test_parallel_prepare_writes_the_same_store(videos, tmp_path):
    root, _ = videos
    stores = []
    for workers in (0, 2):
        out = str(tmp_path / f"w{workers}")
        prepare_store([str(root / "train.txt")], str(root), out, StoreSettings(videos_per_shard=2), workers=workers,
                      progress=False)
        stores.append(out)
    read = [json.load(open(os.path.join(s, "index.json"))) for s in stores]
    assert read[0] == read[1]
    for shard in ("00000.bin", "00001.bin"):
        assert open(os.path.join(stores[0], "shards", shard), "rb").read() == \
            open(os.path.join(stores[1], "shards", shard), "rb").read()


def test_a_damaged_store_is_caught_on_read(videos, tmp_path):
    root, names = videos
    store_dir = prepared(videos, tmp_path)
    shard = os.path.join(store_dir, "shards", "00000.bin")
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    dataset = VideoDataset(str(root / "train.txt"), store_dir, num_frames=30, size=16, train=False)
    items = [dataset[i] for i in range(4)]
    assert sum(item["clip"] is None for item in items) >= 1
    bad = next(item for item in items if item["clip"] is None)
    assert "does not match its checksum" in bad["error"] and "00000.bin" in bad["error"]
    assert len(collate_clips(items)["skipped"]) >= 1
    open(shard, "wb").write(bytes(data[:len(data) // 3]))   # truncated
    with pytest.raises(StoreError, match="shorter than its frame table"):
        FrameStore(store_dir).read(names[0])


def test_unreadable_videos_are_stored_as_such_and_skipped_on_read(videos, tmp_path):
    root, names = videos
    (tmp_path / "broken.mp4").write_bytes(b"not a video" * 50)
    (tmp_path / "list.txt").write_text(f"{root / names[0]} 0\nbroken.mp4 1\n")
    out = str(tmp_path / "store")
    with pytest.warns(UserWarning, match="1 of 2 videos could not be decoded.*broken.mp4"):
        result = prepare_store([str(tmp_path / "list.txt")], str(tmp_path), out, workers=0, progress=False)
    assert list(result["unreadable"]) == ["broken.mp4"]
    dataset = VideoDataset(str(tmp_path / "list.txt"), out, num_frames=4, size=16, train=False)
    assert dataset[0]["clip"] is not None
    assert dataset[1]["clip"] is None and "unreadable when the store was prepared" in dataset[1]["error"]


def test_store_mistakes_are_named(videos, tmp_path):
    root, names = videos
    store_dir = prepared(videos, tmp_path)
    with pytest.raises(StoreError, match="other settings.*quality"):
        prepare_store([str(root / "train.txt")], str(root), store_dir, StoreSettings(quality=50), workers=0,
                      progress=False)
    (tmp_path / "other.txt").write_text(f"{names[0]} 0\n")
    with pytest.raises(StoreError, match="other videos"):
        prepare_store([str(tmp_path / "other.txt")], str(root), store_dir, workers=0, progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(StoreError, match="not a store"):
        prepare_store([str(root / "train.txt")], str(root), str(tmp_path / "full"), workers=0, progress=False)
    (tmp_path / "new.txt").write_text(f"{names[0]} 0\nv9.mp4 1\n")
    (root / "v9.mp4").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="1 listed video.*not found in the frame store.*new.txt:2"):
        VideoDataset(str(tmp_path / "new.txt"), store_dir)
    for settings, message in [(dict(fps=4, frames_per_video=2), "not both"), (dict(short_side=0), "short_side"),
                              (dict(encoding="png"), "encoding"), (dict(quality=101), "quality")]:
        with pytest.raises(ValueError, match=message):
            StoreSettings(**settings)


def test_prepare_command(videos, tmp_path, capsys):
    root, _ = videos
    out = tmp_path / "store"
    args = ["prepare", str(root / "train.txt"), str(root / "val.txt"), "--data-root", str(root), "--out", str(out),
            "--short-side", "16", "--num-workers", "0", "--no-progress"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "prepared" in printed and "4 videos (0 unreadable)" in printed and f"--data-root {out}" in printed
    assert cli.main(args) == 0   # a finished store: nothing to do
    for extra, message in [(["--quality", "0"], "--quality must be in"), (["--short-side", "8"], "other settings")]:
        assert cli.main(args + extra) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("st-adapter-fast: error: ") and message in err[0], err
