"""Benchmark smoke tests: pytest-benchmark timings of a tiny config (disabled by default via
--benchmark-disable in pyproject, so CI runs each once; `pytest tests/bench/test_benchmarks.py --benchmark-enable`
times them and `pytest-benchmark compare` tracks regressions), the bench harness, the e2e step and the plot."""
import json
import os
import sys

import pytest
import torch

import st_adapter_fast as saf
from st_adapter_fast.bench import benchmark as bench
from conftest import DEVICE

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

SHAPE = (2, 4, 17, 64, 32)  # clips, frames, tokens, C, Ca


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=pytest.mark.triton), "reference"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_adapter_speed(benchmark, backend, mode):
    x, params, grad_y = bench.adapter_inputs(*SHAPE, DEVICE, torch.float32)
    fn = lambda x_, T, *p: saf.st_adapter(x_, T, *p, backend=backend)
    benchmark(lambda: bench.bench_case(backend, fn, mode, x, params, grad_y, SHAPE[1], lambda f: (f(), None)))


def test_bench_harness_writes_and_upserts(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "CPU_CONFIGS", {"small": (1, 2, 10, 16, 8)})
    monkeypatch.setattr(bench, "GPU_CONFIGS", {"small": (1, 2, 10, 16, 8)})
    monkeypatch.setattr(bench, "implementations", lambda device: {
        "reference eager": lambda x, T, *p: saf.st_adapter(x, T, *p, backend="reference")})
    out = tmp_path / "r.json"
    bench.main(["--quick", "--out", str(out), "--rounds", "3"])
    bench.main(["--quick", "--out", str(out), "--rounds", "3"])
    rows = json.loads(out.read_text())["rows"]
    assert {(r["mode"], r["impl"]) for r in rows} == {("fwd", "reference eager"), ("fwd+bwd", "reference eager")}
    assert len(rows) == 2 and all(r["median_ms"] > 0 and r["floor_ms"] > 0 for r in rows)
    assert all({"graph_ms", "graph_over_floor", "spread_ms", "speedup_vs_reference"} <= set(r) for r in rows)


def test_bench_output_labels_every_column_and_uses_sensible_units(capsys, monkeypatch):
    monkeypatch.setattr(bench, "CPU_CONFIGS", {"small": (1, 2, 10, 16, 8)})
    monkeypatch.setattr(bench, "implementations", lambda device: {
        "reference eager": lambda x, T, *p: saf.st_adapter(x, T, *p, backend="reference"),
        "linears only (no conv/act)": bench.linears_only})
    result = bench.main(["--quick", "--rounds", "4", "--no-progress"])
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("config"))
    for label in ("implementation", "median ms", "spread ms", "vs authors'", "floor ms", "x floor", "saved MiB"):
        assert label in header
    device_line = next(line for line in lines if line.startswith("device:"))
    assert " 0.0 " not in device_line and "FLOP/s" in device_line and "B/s" in device_line
    rows = [line for line in lines if line.startswith("small")]
    assert len(rows) == 4 and all(len(line.split()) >= 8 for line in rows)
    assert all(r["rounds"] == 4 and len(r["speedup_spread"]) == 2 for r in result["rows"])
    assert bench.si(1.45e11, "FLOP/s") == "145 GFLOP/s" and bench.si(3.1e12, "B/s") == "3.1 TB/s"


def test_bench_silences_the_cuda_home_warning(caplog):
    import logging
    with bench._quiet_cuda_home_warning():
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='/x'")
    assert "CUDA_HOME" not in caplog.text


# The authors' architecture (QuickGELU CLIP, pre-MLP adapters, Ca = C / 2) in miniature
MINI_AUTHORS = dict(model_name="vit_base_patch16_clip_quickgelu_224", clips=1, frames=4, img_size=32, adapter_channels=16,
                    steps=1, log=lambda line: None)


