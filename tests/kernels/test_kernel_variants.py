"""The conv kernels' variants (issue 20): the CUDA variant table as the extension exports it, how a call selects
one (an unknown name raises), the launches they plan, every variant run on the CPU by the CUDA emulator
(csrc/tests/emulate_cuda_kernels.cpp), every variant natively against a float64 reference where CUDA is
available, and the Triton conv kernels under each launch config the sweep times.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import st_adapter_fast as saf
from st_adapter_fast.kernels.compiled import extension_info
from conftest import DEVICE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
ops = torch.ops.st_adapter_fast


def _extension():
    info = extension_info()
    assert info["available"], info["error"]
    from st_adapter_fast import _C
    return _C


# ---- the table ----

def test_variant_table_is_exported_with_the_default_first():
    _C = _extension()
    assert set(_C.cuda_variants) == {"fwd", "bwd"}
    for direction, names in _C.cuda_variants.items():
        assert len(names) == len(set(names)) >= 2
        assert _C.cuda_default_variants[direction] == names[0] == "window"
        assert _C.cuda_variant_env[direction] == f"ST_ADAPTER_FAST_CUDA_{direction.upper()}_VARIANT"
        assert list(_C.cuda_variant_info[direction]) == list(names)
        for info in _C.cuda_variant_info[direction].values():
            assert info["threads"] % 32 == 0 and len(info["summary"]) > 20


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_the_environment_selects_a_variant_and_an_unknown_name_raises(direction, monkeypatch):
    _C = _extension()
    variable = _C.cuda_variant_env[direction]
    monkeypatch.delenv(variable, raising=False)
    assert _C.selected_cuda_variant(direction) == "window"
    monkeypatch.setenv(variable, "")
    assert _C.selected_cuda_variant(direction) == "window"
    for name in _C.cuda_variants[direction]:
        monkeypatch.setenv(variable, name)
        assert _C.selected_cuda_variant(direction) == name
    monkeypatch.setenv(variable, "windw")
    with pytest.raises(ValueError, match=f"{variable}='windw' is not a CUDA kernel variant; known: window"):
        _C.selected_cuda_variant(direction)
    with pytest.raises(ValueError, match="direction"):
        _C.selected_cuda_variant("sideways")


def test_the_sweep_and_the_ptxas_report_know_every_variant():
    import cuda_kernel_sweep
    _C = _extension()
    assert cuda_kernel_sweep.cuda_variants() == {d: tuple(v) for d, v in _C.cuda_variants.items()}
    with open(os.path.join(ROOT, "benchmarks", "results", "ptxas-sm90.json")) as f:
        report = json.load(f)
    reported = {(r["direction"], r["variant"]) for r in report["variants"]}
    assert reported == {(d, v) for d, names in _C.cuda_variants.items() for v in names}, \
        "benchmarks/results/ptxas-sm90.json is out of date: run python benchmarks/ptxas_report.py"
    # What the variants were made for: a backward at bf16, kt = 3, ViT-B/16 with far fewer registers than the
    # default, no spills, and several times its bytes of loads in flight per multiprocessor.
    rows = {(r["direction"], r["variant"]): r for r in report["variants"]
            if r["dtype"] == "bfloat16" and r["kt"] == 3 and r["shape"] == "vit-b16"}
    default = rows[("bwd", "window")]
    best = max((r for (d, _), r in rows.items() if d == "bwd" and r["spill_stores"] == 0),
               key=lambda r: r["inflight_bytes_per_sm"])
    assert best["registers"] < 0.6 * default["registers"]
    assert best["inflight_bytes_per_sm"] >= 3 * default["inflight_bytes_per_sm"]


# ---- launch plans (no GPU needed: the extension computes the launch without making it) ----

def _plan(_C, direction, variant, dtype, kt, **kw):
    return _C.cuda_launch_plan(direction, variant, dtype, kt, kw.pop("channels", 384), kw.pop("tokens", 196),
                               kw.pop("frames", 8), kw.pop("clips", 32), **kw)


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("kt", [1, 3, 5, 7])
def test_each_variant_plans_its_own_kernel_and_falls_back_where_it_has_none(direction, kt):
    _C = _extension()
    if not hasattr(_C, "cuda_launch_plan"):
        pytest.skip("the extension was built without CUDA (no launch plans)")
    for variant in _C.cuda_variants[direction]:
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            plan = _plan(_C, direction, variant, dtype, kt)
            assert plan["ran"] == variant and plan["reason"] == "", plan
            assert plan["vec"] > 1 and 32 <= plan["threads"] <= 1024 and plan["grid"][1] <= 65535
            assert plan["inflight_bytes"] >= plan["vector_bytes"]
            if direction == "bwd":
                assert plan["partial_rows"] >= 1
                if variant in ("async", "async8", "frames"):   # persistent: one row per resident block row
                    assert plan["partial_rows"] <= 264
        # float64, and tensors that allow no vector of the variant's width, run the default kernels, saying so.
        plan = _plan(_C, direction, variant, torch.float64, kt)
        assert plan["ran"] == "window" and (variant == "window" or "float64" in plan["reason"])
        plan = _plan(_C, direction, variant, torch.bfloat16, kt, aligned_bytes=2, channels=33)
        assert plan["ran"] == "window" and plan["vec"] == 1
        assert variant == "window" or "alignment" in plan["reason"]
    with pytest.raises(ValueError, match="not a CUDA kernel variant"):
        _plan(_C, direction, "fastest", torch.bfloat16, kt)


def test_persistent_backward_variants_write_far_fewer_partials():
    _C = _extension()
    if not hasattr(_C, "cuda_launch_plan"):
        pytest.skip("the extension was built without CUDA (no launch plans)")
    default = _plan(_C, "bwd", "window", torch.bfloat16, 3)["partial_rows"]
    assert default == 32 * 40   # (clips) x (token blocks of 5 tokens) at ViT-B/16
    for variant in ("async", "async8", "frames"):
        assert _plan(_C, "bwd", variant, torch.bfloat16, 3, resident_blocks=2 * 132)["partial_rows"] <= 264


# ---- every CUDA variant on the CPU: the emulator ----

@pytest.mark.compiled
def test_every_cuda_variant_under_the_cpu_emulation(tmp_path):
    """Builds csrc/tests/emulate_cuda_kernels.cpp (the kernels' own source, CUDA's execution model emulated)
    and runs its cases: every variant, dtype and kt, T from 1 to 9, partial blocks, strided and misaligned views,
    persistent blocks walking several items; outputs and partial sums against plain loops in double."""
    from torch.utils import cpp_extension
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    assert compiler, "a C++ compiler is needed (the extension's build needs one too)"
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    binary = str(tmp_path / "emulate_cuda_kernels")
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    build = subprocess.run(
        [compiler, "-std=c++20", "-O1", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
         *(f"-I{p}" for p in cpp_extension.include_paths()), "-I" + os.path.join(ROOT, "csrc"),
         os.path.join(ROOT, "csrc", "tests", "emulate_cuda_kernels.cpp"), "-o", binary,
         f"-L{torch_lib}", "-lc10", f"-Wl,-rpath,{torch_lib}"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([binary], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and " 0 failures" in run.stdout, run.stdout[-6000:] + run.stderr[-2000:]
    _C = _extension()
    for direction, names in _C.cuda_variants.items():   # each variant ran its own kernel in some cases
        for name in names:
            assert f"ran: {direction} {name} -> {name} (vec" in run.stdout, f"{direction} {name} never ran its kernel"


# ---- every CUDA variant natively (where CUDA is available) ----

def reference_conv_act(h, weight, bias, num_frames, activation):
    """float64 temporal conv + activation of (frames, N, Ca) tensors, by shifts (autograd gives the gradients)."""
    frames, n, ca = h.shape
    kt = weight.shape[1]
    clips = h.view(frames // num_frames, num_frames, n, ca)
    padded = F.pad(clips, (0, 0, 0, 0, kt // 2, kt // 2))
    c = bias + sum(padded[:, j:j + num_frames] * weight[:, j] for j in range(kt))
    return saf.activations.apply_activation(c.reshape(frames, n, ca), None if activation == "none" else activation)


def _views(frames, tokens, channels, layout, dtype, device, gen):
    """(h, grad_a, grad_h, a) as the layout asks: contiguous, or patch rows of a (frames, tokens + 1, Ca) tensor."""
    def one():
        if layout == "patch-rows":
            return torch.randn(frames, tokens + 1, channels, generator=gen).to(device, dtype)[:, 1:]
        return torch.randn(frames, tokens, channels, generator=gen).to(device, dtype)
    return one(), one(), one().fill_(float("nan")), one().fill_(float("nan"))


NATIVE_CASES = [  # (clips, frames per clip, tokens, channels, layout)
    (3, 8, 29, 384, "contiguous"),
    (2, 5, 13, 136, "patch-rows"),
    (4, 1, 7, 64, "contiguous"),
    (2, 2, 9, 40, "patch-rows"),
    (2, 3, 5, 33, "contiguous"),     # odd channels: the one-element path (the default kernels)
]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}


def _variant_ids():
    try:
        from st_adapter_fast import _C
        return [(d, v) for d, names in _C.cuda_variants.items() for v in names]
    except ImportError:
        return [("fwd", "window"), ("bwd", "window")]


@pytest.mark.gpu
@pytest.mark.parametrize("direction, variant", _variant_ids(), ids=lambda x: str(x))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("kt", [1, 3, 5, 7])
def test_every_cuda_variant_natively(direction, variant, dtype, kt, monkeypatch):
    _C = _extension()
    monkeypatch.setenv(_C.cuda_variant_env[direction], variant)
    gen = torch.Generator().manual_seed(kt)
    for clips, num_frames, tokens, channels, layout in NATIVE_CASES:
        h, grad_a, grad_h, a = _views(clips * num_frames, tokens, channels, layout, dtype, "cuda", gen)
        weight = (0.5 * torch.randn(channels, kt, generator=gen)).to("cuda", dtype)
        bias = (0.1 * torch.randn(channels, generator=gen)).to("cuda", dtype)
        leaves = [t.double().requires_grad_() for t in (h, weight, bias)]
        want = reference_conv_act(*leaves, num_frames, "gelu")
        tol = TOLERANCE[dtype]
        what = f"{variant} {dtype} kt={kt} T={num_frames} N={tokens} Ca={channels} {layout}"
        if direction == "fwd":
            out = torch.full_like(h, float("nan"))
            ops.temporal_conv_act_out(h, weight, bias, num_frames, "gelu", out)
            torch.cuda.synchronize()
            assert not out.isnan().any(), f"{what}: unwritten elements"
            torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol, msg=what)
        else:
            want.backward(grad_a.double())
            grads = ops.temporal_conv_act_backward_out(grad_a, h, weight, bias, num_frames, "gelu", grad_h, a)
            torch.cuda.synchronize()
            assert not (a.isnan().any() or grad_h.isnan().any()), f"{what}: unwritten elements"
            torch.testing.assert_close(a.double(), want.detach(), rtol=tol, atol=tol, msg=what)
            torch.testing.assert_close(grad_h.double(), leaves[0].grad, rtol=tol, atol=tol * 4, msg=what)
            scale = max(1.0, leaves[1].grad.abs().max().item())
            for got, expected in zip(grads, (leaves[1].grad, leaves[2].grad, leaves[0].grad.sum((0, 1)))):
                torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol * scale, msg=what)
            again = ops.temporal_conv_act_backward(grad_a, h, weight, bias, num_frames, "gelu")
            for first, second in zip((grad_h, a, *grads), again):
                assert torch.equal(first, second), f"{what}: not deterministic"
        launch = _C.last_cuda_launch()
        assert launch["requested"] == variant and launch["direction"] == direction
        if channels % 8 == 0 and dtype != torch.float64:
            assert launch["ran"] == variant, launch


@pytest.mark.gpu
@pytest.mark.parametrize("direction, variant", _variant_ids(), ids=lambda x: str(x))
def test_every_cuda_variant_replays_in_a_cuda_graph(direction, variant, monkeypatch):
    _C = _extension()
    monkeypatch.setenv(_C.cuda_variant_env[direction], variant)
    gen = torch.Generator().manual_seed(0)
    h, grad_a, grad_h, a = _views(2 * 8, 49, 384, "patch-rows", torch.bfloat16, "cuda", gen)
    weight, bias = torch.randn(384, 3, device="cuda", dtype=torch.bfloat16), torch.randn(384, device="cuda",
                                                                                         dtype=torch.bfloat16)
    call = (lambda: ops.temporal_conv_act_out(h, weight, bias, 8, "gelu", a)) if direction == "fwd" else \
        (lambda: ops.temporal_conv_act_backward_out(grad_a, h, weight, bias, 8, "gelu", grad_h, a))
    eager = call()
    expected = [a.clone()] + ([grad_h.clone()] + [t.clone() for t in eager] if direction == "bwd" else [])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call()
    a.fill_(float("nan")), grad_h.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    got = [a] + ([grad_h] + list(captured) if direction == "bwd" else [])
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


@pytest.mark.gpu
def test_an_unknown_variant_raises_before_any_launch(monkeypatch):
    monkeypatch.setenv("ST_ADAPTER_FAST_CUDA_BWD_VARIANT", "nope")
    h = torch.randn(8, 5, 16, device="cuda")
    with pytest.raises(ValueError, match="not a CUDA kernel variant"):
        ops.temporal_conv_act_backward(h, h, torch.randn(16, 3, device="cuda"), torch.randn(16, device="cuda"), 8,
                                       "gelu")


# ---- the Triton conv kernels under each launch config ----

def test_triton_config_strings_are_checked():
    from st_adapter_fast.kernels.triton.adapter import config_text, parse_conv_config
    config = parse_conv_config("BLOCK_N=32,BLOCK_CA=128,num_warps=8")
    assert config == dict(BLOCK_N=32, BLOCK_CA=128, BLOCK_K=64, num_warps=8, num_stages=3)
    assert parse_conv_config(config_text(config)) == config
    for bad, message in [("BLOCK_N=32", "needs BLOCK_N and BLOCK_CA"), ("BLOCK_N=32,BLOCK_CA=48", "power of two"),
                         ("BLOCK_N=8,BLOCK_CA=64", "BLOCK_N >= 16"), ("BLOCK_N=32,BLOCK_CA=64,warps=4", "unknown"),
                         ("BLOCK_N=32;BLOCK_CA=64", "KEY=INTEGER")]:
        with pytest.raises(ValueError, match=message):
            parse_conv_config(bad)


def _triton_configs():
    from st_adapter_fast.kernels.triton.adapter import config_text, sweep_conv_configs
    return [config_text(c) for c in sweep_conv_configs()]


@pytest.mark.triton
@pytest.mark.parametrize("config", _triton_configs())
def test_triton_conv_kernels_under_each_sweep_config(config, monkeypatch):
    """Forward and backward of the Triton conv kernels with one fixed config (as the sweep times them), against
    float64: a config is a launch shape, never another result. Small shapes (interpreted on the CPU)."""
    from st_adapter_fast.kernels.triton.adapter import CONV_CONFIG_ENV, TRITON_KERNELS
    gen = torch.Generator().manual_seed(0)
    clips, num_frames, tokens, channels, kt = 2, 3, 37, 40, 3
    h = torch.randn(clips * num_frames, tokens + 1, channels, generator=gen).to(DEVICE)[:, 1:]
    grad_a = torch.randn(clips * num_frames, tokens, channels, generator=gen).to(DEVICE)
    weight = (0.5 * torch.randn(channels, kt, generator=gen)).to(DEVICE)
    bias = (0.1 * torch.randn(channels, generator=gen)).to(DEVICE)
    leaves = [t.double().requires_grad_() for t in (h, weight, bias)]
    want = reference_conv_act(*leaves, num_frames, "gelu")
    want.backward(grad_a.double())
    a = torch.full_like(grad_a, float("nan"))
    monkeypatch.setenv(CONV_CONFIG_ENV["fwd"], config)   # forward through the environment
    TRITON_KERNELS.conv_act_forward(x_patch=h, fc1_weight=weight, fc1_bias=bias, conv_weight=weight, conv_bias=bias,
                                    h=h, a=a, num_frames=num_frames, activation="gelu", store_h=False)
    torch.testing.assert_close(a.double(), want.detach(), rtol=1e-4, atol=1e-4)
    grad_h, a2 = torch.full_like(grad_a, float("nan")), torch.full_like(grad_a, float("nan"))
    grads = TRITON_KERNELS.conv_act_backward(g_patch=grad_a, fc2_weight=weight, h=h, conv_weight=weight,
                                             conv_bias=bias, a=a2, grad_h=grad_h, num_frames=num_frames,
                                             activation="gelu", config=config)   # backward through the argument
    torch.testing.assert_close(a2.double(), want.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_h.double(), leaves[0].grad, rtol=1e-4, atol=1e-4)
    for got, expected in zip(grads, (leaves[1].grad, leaves[2].grad, leaves[0].grad.sum((0, 1)))):
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-3)
