"""Training: exact resume, DDP (2 gloo processes) against one process, the CLI, eval with unreadable
videos, config errors, and a tiny run of the demo."""
import dataclasses
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from st_adapter_fast import cli
from st_adapter_fast.integrations.checkpointing import checkpointing_mode
from st_adapter_fast.video.data import VideoDataset
from st_adapter_fast.video.synthetic import make_synthetic
from st_adapter_fast.video.train import (TrainConfig, build_model, evaluate_adapters, forward_backward,
                                   load_config_file, make_train_loader, setup_distributed, train)

# one block of a 48-wide ViT on 32x32 frames (2x2 patches of 16)
TINY_MODEL = dict(model="vit_tiny_patch16_224", input_size=32,
                  model_kwargs=dict(depth=1, embed_dim=48, num_heads=3))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    train_list, val_list = make_synthetic(root, 8, 4, num_frames=8, size=32, seed=2)
    return dict(train_list=train_list, val_list=val_list, data_root=root)


def tiny_config(data, output_dir, **changes):
    values = dict(data, **TINY_MODEL, num_classes=2, num_frames=4, adapter_channels=8, batch_size=2,
                  steps=4, warmup_steps=2, lr=1e-2, num_workers=0, placement=["attn", "mlp"], output_dir=str(output_dir), log_every=1,
                  progress=False)
    return TrainConfig(**dict(values, **changes))