@pytest.mark.compiled
@pytest.mark.filterwarnings("ignore:compile mode reduce-overhead captures CUDA graphs")   # on the CPU, as it says
def test_end_to_end_runs_every_variant_and_records_what_ran(tmp_path, monkeypatch):
    """The GPU benchmark's code on a 2-block miniature: every variant (compiled ones through AOTAutograd's graphs
    as inductor would partition them, run op by op: quick, and their live tensors countable), its profile
    breakdown, the backbone dtype seen by hooks, the peak of live tensors and the goals' ratios."""
    from st_adapter_fast.bench.benchmark import e2e_goals_text
    from st_adapter_fast.bench.e2e import VARIANTS, end_to_end
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    result = end_to_end(DEVICE, model_kwargs=dict(patch_size=8, embed_dim=32, num_heads=2, depth=2),
                        compile_backend="aot_eager_decomp_partition", **MINI_AUTHORS)
    assert tuple(result["variants"]) == VARIANTS and result["clips"] == 1 and result["blocks"] == 2
    assert result["backbone_compute_dtype"] == ("bfloat16" if DEVICE == "cuda" else "float32")
    for name, v in result["variants"].items():
        assert v["step_ms"] > 0 and v["clips_per_s"] > 0 and v["peak_live_bytes"] > 0, name
        parts = v["breakdown_ms"]
        assert parts["forward_ms"] > 0 and parts["backward_ms"] >= 0 and parts["optimizer_ms"] > 0, name
        if name in ("reference", "fast"):   # adapters told apart in the eager variants
            assert parts["adapters_forward_ms"] > 0 and parts["adapters_backward_ms"] > 0, name
        assert (v["cudagraph_skips"] is None) == ("compiled" not in name), name
    variants = result["variants"]
    assert variants["no adapters"]["breakdown_ms"]["adapters_forward_ms"] == 0
    live = {name: v["peak_live_bytes"] for name, v in variants.items()}
    # no backward through the backbone < the floor's backward < the adapters'; full checkpointing keeps least
    assert live["no adapters"] < live["backward floor"] < live["fast"] <= live["reference"]
    assert live["fast + checkpointing"] < live["fast + selective"] <= live["fast"]
    checks = result["goal_checks"]["1"]
    assert all(g["value"] > 0 for g in checks.values()) and "reference / fast" not in checks   # that goal: 64 clips
    assert result["goals"] == {name: g["value"] for name, g in checks.items()}
    assert "live tensors: fast + selective / reference" in e2e_goals_text(result)


def test_selective_checkpointing_keeps_at_most_0_7_of_the_reference_live_tensors():
    """The issue's CPU goal, on the authors' 12-block architecture in miniature: the peak of live tensors over
    a training step, fast adapters with selective checkpointing against the reference adapters without any."""
    from st_adapter_fast.bench.e2e import end_to_end
    result = end_to_end("cpu", model_kwargs=dict(patch_size=8, embed_dim=32, num_heads=2),
                        variants=["reference", "fast + selective"], **MINI_AUTHORS)
    goal = result["goal_checks"]["1"]["live tensors: fast + selective / reference"]
    assert result["blocks"] == 12 and goal["met"] and goal["value"] <= 0.7, goal


def test_e2e_runs_of_other_batches_fill_one_results_file(tmp_path):
    """Separate e2e commands (8, then 64 clips) into one --out file keep each other's batches; another model's
    run replaces them."""
    out = str(tmp_path / "r.json")
    run = lambda clips, model="m": dict(device="d", rows=[], e2e=dict(
        model=model, model_kwargs={}, img_size=224, frames=8, compile_backend="inductor", clips=clips,
        by_clips={str(clips): {"fast": {"step_ms": clips}}}, goal_checks={str(clips): {"g": {"value": 1.0}}}))
    bench.write_results(out, run(8), quiet=True)
    bench.write_results(out, run(64), quiet=True)
    e2e = json.loads(open(out).read())["e2e"]
    assert set(e2e["by_clips"]) == set(e2e["goal_checks"]) == {"8", "64"} and e2e["clips"] == 64
    bench.write_results(out, run(32, model="other"), quiet=True)
    assert set(json.loads(open(out).read())["e2e"]["by_clips"]) == {"32"}


