"""The authors' recipes as presets that flags override, --blr and --epochs made concrete, and where a run's
time goes: data wait against step time in log.jsonl, and the warning when an accelerator starves."""
import dataclasses
import json
import warnings

import pytest
import torch

from st_adapter_fast import cli
from st_adapter_fast.video.synthetic import make_synthetic
from st_adapter_fast.video.train import TrainConfig, load_config_file, train
from st_adapter_fast.video.train.config import config_values_from_args, resolve_schedule
from st_adapter_fast.video.train.loop import DataWait, StarvationCheck

TINY = dict(model="vit_tiny_patch16_224", input_size=32, model_kwargs=dict(depth=1, embed_dim=48, num_heads=3),
            adapter_channels=8, num_workers=0, progress=False)


def test_the_presets_hold_the_authors_values():
    k400 = TrainConfig(recipe="authors-k400")
    assert (k400.num_frames, k400.sampling_rate, k400.train_crop, k400.scale_jitter, k400.flip) == \
        (8, 16, "short-side-jitter", [1.0, 1.15], True)
    assert (k400.eval_views, k400.eval_crops, k400.epochs, k400.warmup_epochs) == (3, 1, 12, 2)
    ssv2 = TrainConfig(recipe="authors-ssv2")
    assert (ssv2.num_frames, ssv2.sampling_rate, ssv2.train_crop, ssv2.crop_scale, ssv2.interpolation) == \
        (8, None, "random-resized", [0.08, 1.0], "bicubic")
    assert (ssv2.rand_augment, ssv2.flip, ssv2.eval_views, ssv2.eval_crops, ssv2.epochs) == \
        ("rand-m7-n4-mstd0.5-inc1", False, 1, 3, 50)
    for config in (k400, ssv2):
        assert (config.blr, config.weight_decay, config.amp, config.batch_size) == (1e-3, 0.01, "fp16", 64)


def test_flags_and_keys_override_a_preset(tmp_path):
    args = cli.build_parser().parse_args(["train", "--recipe", "authors-ssv2", "--flip", "--lr", "0.01",
                                          "--steps", "30", "--batch-size", "4"])
    config = TrainConfig.from_dict(config_values_from_args(args))
    assert (config.flip, config.lr, config.blr, config.steps, config.epochs, config.warmup_epochs) == \
        (True, 0.01, None, 30, None, None)   # --lr drops the preset's blr, --steps its epochs
    assert config.rand_augment == "rand-m7-n4-mstd0.5-inc1" and config.batch_size == 4
    (tmp_path / "run.yaml").write_text("recipe: authors-k400\nsampling_rate: 4\nwarmup_epochs: 1\n")
    config = TrainConfig.from_dict(load_config_file(str(tmp_path / "run.yaml")))
    assert (config.sampling_rate, config.epochs, config.warmup_epochs, config.flip) == (4, 12, 1, True)
    assert TrainConfig(recipe="authors-ssv2", flip=True).flip   # the API alike
    # a complete config (train_config.json, dataclasses.replace) keeps its values
    saved = dataclasses.asdict(TrainConfig(recipe="authors-ssv2", flip=True, epochs=3))
    assert dataclasses.asdict(TrainConfig(**saved)) == saved
    assert dataclasses.replace(TrainConfig(recipe="authors-k400", lr=0.5), seed=1).blr is None


def test_blr_and_epochs_become_the_learning_rate_and_steps():
    config = TrainConfig(recipe="authors-k400", batch_size=16, accum_steps=2)
    run = resolve_schedule(config, num_videos=1000, world_size=4)   # 250 per rank: 15 batches, 7.5 steps
    assert (run.steps, run.warmup_steps) == (90, 15)
    assert run.lr == pytest.approx(1e-3 * 16 * 2 * 4 / 256)
    assert resolve_schedule(run, 1000, 4) == run
    plain = TrainConfig()
    assert resolve_schedule(plain, 1000) is plain


