"""`st-adapter-fast bench --data`: clips/s per core and per worker of a list of videos or of a frame store, and
the realistic test videos it is measured on."""
import json

import pytest

from st_adapter_fast import cli
from st_adapter_fast.bench.data import write_realistic_video
from st_adapter_fast.video.decode import count_frames, decode_video
from st_adapter_fast.video.synthetic import make_synthetic


@pytest.mark.parametrize("kind, suffix, frames", [("k400", ".mp4", 15), ("ssv2", ".webm", 6)])
def test_realistic_videos_decode_with_their_frame_count(kind, suffix, frames, tmp_path):
    path = write_realistic_video(str(tmp_path / f"v{suffix}"), kind, width=64, height=48, seconds=0.5)
    assert count_frames(path) == frames and decode_video(path).shape == (frames, 48, 64, 3)


def test_bench_data_reports_clips_per_second_of_videos_and_of_a_store(tmp_path, capsys):
    train_list, _ = make_synthetic(str(tmp_path / "data"), 4, 2, num_frames=8, size=32, seed=0)
    common = ["--data", train_list, "--num-frames", "4", "--input-size", "32", "--clips", "4", "--no-progress"]
    assert cli.main(["bench", *common, "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "v.json"),
                     "--num-workers", "0"]) == 0
    assert "video files, train clips of 4 frames at 32" in capsys.readouterr().out
    assert cli.main(["prepare", train_list, "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "store"),
                     "--num-workers", "0", "--no-progress"]) == 0
    assert cli.main(["bench", *common, "--data-root", str(tmp_path / "store"), "--eval", "--recipe", "authors-ssv2",
                     "--out", str(tmp_path / "s.json")]) == 0
    videos, store = (json.loads((tmp_path / name).read_text()) for name in ("v.json", "s.json"))
    assert videos["source"] == "video files" and store["source"] == "frame store" and store["mode"] == "eval"
    for result in (videos, store):
        assert result["per_core"]["clips"] == 4 and result["per_core"]["clips_per_s_per_core"] > 0
    assert videos["workers"]["0"]["clips_per_s"] > 0
    assert cli.main(["bench", "--data", "nope.txt"]) == 1
    assert "video list file not found: nope.txt" in capsys.readouterr().err