def test_backward_floor_is_the_backbone_with_one_trainable_scale_per_adapter():
    """The floor's model: each adapter replaced by a per-channel scale of ones, so that it computes the plain
    backbone while every block's input gradient is needed."""
    from st_adapter_fast.bench.e2e import ChannelScale, _variant_model, build_models
    base, plain = build_models("cpu", "vit_base_patch16_clip_quickgelu_224", frames=2, img_size=32,
                               adapter_channels=8, model_kwargs=dict(patch_size=8, embed_dim=16, num_heads=2, depth=3))
    call, model = _variant_model(base, plain, "backward floor", "inductor")
    scales = [m for m in model.modules() if isinstance(m, ChannelScale)]
    assert len(scales) == 3 and not any(isinstance(m, saf.STAdapter) for m in model.modules())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"backbone.blocks.{i}.st_adapter_mlp.scale" for i in range(3)} | {"head.weight", "head.bias"}
    video = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(call(video), plain(video))
    call(video).sum().backward()
    assert all(s.scale.grad is not None and s.scale.grad.abs().sum() > 0 for s in scales)


def test_plot_from_results(tmp_path):
    """Bars only where measured (triton has no small row: no zero bar), linears-only as a dashed line."""
    plot_results = pytest.importorskip("plot_results")
    rows = [dict(config=config, dtype="bfloat16", mode="fwd+bwd", impl=impl, speedup_vs_reference=s)
            for config, impl, s in [("vit-b16", "reference eager", 1.0), ("vit-b16", "triton", 3.0),
                                    ("vit-b16", "linears only (no conv/act)", 4.0), ("small", "reference eager", 1.0)]]
    result = dict(device="a device with a long name " * 3, torch="x", rows=rows)
    fig = plot_results.figure(result)
    ax = fig.axes[0]
    assert sorted(round(bar.get_height(), 3) for bar in ax.patches) == [1.0, 1.0, 3.0]
    dashed = [c for c in ax.collections if c.get_linestyle()[0][1] is not None]
    assert len(dashed) == 1 and dashed[0].get_segments()[0][0][1] == 4.0
    assert "linears only" not in [t.get_text() for t in ax.get_xticklabels()]
    out = plot_results.plot(result, out=str(tmp_path / "p.png"))
    assert os.path.getsize(out) > 1000


def test_gpu_branch_of_the_harness_keeps_its_fields(monkeypatch):
    """The GPU code path (do_bench medians, CUDA-graph times, progress per implementation) on CPU tensors,
    with the GPU-only timers replaced: its rows keep graph_ms / graph_over_floor / floor_ms."""
    real_inputs = bench.adapter_inputs
    monkeypatch.setattr(bench, "adapter_inputs", lambda *shape_device_dtype: real_inputs(
        *shape_device_dtype[:5], "cpu", shape_device_dtype[6]))
    monkeypatch.setattr(bench, "graph_time_ms", lambda step, quick=False: 0.5)
    impls = {"reference eager": lambda x, T, *p: saf.st_adapter(x, T, *p, backend="reference"),
             "broken": lambda x, T, *p: 1 / 0}
    progress = type("Progress", (), {"count": 0, "update": lambda self: setattr(self, "count", self.count + 1)})()
    rows = bench.bench_config("small", (1, 2, 10, 16, 8), torch.float32, "cuda", impls,
                              lambda fn: (fn(), (2.0, (1.0, 3.0)))[1], 1e9, 1e9, quick=True, progress=progress)
    assert [(r["mode"], r["impl"]) for r in rows] == [("fwd", "reference eager"), ("fwd+bwd", "reference eager")]
    assert all(r["graph_ms"] == 0.5 and r["graph_over_floor"] == 0.5 / r["floor_ms"] and r["median_ms"] == 2.0
               and "rounds" not in r for r in rows)
    assert progress.count == 2   # one per implementation that ran, per mode


