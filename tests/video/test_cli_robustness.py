"""The command line and the training run as a careless or hostile user meets them: every bad value refused at
start in one line naming its flag (before anything is written), training that cannot go silently wrong
(non-finite steps stop the run or are skipped, a run that read no video fails, output folders checked first),
and a run folder whose two records of the model cannot disagree unnoticed."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from st_adapter_fast import cli
from st_adapter_fast.video.synthetic import make_synthetic
from st_adapter_fast.video.train import NonFiniteLossError, TrainConfig, evaluate_adapters, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--model", "vit_tiny_patch16_224", "--input-size", "32", "--model-kwargs", '{"patch_size": 8, "depth": 1}',
        "--adapter-channels", "8", "--num-frames", "4", "--batch-size", "2", "--num-workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    train_list, val_list = make_synthetic(root, 4, 2, num_frames=8, size=32, seed=5)
    return dict(train_list=train_list, val_list=val_list, data_root=root)


def data_flags(data):
    return ["--train-list", data["train_list"], "--val-list", data["val_list"], "--data-root", data["data_root"],
            "--num-classes", "2"]


def tiny_config(data, output_dir, **changes):
    values = dict(data, model="vit_tiny_patch16_224", input_size=32, model_kwargs=dict(patch_size=8, depth=1),
                  num_classes=2, num_frames=4, adapter_channels=8, batch_size=2, steps=3, warmup_steps=1, lr=1e-2,
                  num_workers=0, output_dir=str(output_dir), log_every=1, progress=False)
    return TrainConfig(**dict(values, **changes))


def one_error_line(capsys, code):
    assert code not in (0, None)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("st-adapter-fast: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def run_main(args):
    try:
        return cli.main(args)
    except SystemExit as exit:   # argparse's own checks
        return exit.code


# ------------------------------------------------------------ values refused at start, naming the flag

@pytest.mark.parametrize("flags, expected", [
    (["--lr", "inf"], r"lr \(--lr\) must be a finite number"),
    (["--lr", "nan"], r"lr \(--lr\) must be a finite number"),
    (["--weight-decay", "nan"], r"--weight-decay\) must be a finite number"),
    (["--dropout", "1"], r"dropout \(--dropout\) must be < 1"),
    (["--seed", "-1"], r"seed \(--seed\) must be >= 0"),
    (["--seed", str(2 ** 40)], r"seed \(--seed\) must be <="),
    (["--device", "foo"], r"--device\) must be cpu, cuda or cuda:N, got 'foo'"),
    (["--device", "mps"], r"--device\) must be cpu, cuda or cuda:N"),
    (["--model-kwargs", '{"pretrained": true}'], r"--model-kwargs\).*'pretrained' is not allowed"),
    (["--model-kwargs", '{"checkpoint_path": "other.pth"}'], r"--model-kwargs\).*'checkpoint_path' is not allowed"),
    (["--model-kwargs", '{"device": "meta"}'], r"--model-kwargs\).*'device' is not allowed"),
    (["--model-kwargs", '{"img_size": 64}'], r"img_size 64 differs from input_size \(--input-size\) 224"),
    (["--backbone-checkpoint", "vit.safetensors"], r"backbone_checkpoint \(--backbone-checkpoint\) not found"),
    (["--authors-checkpoint", "."], r"authors_checkpoint \(--authors-checkpoint\) \. is a folder"),
])
def test_train_refuses_bad_values_in_one_line_naming_the_flag(flags, expected, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_main(["train", "--train-list", "x.txt", "--num-classes", "2", "--output-dir", str(out), *flags])
    assert re.search(expected, one_error_line(capsys, code))
    assert not out.exists()


def test_the_same_checks_hold_for_a_config_file_and_the_api(tmp_path):
    (tmp_path / "run.json").write_text('{"lr": Infinity}')
    (tmp_path / "run.yaml").write_text("lr: .nan\n")
    for name in ("run.json", "run.yaml"):
        with pytest.raises(ValueError, match=r"lr \(--lr\) must be a finite number"):
            cli.main(["train", "--config", str(tmp_path / name), "--debug"])
    with pytest.raises(ValueError, match=r"device \(--device\)"):
        TrainConfig(device="gpu")


def test_a_config_file_with_a_byte_order_mark_is_read(tmp_path):
    from st_adapter_fast.video.train import load_config_file
    (tmp_path / "run.json").write_text('{"lr": 0.25}', encoding="utf-8-sig")
    (tmp_path / "run.yaml").write_text("lr: 0.25\n", encoding="utf-16")
    assert load_config_file(str(tmp_path / "run.json")) == load_config_file(str(tmp_path / "run.yaml")) == {"lr": 0.25}


@pytest.mark.parametrize("flags, expected", [
    (["--num-frames", "0"], "argument --num-frames: must be >= 1, got 0"),
    (["--size", "0"], "argument --size: must be >= 1, got 0"),
    (["--size", "31"], "size must be even"),
    (["--num-train", "-2"], "argument --num-train: must be >= 1"),
    (["--num-val", "3"], "--num-val must be even"),
    (["--seed", "-1"], "argument --seed: must be >= 0"),
    (["--num-frames", "many"], "argument --num-frames: expected an integer >= 1, got 'many'"),
])
def test_make_synthetic_refuses_bad_sizes_before_writing_anything(flags, expected, tmp_path, capsys):
    out = tmp_path / "data"
    code = run_main(["make-synthetic", str(out), "--num-train", "2", "--num-val", "2", *flags])
    assert expected in one_error_line(capsys, code)
    assert not out.exists()


def test_make_synthetic_in_python_names_the_argument(tmp_path):
    with pytest.raises(ValueError, match="num_frames must be an int >= 1, got 0"):
        make_synthetic(str(tmp_path / "a"), 2, 2, num_frames=0)
    with pytest.raises(TypeError, match="size must be an int"):
        make_synthetic(str(tmp_path / "a"), 2, 2, size=32.0)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("args, expected", [
    (["bench", "--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
    (["bench", "--e2e-only", "--e2e-clips", "-1"], "argument --e2e-clips: must be >= 1"),
    (["bench", "--e2e-only", "--e2e-variants", "fastest"], "--e2e-variants: unknown ['fastest']"),
    (["bench", "--quick", "--out", "."], "--out . is a folder"),
    (["bench", "--e2e-only", "--e2e-compile-backend", "inductr"], "--e2e-compile-backend: unknown torch.compile "
                                                                  "backend 'inductr'; known: aot_eager,"),
    (["demo", "--steps", "0"], "argument --steps: must be >= 1"),
    (["demo", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["demo", "--num-workers", "-1"], "argument --num-workers: must be >= 0"),
    (["demo", "--lr", "nan"], "lr (--lr) must be a finite number"),
    (["demo", "--results", "/proc/none/curves"], "--results' folder /proc/none is not a writable folder"),
])
def test_bench_and_demo_options_are_checked_before_any_work(args, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = run_main(args + (["--out", "demo"] if args[0] == "demo" else []))
    assert expected in one_error_line(capsys, code)
    assert not os.listdir(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_check_on_a_missing_gpu_names_the_flag(capsys):
    assert "--device cuda: no CUDA device" in one_error_line(capsys, run_main(["check", "--device", "cuda"]))


def test_a_config_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "run.yaml")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "st_adapter_fast.cli", "train", "--config", "run.yaml"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 1 and "run.yaml is a FIFO (named pipe), not a regular file" in result.stderr


# ---------------------------------------------------------------- output folders checked before training

def test_an_output_dir_that_cannot_be_written_fails_before_training(data, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code = run_main(["train", *data_flags(data), *TINY, "--steps", "1", "--output-dir", str(tmp_path / "file" / "run")])
    assert re.search(r"output_dir \(--output-dir\) .*file/run is not a writable folder", one_error_line(capsys, code))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "adapters").write_text("not a folder")   # save_adapters would fail at the very end
    code = run_main(["train", *data_flags(data), *TINY, "--steps", "1", "--output-dir", str(tmp_path / "run")])
    assert "adapters is in the way" in one_error_line(capsys, code)
    assert sorted(os.listdir(tmp_path / "run")) == ["adapters"]   # no checkpoint, no log: nothing ran


def test_a_damaged_checkpoint_is_named_when_resuming(data, tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"half a checkpoint")
    code = run_main(["train", *data_flags(data), *TINY, "--steps", "1", "--output-dir", str(tmp_path)])
    line = one_error_line(capsys, code)
    assert "checkpoint.pt: not a readable checkpoint" in line and "--no-resume" in line


# ----------------------------------------------- training that cannot go silently wrong: non-finite steps

def test_a_diverging_run_stops_naming_the_step_and_the_checkpoint_kept(data, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_main(["train", *data_flags(data), *TINY, "--steps", "4", "--warmup-steps", "1", "--lr", "1e30",
                     "--save-every", "1", "--output-dir", str(out)])
    line = one_error_line(capsys, code)
    step = int(re.search(r"error: step (\d+): ", line).group(1))
    assert step >= 2 and "non-finite" in line and "Lower --lr" in line, line
    assert f"the checkpoint of step {step - 1} is kept in {out / 'checkpoint.pt'}" in line
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["position"]["step"] == step - 1
    assert all(torch.isfinite(t).all() for t in checkpoint["trainable"].values())
    assert not (out / "adapters").exists()


def nan_loss_on_calls(monkeypatch, calls):
    """F.cross_entropy gives nan on these (1-based) calls, as a loss that overflowed would."""
    import torch.nn.functional as F
    real, count = F.cross_entropy, [0]

    def cross_entropy(*args, **kwargs):
        count[0] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if count[0] in calls else loss
    monkeypatch.setattr(F, "cross_entropy", cross_entropy)


def test_a_nan_loss_stops_the_run_before_its_step_is_applied(data, tmp_path, monkeypatch):
    nan_loss_on_calls(monkeypatch, {3})
    with pytest.raises(NonFiniteLossError, match=r"^step 3: the training loss or its gradients are not finite.*"
                       r"the checkpoint of step 2 is kept.*--skip-nonfinite-steps"):
        train(tiny_config(data, tmp_path, steps=4, save_every=1))
    assert not (tmp_path / "adapters").exists()


def test_skip_nonfinite_steps_skips_them_and_says_so(data, tmp_path, monkeypatch):
    nan_loss_on_calls(monkeypatch, {2})
    with pytest.warns(UserWarning, match=r"step 2: the loss or its gradients are not finite \(nan or inf\): step "
                      r"skipped \(--skip-nonfinite-steps; 1 skipped so far\)"):
        result = train(tiny_config(data, tmp_path, steps=3, skip_nonfinite_steps=True))
    assert result["steps_done"] == 3 and result["skipped_steps"] == 1
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines() if "loss" in line]
    assert [record.get("skipped_steps", 0) for record in log] == [0, 1, 1]
    assert log[1]["loss"] is None                 # the skipped step's window has no loss
    assert (tmp_path / "adapters" / "adapters.safetensors").exists()   # the good steps' weights, finite


# --------------------------------------------------------------- a run that read no video does not pass

@pytest.fixture(scope="module")
def unreadable(tmp_path_factory):
    root = tmp_path_factory.mktemp("unreadable")
    for i in range(4):
        (root / f"v{i}.mp4").write_bytes(b"not a video")
    (root / "list.txt").write_text("".join(f"v{i}.mp4 {i % 2}\n" for i in range(4)))
    return dict(list=str(root / "list.txt"), root=str(root))


def test_a_run_in_which_every_video_is_unreadable_exits_non_zero(unreadable, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_main(["train", "--train-list", unreadable["list"], "--data-root", unreadable["root"],
                     "--num-classes", "2", *TINY, "--steps", "5", "--output-dir", str(out)])
    line = one_error_line(capsys, code)
    assert re.search(r"no video of .*list.txt could be read \(4 listed; first unreadable: .*v\d.mp4", line), line
    assert "nothing was trained; stopped at step 2" in line     # one epoch: 4 videos, 2 per step
    assert not (out / "adapters").exists()


def test_an_eval_in_which_every_video_is_unreadable_exits_non_zero(data, unreadable, tmp_path, capsys):
    train(tiny_config(data, tmp_path, steps=1, val_list=None))
    code = run_main(["eval", str(tmp_path / "adapters"), "--val-list", unreadable["list"], "--data-root",
                     unreadable["root"], "--num-workers", "0", "--no-progress"])
    assert "no video of" in one_error_line(capsys, code)


# ------------------------------------------------------ one record of the model per run folder

def test_eval_and_from_pretrained_build_the_model_adapter_config_records(data, tmp_path):
    import st_adapter_fast as saf
    trained = train(tiny_config(data, tmp_path, steps=2))["model"].eval()
    clip = torch.randn(1, 3, 4, 32, 32)
    folder = tmp_path / "adapters"
    assert torch.equal(saf.from_pretrained(folder)(clip), trained(clip))
    assert evaluate_adapters(str(folder), dict(num_workers=0, progress=False))["videos"] == 2
    config_file = folder / "train_config.json"
    run = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(dict(run, seed=7)))   # another random backbone, without a word before
    with pytest.raises(ValueError, match=r"adapter_config.json and train_config.json disagree on the model: seed"):
        evaluate_adapters(str(folder), dict(num_workers=0, progress=False))


# ----------------------------------- model and device flags refused before output_dir is touched

def folder_state(root):
    """{relative path: bytes (None for a folder)} of everything under `root`."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("flags, expected", [
    (["--adapter-layers", "99"], r"adapter_layers \(--adapter-layers\) \[99\]: the model has 1 blocks"),
    (["--adapter-layers", "-1"], r"adapter_layers \(--adapter-layers\) must be >= 0, got -1"),
    (["--adapter-layers", "0", "0"], r"adapter_layers \(--adapter-layers\) names 0 more than once"),
    (["--device", "cuda:99"], r"device \(--device\) 'cuda:99': (no CUDA device is available|this machine has)"),
    (["--lr", "1e300"], r"lr \(--lr\) must be a finite number"),
    (["--compile-mode", "max-autotune"], r"compile_mode \(--compile-mode\) max-autotune needs --compile"),
    (["--model-kwargs", '{"patch_size": 8, "depth": 0}'], r"model \(--model\) .* has no blocks to put adapters in"),
    (["--input-size", "4"], r"input_size \(--input-size\) 4 cannot run through model \(--model\) vit_tiny"),
    pytest.param(["--backend", "cuda"], r"backend \(--backend\) 'cuda' cannot run this input",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
])
def test_model_and_device_flags_are_refused_before_output_dir_is_touched(flags, expected, data, tmp_path, capsys):
    new = tmp_path / "new"
    code = run_main(["train", *data_flags(data), *TINY, "--steps", "1", "--output-dir", str(new), *flags])
    assert re.search(expected, one_error_line(capsys, code))
    assert not new.exists()
    earlier = tmp_path / "earlier"   # an earlier run's folder: left exactly as it was
    (earlier / "adapters").mkdir(parents=True)
    (earlier / "adapters" / "adapters.safetensors").write_bytes(b"the earlier run's weights")
    (earlier / "checkpoint.pt").write_bytes(b"the earlier run's checkpoint")
    before = folder_state(earlier)
    code = run_main(["train", *data_flags(data), *TINY, "--steps", "1", "--output-dir", str(earlier), *flags])
    assert re.search(expected, one_error_line(capsys, code))
    assert folder_state(earlier) == before


