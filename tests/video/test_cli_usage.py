"""The command line as a user meets it: one-line errors without tracebacks (--debug shows them), typed and
validated config values, help texts, flag names, warnings, and what a run prints."""
import json
import os
import subprocess
import sys

import pytest

from st_adapter_fast import cli
from st_adapter_fast.video.synthetic import make_synthetic
from st_adapter_fast.video.train import TrainConfig, coerce_config_values, load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--model", "vit_tiny_patch16_224", "--input-size", "32", "--model-kwargs", '{"depth": 1}',
        "--adapter-channels", "8", "--num-frames", "4", "--batch-size", "2", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    train_list, val_list = make_synthetic(root, 4, 2, num_frames=8, size=32, seed=3)
    return dict(train=train_list, val=val_list, root=root)


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "st_adapter_fast.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("case, expected", [
    ("missing list file", "video list file not found: nope.txt"),
    ("unknown model", "unknown timm model 'vit_nonexistent'"),
    ("not a ViT", "'resnet18' cannot be created.*need a timm VisionTransformer"),
    ("missing --num-classes", r"train needs num_classes \(--num-classes\)"),
])
def test_user_mistakes_give_one_error_line_and_no_traceback(case, expected, data, tmp_path):
    import re
    data_flags = ["--train-list", data["train"], "--data-root", data["root"], "--output-dir", str(tmp_path)]
    args = {"missing list file": ["--train-list", "nope.txt", "--num-classes", "2"],
            "unknown model": data_flags + ["--num-classes", "2", "--model", "vit_nonexistent"],
            "not a ViT": data_flags + ["--num-classes", "2", "--batch-size", "2", "--model", "resnet18"],
            "missing --num-classes": data_flags}[case]
    result = run_cli("train", *args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("st-adapter-fast: error: ")]
    assert len(errors) == 1 and re.search(expected, errors[0]), result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("train", "--train-list", "nope.txt", "--num-classes", "2", "--debug", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr and "nope.txt" in result.stderr


@pytest.mark.parametrize("args, expected", [
    (["train", "--eval-crops", "2"], "--eval-crops: invalid choice: 2"),
    (["train", "--placement", "ffn"], "--placement: invalid choice: 'ffn'"),
    (["train", "--model-kwargs", "{depth"], "--model-kwargs: not JSON"),
    (["train", "--train-list", "x", "--num-classes", "2", "--kernel-size", "2", "1", "1"], "kernel_size.*odd"),
    (["train", "--train-list", "x", "--num-classes", "2", "--lr", "-1"], r"lr \(--lr\) must be >= 0"),
    (["train", "--num-classes", "2"], r"train needs train_list \(--train-list\)"),
    (["eval", "nowhere", "--eval-crops", "3"], "nowhere/train_config.json not found"),
    (["trian"], "invalid choice: 'trian'"),
    (["train", "--train-list", "x", "--num-classes", "2", "--model", "hf:nope"], "hf:nope: not a local folder"),
    (["train", "--train-list", "x", "--num-classes", "2", "--model", "open_clip:nope"], "open_clip:nope: unknown"),
    (["train", "--grad-checkpointing", "some"], "--grad-checkpointing: invalid choice: 'some'"),
    (["train", "--compile-mode", "fast"], "--compile-mode: invalid choice: 'fast'"),
])
def test_bad_values_are_refused_at_start_up_in_one_line(args, expected, capsys):
    import re
    try:
        code = cli.main(args)
    except SystemExit as exit:   # argparse's own checks
        code = exit.code
    assert code not in (0, None)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("st-adapter-fast: error: ")
    assert re.search(expected, err), err


def test_config_file_values_are_typed_or_named(tmp_path):
    good = tmp_path / "run.yaml"
    good.write_text("lr: 3e-3\nsteps: '20'\nplacement: mlp\nflip: no\nkernel_size: [3, 1, 1]\nnum_classes: 2\n")
    config = TrainConfig.from_dict(load_config_file(str(good)), source=str(good))
    assert (config.lr, config.steps, config.placement, config.flip) == (0.003, 20, ["mlp"], False)
    bad = tmp_path / "bad.yaml"
    for text, expected in [("lr: fast\n", "bad.yaml: lr: expected a number, got 'fast'"),
                           ("steps: 2.5\n", "bad.yaml: steps: expected an integer, got 2.5"),
                           ("placement: {a: 1}\n", "bad.yaml: placement: expected a list of a string"),
                           ("model_kwargs: [1]\n", "bad.yaml: model_kwargs: expected a mapping"),
                           ("- lr\n", "bad.yaml: expected a mapping of config keys"),
                           ("lr: [\n", "bad.yaml: not valid YAML")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace("[", r"\[")):
            TrainConfig.from_dict(load_config_file(str(bad)), source=str(bad))
    assert coerce_config_values({"seed": "7", "dropout": 0}, "x") == {"seed": 7, "dropout": 0.0}
    assert TrainConfig(lr="1e-3").lr == 1e-3   # the API converts too
    with pytest.raises(ValueError, match=r"eval_crops \(--eval-crops\) must be one of 1, 3"):
        TrainConfig(eval_crops=2)
    with pytest.raises(ValueError, match="unknown timm model"):
        TrainConfig(model="vit_nonexistent")


def test_help_shows_defaults_and_eval_lists_only_its_flags(capsys):
    for command in (["train"], ["eval"], ["make-synthetic"], ["demo"], ["bench"]):
        with pytest.raises(SystemExit):
            cli.main(command + ["--help"])
        out = " ".join(capsys.readouterr().out.split())   # whatever the wrapping
        assert "(default: " in out, command
        if command == ["train"]:
            assert "--lr LR" in out and "(default: 0.0003)" in out and "the cores available" in out
            assert "compiled kernels of the" in out   # the backend choice, as the README tells it
        if command == ["eval"]:
            assert "--val-list" in out and "--eval-crops" in out
            assert not any(flag in out for flag in ("--lr", "--steps", "--train-list", "--adapter-channels"))
        if command in (["make-synthetic"], ["demo"]):
            assert "--num-" in out and "--frames " not in out and "--workers " not in out


def test_old_flag_spellings_still_work(tmp_path):
    args = cli.build_parser().parse_args(["make-synthetic", str(tmp_path), "--frames", "4"])
    assert args.num_frames == 4
    assert cli.build_parser().parse_args(["demo", "--workers", "0"]).num_workers == 0


def test_grad_checkpointing_takes_a_mode_and_its_former_boolean_spellings(tmp_path):
    """none | full | selective; the former boolean flag and config values mean full / none."""
    parse = lambda *flags: TrainConfig.from_dict(
        {k: v for k, v in vars(cli.build_parser().parse_args(["train", *flags])).items()
         if k in ("grad_checkpointing", "compile", "compile_mode")}).grad_checkpointing
    assert parse() == "none" and parse("--grad-checkpointing") == "full"
    assert parse("--grad-checkpointing", "selective") == "selective" and parse("--no-grad-checkpointing") == "none"
    config_file = tmp_path / "run.yaml"
    for text, expected in [("grad_checkpointing: true\n", "full"), ("grad_checkpointing: false\n", "none"),
                           ("grad_checkpointing: selective\n", "selective")]:
        config_file.write_text(text)
        assert TrainConfig.from_dict(load_config_file(str(config_file))).grad_checkpointing == expected
    assert TrainConfig(grad_checkpointing=True).grad_checkpointing == "full"
    with pytest.raises(ValueError, match=r"grad_checkpointing \(--grad-checkpointing\) must be one of none, full, "):
        TrainConfig(grad_checkpointing="half")
    args = cli.build_parser().parse_args(["train", "--compile", "--compile-mode", "reduce-overhead"])
    assert (args.compile, args.compile_mode) == (True, "reduce-overhead")


def test_num_workers_defaults_to_the_cores_available():
    assert TrainConfig().num_workers == min(4, len(os.sched_getaffinity(0)))


def test_train_warns_and_reports_what_happened(data, tmp_path, capsys):
    out_dir = tmp_path / "run"
    args = ["train", "--train-list", data["train"], "--val-list", data["val"], "--data-root", data["root"],
            "--num-classes", "2", *TINY, "--steps", "2", "--warmup-steps", "5", "--eval-every", "1",
            "--save-every", "1", "--output-dir", str(out_dir)]
    assert cli.main(args + ["--stop-at", "1"]) == 0
    captured = capsys.readouterr()
    assert "randomly initialised" in captured.err and "never leaves its linear warm-up" in captured.err
    assert "step 1: top-1" in captured.out                       # periodic evals are printed
    assert "stopped at step 1 of 2" in captured.out
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "resumed from step 1 of 2" in out and "final eval: top-1" in out
    assert f"run files in {out_dir}: checkpoint.pt, log.jsonl, metrics.json, adapters/" in out
    assert f"st_adapter_fast.from_pretrained('{out_dir / 'adapters'}')" in out
    saved = json.loads((out_dir / "adapters" / "train_config.json").read_text())
    assert all(os.path.isabs(saved[k]) for k in ("train_list", "val_list", "data_root", "output_dir"))
    steps_logged = lambda: [json.loads(line)["step"] for line in (out_dir / "log.jsonl").read_text().splitlines()]
    assert steps_logged() == [1, 1, 2, 2]   # train + eval of step 1, then of step 2 after the resume

    assert cli.main(args + ["--no-resume"]) == 0   # starts clean: the old log is gone, not appended to
    assert "deleted the previous run's checkpoint.pt, log.jsonl, metrics.json, adapters/" in capsys.readouterr().out
    assert steps_logged() == [1, 2, 2]      # one run's eval at 1, train and eval at 2: nothing appended


def test_train_and_eval_a_hugging_face_backbone_from_its_model_spec(data, tmp_path, capsys):
    """--model takes the library's prefix; --input-size and --model-kwargs become the transformers config's
    fields; --grad-checkpointing uses transformers' own switch."""
    pytest.importorskip("transformers")
    hf = ["--model", "hf:dinov2", "--model-kwargs", json.dumps(dict(hidden_size=32, num_hidden_layers=1,
                                                                    num_attention_heads=2, patch_size=8, mlp_ratio=2))]
    args = ["train", "--train-list", data["train"], "--data-root", data["root"], "--num-classes", "2",
            *TINY, *hf, "--steps", "1", "--warmup-steps", "1", "--grad-checkpointing",
            "--output-dir", str(tmp_path / "run")]
    assert cli.main(args) == 0
    capsys.readouterr()
    model = __import__("st_adapter_fast").from_pretrained(tmp_path / "run" / "adapters")
    assert type(model.backbone).__name__ == "Dinov2Model" and model.backbone.config.image_size == 32


def test_a_relative_model_spec_trains_and_evaluates(data, tmp_path, capsys, monkeypatch):
    """`--model hf:<config folder>` relative to the working directory, and timm's `timm:` prefix: eval reads the
    run as train recorded it (the model's record keeps one spelling of the spec)."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=8,
                              mlp_ratio=2, image_size=32).save_pretrained("config")
    for run, spec, kwargs in (("hf", "hf:config", "{}"), ("timm", "timm:vit_tiny_patch16_224", '{"depth": 1}')):
        assert cli.main(["train", "--train-list", data["train"], "--data-root", data["root"], "--num-classes", "2",
                         *TINY, "--model", spec, "--model-kwargs", kwargs, "--steps", "1", "--warmup-steps", "1", "--output-dir", run]) == 0
        assert cli.main(["eval", os.path.join(run, "adapters"), "--val-list", data["val"],
                         "--data-root", data["root"], "--no-progress"]) == 0
    capsys.readouterr()


def test_ctrl_c_says_the_checkpoint_is_kept_and_how_to_resume(data, tmp_path, capsys, monkeypatch):
    from st_adapter_fast.video import train as train_module
    args = ["train", "--train-list", data["train"], "--data-root", data["root"], "--num-classes", "2", *TINY,
            "--steps", "3", "--warmup-steps", "1", "--save-every", "1", "--output-dir", str(tmp_path)]
    assert cli.main(args + ["--stop-at", "1"]) == 0

    def interrupted(config):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_module, "train", interrupted)
    assert cli.main(args + ["--no-resume"]) == 130
    err = capsys.readouterr().err
    assert "the checkpoint of step 1 is kept" in err and "Traceback" not in err
    resume = err.split("Resume with the same command: ")[1].strip()
    assert resume.startswith("st-adapter-fast train ") and "--no-resume" not in resume and "--save-every 1" in resume


def run_without(modules, *args, cwd=None):
    """The CLI in a fresh interpreter where `modules` cannot be imported, as without the extra that installs them."""
    code = (f"import sys\nsys.modules.update(dict.fromkeys({tuple(modules)!r}))\n"
            f"from st_adapter_fast.cli import main\nsys.exit(main({list(args)!r}))")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("command, missing, says", [
    (["make-synthetic", "out"], ("av",), "make-synthetic needs av, which is not installed"),
    (["train", "--train-list", "x.txt", "--num-classes", "2"], ("yaml", "timm"), "train needs pyyaml, timm, which are"),
    (["eval", "runs/a/adapters"], ("tqdm",), "eval needs tqdm"),
    (["demo", "--out", "out"], ("matplotlib",), "demo needs matplotlib"),
])
def test_a_command_without_its_extra_says_which_to_install(command, missing, says, tmp_path):
    result = run_without(missing, *command, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"st-adapter-fast: error: {says}"), result.stderr
    assert lines[0].endswith('pip install "st-adapter-fast[video]"'), result.stderr
    assert not list(tmp_path.iterdir())   # nothing ran
