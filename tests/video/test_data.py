"""Video data: PyAV decoding of generated mp4s, frame sampling, transforms, list-file errors, the sampler."""
import numpy as np
import pytest
import torch

from st_adapter_fast.video.data import (CLIP_MEAN, CLIP_STD, ResumableSampler, VideoDataset, collate_clips,
                                  decode_video, read_video_list, sample_frame_indices)
from st_adapter_fast.video.synthetic import make_synthetic


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    train_list, val_list = make_synthetic(str(root), 4, 2, num_frames=12, size=32, seed=1)
    return str(root), train_list, val_list


def test_generated_mp4_decodes_to_its_frames(videos):
    root, train_list, _ = videos
    records = read_video_list(train_list, root)
    assert [r.label for r in records] == [0, 1, 0, 1]
    down, up = decode_video(records[0].path), decode_video(records[1].path)
    assert down.shape == (12, 32, 32, 3) and down.dtype == np.uint8
    # lossless H.264: the reversed video decodes to exactly the reversed frames
    assert np.array_equal(up, down[::-1])
    assert down.std() > 10   # not a blank video
    chosen = decode_video(records[0].path, lambda count: np.array([count - 1, 0, 0, 3]))
    assert np.array_equal(chosen, down[[11, 0, 0, 3]])


def test_eval_clip_shape_dtype_and_normalisation(videos):
    root, train_list, _ = videos
    dataset = VideoDataset(train_list, root, num_frames=4, size=32, train=False)
    item = dataset[0]
    assert item["clip"].shape == (1, 3, 4, 32, 32) and item["clip"].dtype == torch.float32
    assert item["label"] == 0 and item["error"] is None
    frames = decode_video(dataset.records[0].path)[[1, 4, 7, 10]]   # the middles of 4 segments of 3 frames
    expected = (torch.from_numpy(frames).float() / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(item["clip"][0], expected.permute(3, 0, 1, 2), rtol=0, atol=1e-6)


def test_eval_views_and_crops_and_resize(videos):
    root, train_list, _ = videos
    dataset = VideoDataset(train_list, root, num_frames=4, size=16, train=False, num_views=2, num_crops=3)
    assert dataset[1]["clip"].shape == (6, 3, 4, 16, 16)


def test_training_clips_depend_on_seed_epoch_and_index_only(videos):
    root, train_list, _ = videos
    dataset = VideoDataset(train_list, root, num_frames=4, size=24, train=True, seed=3)
    first = dataset[(2, 0)]["clip"]
    assert first.shape == (3, 4, 24, 24) and first.dtype == torch.float32
    assert torch.equal(first, dataset[(2, 0)]["clip"])
    assert not torch.equal(first, dataset[(2, 1)]["clip"])


def test_sample_frame_indices():
    assert sample_frame_indices(16, 4).tolist() == [2, 6, 10, 14]
    assert sample_frame_indices(16, 4, view=0, num_views=2).tolist() == [1, 5, 9, 13]
    rng = np.random.default_rng(0)
    for _ in range(20):
        picked = sample_frame_indices(16, 4, rng=rng)
        assert all(4 * i <= j < 4 * (i + 1) for i, j in enumerate(picked))
    assert sample_frame_indices(16, 4, sampling_rate=2).tolist() == [4, 6, 8, 10]
    assert sample_frame_indices(16, 4, sampling_rate=2, view=1, num_views=2).tolist() == [7, 9, 11, 13]
    starts = {sample_frame_indices(16, 4, sampling_rate=2, rng=rng)[0] for _ in range(200)}
    assert starts == set(range(10))
    assert sample_frame_indices(3, 4, sampling_rate=2).tolist() == [0, 2, 2, 2]   # short video: last frame repeats
    assert sample_frame_indices(2, 4).tolist() == [0, 0, 1, 1]


def test_list_file_errors_name_the_file_and_line(videos, tmp_path):
    root, _, _ = videos
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_video_list(str(missing), root)
    cases = {"videos/train_00000_down.mp4 cat\n": "bad.txt:2: label 'cat' is not an integer",
             "videos/train_00000_down.mp4\n": "bad.txt:2: expected",
             "videos/train_00000_down.mp4 -1\n": "bad.txt:2: label -1 is outside",
             "videos/train_00000_down.mp4 2\n": r"bad.txt:2: label 2 is outside \[0, 2\)"}
    bad = tmp_path / "bad.txt"
    for line, message in cases.items():
        bad.write_text("videos/train_00000_up.mp4 1\n" + line)
        with pytest.raises(ValueError, match=message):
            read_video_list(str(bad), root, num_classes=2)
    bad.write_text("\nvideos/train_00000_up.mp4 1\nvideos/gone.mp4 0\n")
    with pytest.raises(FileNotFoundError, match="1 listed video.*bad.txt:3.*gone.mp4"):
        read_video_list(str(bad), root)
    bad.write_text("videos/train_00000_up.mp4\t1\n")   # a tab separates as well as a space
    assert [r.label for r in read_video_list(str(bad), root)] == [1]
    bad.write_text("\n\n")
    with pytest.raises(ValueError, match="no videos"):
        read_video_list(str(bad), root)


def test_unreadable_video_is_reported_not_raised(videos, tmp_path):
    root, _, _ = videos
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 10)
    (tmp_path / "list.txt").write_text(f"{root}/videos/train_00000_down.mp4 0\nbroken.mp4 1\n")
    dataset = VideoDataset(str(tmp_path / "list.txt"), str(tmp_path), num_frames=4, size=32, train=False)
    items = [dataset[0], dataset[1]]
    assert items[1]["clip"] is None and "broken.mp4" in items[1]["path"] and items[1]["error"]
    batch = collate_clips(items)
    assert batch["clip"].shape[0] == 1 and batch["label"].tolist() == [0]
    assert [path for path, _ in batch["skipped"]] == [items[1]["path"]]
    assert collate_clips(items[1:])["clip"] is None


def test_sampler_shards_an_epoch_and_resumes_inside_it():
    full = ResumableSampler(10, seed=5)
    order = [i for i, _ in full]
    assert sorted(order) == list(range(10))
    ranks = [[i for i, _ in ResumableSampler(10, seed=5, rank=r, world_size=3)] for r in range(3)]
    assert all(len(share) == 4 for share in ranks)          # padded to 12 by repetition
    assert sorted(sum(ranks, [])) == sorted(order + order[:2])
    full.set_position(epoch=1, start=4)
    rest = list(full)
    assert len(full) == 6 and [e for _, e in rest] == [1] * 6
    full.set_position(epoch=1)
    assert list(full)[4:] == rest and [i for i, _ in full] != order