def test_a_run_folder_with_results_but_no_checkpoint_is_not_overwritten(data, tmp_path, capsys):
    run_main(["train", *data_flags(data), *TINY, "--steps", "1", "--output-dir", str(tmp_path)])
    (tmp_path / "checkpoint.pt").unlink()   # kept the results, dropped the checkpoint
    capsys.readouterr()
    before = folder_state(tmp_path)
    code = run_main(["train", *data_flags(data), *TINY, "--steps", "1", "--adapter-channels", "4",
                     "--output-dir", str(tmp_path)])
    line = one_error_line(capsys, code)
    assert "output_dir (--output-dir)" in line and "adapters/ and metrics.json but no checkpoint.pt" in line
    assert "--no-resume" in line and folder_state(tmp_path) == before


@pytest.mark.parametrize("name, text", [("run.json", '{"lr": 1, "lr": 0.001}'), ("run.yaml", "lr: 1\nlr: 0.001\n"),
                                        ("run.yaml", "model_kwargs:\n  depth: 1\n  depth: 2\n")])
def test_a_config_file_that_gives_a_key_twice_is_refused(name, text, tmp_path, capsys):
    (tmp_path / name).write_text(text)
    code = run_main(["train", "--config", str(tmp_path / name), "--output-dir", str(tmp_path / "run")])
    assert re.search(rf"{name}: .*the key (lr|depth) is given more than once", one_error_line(capsys, code))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- prepare, make-synthetic, bench