@pytest.mark.parametrize("flags, message", [
    (["--recipe", "authors-x"], "--recipe: invalid choice"),
    (["--train-crop", "center"], "--train-crop: invalid choice"),
    (["--crop-scale", "0.5", "2"], r"crop_scale \(--crop-scale\) must be two fractions"),
    (["--scale-jitter", "0.5", "1"], r"scale_jitter \(--scale-jitter\) must be"),
    (["--rand-augment", "bogus"], r"rand_augment \(--rand-augment\): timm cannot read 'bogus'"),
    (["--blr", "-1"], r"blr \(--blr\) must be >= 0"),
    (["--epochs", "0"], r"epochs \(--epochs\) must be >= 1"),
])
def test_bad_recipe_values_are_refused_in_one_line(flags, message, capsys):
    import re
    try:
        code = cli.main(["train", "--train-list", "x.txt", "--num-classes", "2", *flags])
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err
    assert code not in (0, None) and len(err.strip().splitlines()) == 1 and re.search(message, err), err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    train_list, val_list = make_synthetic(root, 8, 4, num_frames=8, size=32, seed=4)
    return dict(train_list=train_list, val_list=val_list, data_root=root)


def test_a_recipe_run_trains_its_epochs_and_logs_the_data_wait(data, tmp_path):
    config = TrainConfig(recipe="authors-ssv2", **data, **TINY, num_classes=2, num_frames=4, batch_size=2,
                         amp="none", epochs=2, warmup_epochs=1, log_every=2, output_dir=str(tmp_path))
    result = train(config)
    assert result["steps_done"] == result["config"].steps == 8   # 2 epochs of 8 videos in batches of 2
    assert result["config"].lr == pytest.approx(1e-3 * 2 / 256)
    records = [r for r in result["history"] if "loss" in r]
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    for record in records:
        assert 0 <= record["data_wait_s"] <= record["interval_s"] and 0 <= record["data_wait_fraction"] <= 1
    saved = json.loads((tmp_path / "adapters" / "train_config.json").read_text())
    assert (saved["steps"], saved["epochs"], saved["recipe"]) == (8, 2, "authors-ssv2")


def test_data_wait_counts_the_time_spent_waiting_for_batches():
    import time

    def slow():
        while True:
            time.sleep(0.02)
            yield 1
    batches = DataWait(slow())
    for _ in range(5):
        next(batches)
    assert 0.09 < batches.seconds < 1


def test_a_starving_accelerator_is_warned_about_once_naming_the_remedies(tmp_path):
    config = TrainConfig(num_workers=3, data_root=str(tmp_path))
    starving = dict(data_wait_fraction=0.5, data_wait_s=5.0, interval_s=10.0)
    fed = dict(starving, data_wait_fraction=0.05)
    check = StarvationCheck(config, torch.device("cuda"), enabled=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check.check(10, 10, starving)   # the first interval includes the loader's start: never warned
        check.check(20, 10, fed)
        check.check(30, 10, starving)
        check.check(40, 10, starving)   # once per run
        StarvationCheck(config, torch.device("cpu"), enabled=True).check(20, 10, starving)
        for step in (10, 20):
            StarvationCheck(config, torch.device("cuda"), enabled=False).check(step, 10, starving)   # rank > 0
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "steps 21-30 waited for data 50%" in message and "--num-workers (now 3)" in message
    assert "st-adapter-fast prepare" in message


def test_a_checkpoint_from_before_the_recipe_fields_resumes(data, tmp_path):
    config = TrainConfig(**dict(data, val_list=None), **TINY, num_classes=2, num_frames=4, batch_size=2, steps=2,
                         warmup_steps=1, save_every=1, stop_at=1, output_dir=str(tmp_path))
    train(config)
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    for name in ("recipe", "train_crop", "crop_scale", "scale_jitter", "rand_augment", "interpolation", "blr",
                 "epochs", "warmup_epochs"):   # what a checkpoint of the previous version lacks
        del state["config"][name]
    torch.save(state, path)
    assert train(dataclasses.replace(config, stop_at=None))["steps_done"] == 2