def trainable_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_resume_continues_bit_for_bit(data, tmp_path):
    # dropout, accumulation and a schedule that spans the interruption: everything must carry over
    common = dict(dropout=0.5, accum_steps=2, save_every=2, val_list=None)
    straight = train(tiny_config(data, tmp_path / "straight", **common))
    first = train(tiny_config(data, tmp_path / "resumed", stop_at=3, **common))
    assert first["metrics"] is None and len(first["history"]) == 3
    # the resumed half uses a worker process: the clips must not depend on where they are decoded
    second = train(tiny_config(data, tmp_path / "resumed", num_workers=1, **common))
    assert [r["step"] for r in second["history"]] == [4]
    assert straight["history"][3]["loss"] == second["history"][0]["loss"]
    assert [r["loss"] for r in straight["history"][:3]] == [r["loss"] for r in first["history"]]
    expected, got = trainable_state(straight["model"]), trainable_state(second["model"])
    assert expected.keys() == got.keys() and all(torch.equal(expected[n], got[n]) for n in expected)
    assert not torch.equal(expected["head.weight"], trainable_state(first["model"])["head.weight"])
    saved = [torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("straight", "resumed")]
    assert saved[0]["position"] == saved[1]["position"] == dict(step=4, epoch=1, batch=4)
    assert saved[0]["scheduler"] == saved[1]["scheduler"]
    for a, b in zip(saved[0]["optimizer"]["state"].values(), saved[1]["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(saved[0]["rng"][0]["torch"], saved[1]["rng"][0]["torch"])


def test_resume_refuses_a_different_config(data, tmp_path):
    train(tiny_config(data, tmp_path, steps=1, val_list=None))
    with pytest.raises(ValueError, match="different config.*lr"):
        train(tiny_config(data, tmp_path, steps=2, lr=0.5, val_list=None))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_batch_gradients(config, rank=0, world_size=1):
    from torch.nn.parallel import DistributedDataParallel
    _, _, device = setup_distributed("cpu")
    model = build_model(config)
    wrapped = DistributedDataParallel(model) if world_size > 1 else model
    loader, _ = make_train_loader(config, rank, world_size)
    batch = next(iter(loader))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    forward_backward(wrapped, batch, config, scaler, device, 1.0)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _ddp_worker(rank, port, config, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        gradients = _first_batch_gradients(config, rank, 2)
        result = train(dataclasses.replace(config, output_dir=os.path.join(out_dir, "ddp-run")))
        torch.save(dict(gradients=gradients, trained=trainable_state(result["model"])),
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_on_two_processes_matches_one_process_on_the_global_batch(data, tmp_path, monkeypatch):
    # The ranks' first-batch gradients come from eager DDP; their run is compiled (aot_eager, inherited by the
    # spawned processes) with selective checkpointing, which must not change what it computes.
    monkeypatch.setenv("ST_ADAPTER_FAST_COMPILE_BACKEND", "aot_eager")
    per_rank = tiny_config(data, tmp_path / "unused", dropout=0.0, steps=2, batch_size=2, compile=True,
                           grad_checkpointing="selective")
    mp.spawn(_ddp_worker, args=(_free_port(), per_rank, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = dataclasses.replace(per_rank, batch_size=4, output_dir=str(tmp_path / "single"), compile=False,
                                 grad_checkpointing="none")
    gradients = _first_batch_gradients(single)
    result = train(single)
    # DDP averages the two ranks' mean-loss gradients in float32: equal to the one-process mean over
    # the same 4 clips up to summation order. (Many adapter tensors get no gradient on the first step:
    # the conv starts at zero, as the authors initialise it, and the one block's pre-MLP adapter cannot
    # reach the class token; the trained parameters below are compared after a second step.)
    assert all(gradients[n].abs().sum() > 0 for n in ("backbone.blocks.0.st_adapter_attn.conv.weight",
                                                       "backbone.blocks.0.st_adapter_attn.fc2.bias", "head.weight"))
    for name, expected in gradients.items():
        for rank in ranks:
            torch.testing.assert_close(rank["gradients"][name], expected, rtol=1e-5, atol=1e-7)
    for name, expected in trainable_state(result["model"]).items():
        assert torch.equal(ranks[0]["trained"][name], ranks[1]["trained"][name])
        # AdamW divides each gradient by its own running magnitude: an element whose gradient is near zero
        # (a cancellation, where DDP's and one process's summation orders differ most) moves by up to lr
        # either way. 1e-4 is 1% of one step of lr=1e-2.
        torch.testing.assert_close(ranks[0]["trained"][name], expected, rtol=1e-4, atol=1e-4)
    with open(tmp_path / "ddp-run" / "metrics.json") as f:
        assert json.load(f) == result["metrics"] and result["metrics"]["videos"] == 4


def test_cli_train_and_eval_with_a_config_file_and_an_unreadable_video(data, tmp_path, capsys):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("model: vit_tiny_patch16_224\nmodel_kwargs: {depth: 1, embed_dim: 48, num_heads: 3}\n"
                           "input_size: 32\nnum_classes: 2\nnum_frames: 4\nadapter_channels: 8\nsteps: 3\n"
                           "warmup_steps: 1\nbatch_size: 2\nnum_workers: 1\n")
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(config_file), "--train-list", data["train_list"], "--val-list",
                     data["val_list"], "--data-root", data["data_root"], "--output-dir", str(out),
                     "--amp", "bf16", "--accum-steps", "2", "--save-every", "2", "--log-every", "1", "--no-progress",
                     "--placement", "attn", "mlp"]) == 0
    assert "adapters" in capsys.readouterr().out
    assert sorted(os.listdir(out / "adapters")) == ["adapter_config.json", "adapters.safetensors",
                                                    "train_config.json"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 3] and log[-1]["videos"] == 4
    assert json.loads((out / "adapters" / "train_config.json").read_text())["placement"] == ["attn", "mlp"]

    with open(data["val_list"]) as f:
        val_lines = f.read()
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    broken_list = tmp_path / "val_with_broken.txt"
    broken_list.write_text(val_lines.replace("videos/", f"{data['data_root']}/videos/") + "broken.mp4 1\n")
    with pytest.warns(UserWarning, match="skipping unreadable video .*broken.mp4"):
        assert cli.main(["eval", str(out / "adapters"), "--val-list", str(broken_list), "--data-root",
                         str(tmp_path), "--eval-views", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(printed.splitlines()[0])
    assert metrics["videos"] == 4 and metrics["skipped"] == 1 and metrics["listed"] == 5
    assert "on 4 of 5 videos (1 unreadable, skipped)" in printed


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(num_classes=2, learning_rate=1.0)))
    with pytest.raises(ValueError, match="bad.json: unknown config keys \\['learning_rate'\\]"):
        TrainConfig.from_dict(load_config_file(str(bad)), source=str(bad))
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")


def test_frozen_image_model_with_mean_pooling_cannot_tell_a_clip_from_its_reversal(data, tmp_path):
    config = tiny_config(data, tmp_path, linear_probe=True, num_frames=8)
    model = build_model(config).eval()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    dataset = VideoDataset(data["val_list"], data["data_root"], num_frames=8, size=32, train=False)
    down, up = dataset[0], dataset[1]
    assert (down["label"], up["label"]) == (0, 1)
    assert torch.equal(down["clip"].flip(2), up["clip"])
    with torch.no_grad():
        torch.testing.assert_close(model(down["clip"]), model(up["clip"]), rtol=1e-5, atol=1e-6)


def test_demo_runs_end_to_end_on_a_tiny_config(tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path), "--num-train", "8", "--num-val", "4", "--steps", "3",
                     "--batch-size", "2", "--num-workers", "0", "--depth", "1"]) == 0
    results = json.loads((tmp_path / "demo.json").read_text())
    assert results["models"]["linear_probe"]["trainable_params"] == 192 * 2 + 2
    assert results["models"]["st_adapters"]["trainable_params"] > 192 * 2 + 2
    assert results["loader_clips_per_s"]["0_workers"] > 0
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_amp_bf16_run_computes_the_whole_backbone_in_bf16(data, tmp_path, monkeypatch):
    """Counted by our own hooks on every backbone Linear over the whole run, and reported by train()."""
    import collections

    from st_adapter_fast.video.train import loop as train_module
    from st_adapter_fast.measure import backbone_linears
    seen = collections.Counter()
    real_build_model = train_module.build_model

    def build_and_watch(config):
        model = real_build_model(config)
        for linear in backbone_linears(model.backbone):
            linear.register_forward_hook(lambda m, args, out: seen.update([out.dtype]))
        return model

    monkeypatch.setattr(train_module, "build_model", build_and_watch)
    result = train(tiny_config(data, tmp_path / "bf16", amp="bf16", steps=2, val_list=None))
    # (the one clip that checks the model before the run + the steps) x Linears (one block)
    assert set(seen) == {torch.bfloat16} and sum(seen.values()) == (1 + 2) * 4
    assert result["backbone_compute_dtype"] == "bfloat16"
    assert result["history"][0]["backbone_compute_dtype"] == "bfloat16"
    assert result["model"].backbone.blocks[0].attn.qkv.weight.dtype == torch.bfloat16   # frozen weights kept in bf16
    assert result["model"].head.weight.dtype == torch.float32

    kept_fp32 = train(tiny_config(data, tmp_path / "fp32-weights", amp="bf16", backbone_fp32=True, steps=1,
                                  val_list=None))
    assert kept_fp32["model"].backbone.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert kept_fp32["backbone_compute_dtype"] == "bfloat16"    # autocast still computes in bf16
    assert train(tiny_config(data, tmp_path / "fp32", steps=1, val_list=None))["backbone_compute_dtype"] == "float32"


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_grad_checkpointing_run_matches_the_plain_run(data, tmp_path, mode):
    plain = train(tiny_config(data, tmp_path / "plain", steps=2, val_list=None, dropout=0.0))
    checkpointed = train(tiny_config(data, tmp_path / "ckpt", steps=2, val_list=None, dropout=0.0,
                                     grad_checkpointing=mode))
    assert checkpointing_mode(checkpointed["model"]) == mode
    losses = lambda run: [r["loss"] for r in run["history"]]
    assert losses(checkpointed) == pytest.approx(losses(plain), rel=1e-6)


@pytest.mark.compiled
def test_compiled_run_matches_eager_resumes_bit_for_bit_and_evaluates(data, tmp_path, monkeypatch):
    """--compile with selective checkpointing (aot_eager: dynamo and AOTAutograd as with inductor, without the
    minutes of code generation): the eager run's losses, an exact resume, the eval and the files of a run."""
    monkeypatch.setenv("ST_ADAPTER_FAST_COMPILE_BACKEND", "aot_eager")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    common = dict(steps=3, val_list=None, dropout=0.0, grad_checkpointing="selective")
    eager = train(tiny_config(data, tmp_path / "eager", **common))
    counters = torch._dynamo.utils.counters
    counters.clear()
    straight = train(tiny_config(data, tmp_path / "straight", compile=True, **common))
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]   # compiled, as one graph
    losses = lambda *runs: [r["loss"] for run in runs for r in run["history"] if "loss" in r]
    assert losses(straight) == pytest.approx(losses(eager), rel=1e-5)
    assert straight["backbone_compute_dtype"] == "float32" == straight["history"][0]["backbone_compute_dtype"]
    # stop, then resume compiled (with an eval at the end); the stopped half may run eagerly: how, not what
    first = train(tiny_config(data, tmp_path / "resumed", stop_at=2, **dict(common, grad_checkpointing="none")))
    second = train(tiny_config(data, tmp_path / "resumed", compile=True, compile_mode="max-autotune",
                               **dict(common, val_list=data["val_list"])))
    assert losses(first, second) == pytest.approx(losses(straight), rel=1e-5)
    assert losses(second) == losses(straight)[2:]   # the compiled step after the resume: bit for bit
    assert second["metrics"]["videos"] == 4
    # eval rebuilds the run's model (checkpointed, uncompiled) from its folder and scores what train scored
    assert evaluate_adapters(str(tmp_path / "resumed" / "adapters"))["top1"] == second["metrics"]["top1"]
    bf16 = train(tiny_config(data, tmp_path / "bf16", amp="bf16", compile=True, **dict(common, steps=1)))
    assert bf16["backbone_compute_dtype"] == "bfloat16" and bf16["history"][0]["loss"] > 0