@pytest.fixture(scope="module")
def store(data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("stores") / "store")
    assert run_main(["prepare", data["train_list"], "--data-root", data["data_root"], "--out", out,
                     "--num-workers", "0", "--no-progress"]) == 0
    return out


@pytest.mark.parametrize("flags, expected", [
    (["--fps", "inf"], "--fps must be a finite number > 0, got inf"),
    (["--num-workers", "-1"], "argument --num-workers: must be >= 0"),
])
def test_prepare_refuses_bad_values_naming_the_flag(flags, expected, data, tmp_path, capsys):
    out = tmp_path / "store"
    code = run_main(["prepare", data["train_list"], "--data-root", data["data_root"], "--out", str(out), *flags])
    assert expected in one_error_line(capsys, code)
    assert not out.exists()


def test_prepare_names_what_is_wrong_with_its_folders(data, store, unreadable, tmp_path, capsys):
    prepare = ["prepare", data["train_list"], "--num-workers", "0", "--no-progress"]
    (tmp_path / "file").write_text("mine")
    code = run_main([*prepare, "--data-root", data["data_root"], "--out", str(tmp_path / "file")])
    assert "file is a file, not a folder" in one_error_line(capsys, code)
    code = run_main([*prepare, "--data-root", store, "--out", str(tmp_path / "other")])
    assert "store is a frame store: prepare reads the videos themselves" in one_error_line(capsys, code)
    code = run_main(["prepare", unreadable["list"], "--data-root", unreadable["root"], "--out", str(tmp_path / "s"),
                     "--num-workers", "0", "--no-progress"])
    assert re.search(r"none of the 4 videos of .*list.txt could be decoded", one_error_line(capsys, code))