@pytest.mark.skipif(DEVICE == "cuda", reason="the CPU smoke path interprets Triton; on a GPU the sweep runs for real")
def test_conv_kernel_sweep_smoke_path_on_the_cpu(tmp_path):
    """benchmarks/cuda_kernel_sweep.py --device cpu --configs smoke: the compiled CPU kernels and interpreted
    Triton configs checked and timed, every CUDA variant of the extension's table listed as not run, one JSON."""
    import cuda_kernel_sweep
    out = tmp_path / "sweep.json"
    cuda_kernel_sweep.main(["--device", "cpu", "--configs", "smoke", "--triton-configs", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    rows = result["conv_kernels"]
    required = {"variant", "default", "direction", "dtype", "config", "us", "bytes", "bandwidth_fraction", "registers"}
    assert all(required <= set(r) for r in rows)
    variants = cuda_kernel_sweep.cuda_variants()
    listed = {(r["direction"], r["variant"]) for r in rows if r["family"] == "cuda"}
    assert listed == {(d, v) for d, names in variants.items() for v in names}
    assert all(r["status"] == "not run: no CUDA device" for r in rows if r["family"] == "cuda")
    timed = [r for r in rows if r["family"] in ("cpu", "triton")]
    assert {(r["family"], r["direction"]) for r in timed} == {(f, d) for f in ("cpu", "triton") for d in ("fwd", "bwd")}
    assert all(r["status"] == "timed" and r["us"] > 0 and r["parity_error"] < 1e-5 for r in timed)
    assert len([r for r in timed if r["family"] == "triton"]) == 4   # autotuned + one fixed config, each direction
    assert result["copy_bandwidth_Bps"] > 0 and {"fwd:triton", "bwd:triton"} <= set(result["recommended"])


@pytest.mark.skipif(DEVICE == "cuda", reason="on a GPU the sweep's GPU branch runs for real (gpu_session.sh)")
def test_conv_kernel_sweep_gpu_branch_on_cpu_tensors(tmp_path, monkeypatch, capsys):
    """The sweep's GPU code path (parity child, every variant and thread count, failed variants reported and not
    timed, recommendations and their export line) on CPU tensors, the GPU-only pieces replaced: the compiled op
    then runs its CPU kernel whatever variant is asked for, which is enough to exercise the bookkeeping."""
    import types
    import cuda_kernel_sweep as sweep
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(sweep, "PARITY_DEVICE", "cpu")
    monkeypatch.setattr(sweep, "PARITY_CASES", [(2, 3, 5, 16, "patch-rows")])

    def parity_in_process(deadline):   # the child's code, in this process; one variant made to fail
        path = str(tmp_path / "parity.jsonl")
        sweep.parity_child(path, skip={"bwd:frames"})
        with open(path) as f:
            results = {(r["direction"], r["variant"]): r for r in map(json.loads, f)}
        results[("bwd", "frames")] = dict(direction="bwd", variant="frames", ok=False, crashed=True, failures=["x"])
        return results
    monkeypatch.setattr(sweep, "run_parity", parity_in_process)
    monkeypatch.setattr(sweep, "graph_us", sweep.cpu_us)
    monkeypatch.setattr(sweep, "measure_ceilings", lambda device, bench: (1e11, 1e13))
    real_tensors = sweep.tensors
    monkeypatch.setattr(sweep, "tensors", lambda config, dtype, device, **kw: real_tensors(config, dtype, "cpu", **kw))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: types.SimpleNamespace(multi_processor_count=2))
    out = tmp_path / "sweep.json"
    result = sweep.main(["--configs", "smoke", "--dtypes", "float32", "--triton-configs", "1", "--ncu",
                         "--json", str(out)])
    variants = sweep.cuda_variants()
    parity = {(p["direction"], p["variant"]): p for p in result["parity"]}
    assert set(parity) == {(d, v) for d, names in variants.items() for v in names}
    assert all(p["ok"] for k, p in parity.items() if k != ("bwd", "frames"))
    rows = json.loads(out.read_text())["conv_kernels"]
    cuda = [r for r in rows if r["family"] == "cuda"]
    failed = [r for r in cuda if r["variant"] == "frames" and r["direction"] == "bwd"]
    assert len(failed) == 1 and failed[0]["status"] == "parity failed" and failed[0]["us"] is None
    timed = {(r["direction"], r["variant"]) for r in cuda if r["status"] == "timed"}
    assert timed == {(d, v) for d, names in variants.items() for v in names} - {("bwd", "frames")}
    assert sum(r["default"] for r in cuda) == 2 and all(r["parity_error"] < 1e-5 for r in cuda if r["us"])
    assert {"fwd:cuda", "bwd:cuda", "fwd:triton", "bwd:triton"} <= set(result["recommended"])
    assert result["ncu"] == {"skipped": "ncu is not on the PATH"} or "skipped" in json.dumps(result["ncu"])
    printed = capsys.readouterr().out
    assert "recommended: export ST_ADAPTER_FAST_CUDA_FWD_VARIANT=" in printed and "_BWD_VARIANT=" in printed