@pytest.mark.parametrize("damage", [b"[]", b"{half"])
def test_a_damaged_store_file_is_named(damage, data, store, tmp_path, capsys):
    import shutil
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    (copy / "index.json").write_bytes(damage)
    code = run_main(["train", "--train-list", data["train_list"], "--data-root", str(copy), "--num-classes", "2",
                     *TINY, "--steps", "1", "--output-dir", str(tmp_path / "run")])
    assert re.search(r"store/index.json: .*the store is damaged", one_error_line(capsys, code))
    (copy / "store.json").write_bytes(damage)
    code = run_main(["prepare", data["train_list"], "--data-root", data["data_root"], "--out", str(copy)])
    assert re.search(r"store/store.json: .*the store is damaged", one_error_line(capsys, code))


@pytest.mark.parametrize("args, expected", [
    (["--size", "100000"], "--size must be <= 512"),
    (["--num-frames", "10000000"], "--num-frames must be <= 1024"),
])
def test_make_synthetic_refuses_sizes_it_cannot_render(args, expected, tmp_path, capsys):
    code = run_main(["make-synthetic", str(tmp_path / "data"), "--num-train", "2", "--num-val", "2", *args])
    assert expected in one_error_line(capsys, code)
    assert not (tmp_path / "data").exists()


def test_make_synthetic_refuses_an_output_that_is_not_a_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "is empty" in one_error_line(capsys, run_main(["make-synthetic", "", "--num-train", "2", "--num-val", "2"]))
    (tmp_path / "file").write_text("mine")
    code = run_main(["make-synthetic", "file", "--num-train", "2", "--num-val", "2"])
    assert "file is not a writable folder" in one_error_line(capsys, code)
    assert os.listdir(tmp_path) == ["file"] and (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("args, expected", [
    (["--e2e"], "--e2e: not an option of the data mode"),
    (["--quick", "--configs", "small"], "--quick, --configs: not an option of the data mode"),
    (["--clips", "0"], "argument --clips: must be >= 1, got 0"),
    (["--num-workers", "-1"], "argument --num-workers: must be >= 0"),
])
def test_bench_data_refuses_options_it_would_ignore_or_cannot_use(args, expected, data, capsys):
    code = run_main(["bench", "--data", data["train_list"], "--data-root", data["data_root"], *args])
    assert code == 2 and expected in one_error_line(capsys, code)


def test_bench_refuses_data_options_without_data(capsys):
    code = run_main(["bench", "--quick", "--clips", "5"])
    assert code == 2 and "--clips: only an option of the data mode" in one_error_line(capsys, code)


@pytest.mark.parametrize("text", ["{half", "[]"])
def test_bench_refuses_an_out_file_it_could_not_merge_before_timing(text, tmp_path, capsys):
    out = tmp_path / "results.json"
    out.write_text(text)
    code = run_main(["bench", "--quick", "--rounds", "1", "--no-progress", "--out", str(out)])
    assert re.search(r"--out .*results.json: not a results file", one_error_line(capsys, code))
    assert out.read_text() == text and capsys.readouterr().out == ""   # nothing was timed


def test_bench_data_that_reads_no_video_exits_non_zero(unreadable, tmp_path, capsys):
    out = tmp_path / "data.json"
    code = run_main(["bench", "--data", unreadable["list"], "--data-root", unreadable["root"], "--clips", "2",
                     "--input-size", "32", "--out", str(out)])
    assert re.search(r"2 of 2 videos of --data .*list.txt could not be read .*nothing to time",
                     one_error_line(capsys, code))
    assert not out.exists()


def test_eval_of_a_run_folder_points_to_its_adapters_and_fp16_warns_nothing_of_torch(data, tmp_path, capsys):
    # fp16 on the CPU: the GradScaler skips its first steps (inf gradients at its initial scale), and the
    # schedule still advances, on purpose: torch's "lr_scheduler.step() before optimizer.step()" is noise
    assert run_main(["train", *data_flags(data), *TINY, "--steps", "2", "--amp", "fp16",
                     "--output-dir", str(tmp_path)]) == 0
    assert "lr_scheduler" not in capsys.readouterr().err
    code = run_main(["eval", str(tmp_path), "--num-workers", "0"])
    assert f"is a run's output_dir: give {tmp_path / 'adapters'}" in one_error_line(capsys, code)
    code = run_main(["eval", str(tmp_path / "metrics.json")])
    assert "metrics.json is a file" in one_error_line(capsys, code)
