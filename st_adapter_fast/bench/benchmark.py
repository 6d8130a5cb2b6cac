"""Microbenchmark of one ST-Adapter: every available backend against the authors' eager computation.

    st-adapter-fast bench [--quick] [--out benchmarks/results/<device>.json]
    python benchmarks/bench_adapter.py ...          (the same)

For each config, dtype and mode (fwd, fwd+bwd) it times, side by side in one process on the same inputs:
the reference (authors' permute + Conv3d path) eager and under torch.compile, a shift-based pure PyTorch
version (kt shifted multiply-adds in the token layout) eager and compiled, the fused Triton path (on a
GPU also with the down-projection GEMMs inside its kernels) and the compiled kernels (csrc/); and, as a
practical floor, the adapter's two Linear layers and residual alone (no conv, no activation). Medians
come from triton.testing.do_bench on a GPU, where each row also gets the GPU time of a CUDA-graph replay
of its step (graph_ms), which leaves the host's launch work out; on the CPU, from alternating rounds
(every implementation once per round, in a rotating order), with the speedup as the median of per-round
ratios, which a busy machine disturbs far less than separate runs.
Next to each number: the floor, max(bytes that must move / measured copy bandwidth,
flops / measured GEMM rate), and bytes saved for backward per adapter.
"""
import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ..activations import apply_activation
from ..backends import available_on
from ..console import positive_int
from ..files import check_writable_folder, read_text, write_files
from ..measure import saved_activation_bytes
from ..ops import st_adapter
from ..reference import st_adapter_reference

# name: (clips, frames, tokens L, C, Ca); the first token of each frame is the class token.
GPU_CONFIGS = {"vit-b16": (32, 8, 197, 768, 384), "vit-l14": (16, 8, 257, 1024, 512), "small": (8, 8, 50, 384, 192)}
CPU_CONFIGS = {"vit-b16": (2, 8, 197, 768, 384), "small": (2, 8, 50, 384, 192)}


def shift_adapter(x, num_frames, w1, b1, wc, bc, w2, b2, activation="gelu", num_prefix_tokens=1):
    """The temporal conv as kt shifted multiply-adds in the token layout (no permutes); kernel (kt, 1, 1)."""
    P, kt = num_prefix_tokens, wc.shape[2]
    h = F.linear(x[:, P:], w1, b1)
    frames, n, ca = h.shape
    h = h.view(frames // num_frames, num_frames, n, ca)
    padded = F.pad(h, (0, 0, 0, 0, kt // 2, kt // 2))
    taps = wc.view(ca, kt)
    c = bc + sum(padded[:, j:j + num_frames] * taps[:, j] for j in range(kt))
    out = F.linear(apply_activation(c.view(frames, n, ca), activation), w2, b2)
    return torch.cat([x[:, :P], x[:, P:] + out], dim=1)


def _triton_fused_gemm(x, num_frames, *params):
    """The Triton path with the down-projection GEMMs inside the conv kernels (ST_ADAPTER_FAST_FUSED_GEMM=1)."""
    from ..kernels.triton import adapter
    before, adapter.FUSED_GEMM = adapter.FUSED_GEMM, True
    try:
        return st_adapter(x, num_frames, *params, backend="triton")
    finally:
        adapter.FUSED_GEMM = before


def implementations(device):
    """name -> fn(x, num_frames, *params): the baselines, our backends, and the linears-only reference line."""
    ref = lambda x, T, *p: st_adapter_reference(x, T, *p)
    impls = {"reference eager": ref, "reference compiled": torch.compile(ref), "shift eager": shift_adapter,
             "shift compiled": torch.compile(shift_adapter)}
    available = {capability.name for capability in available_on(device)}
    if "triton" in available:
        impls["triton"] = lambda x, T, *p: st_adapter(x, T, *p, backend="triton")
        if device == "cuda":
            impls["triton, fused down-projection"] = _triton_fused_gemm
    if device in available:
        impls[f"compiled {device}"] = lambda x, T, *p: st_adapter(x, T, *p, backend=device)
    # Not an adapter: its two Linear layers and the residual alone, the GEMM-bound part every version does.
    impls["linears only (no conv/act)"] = linears_only
    return impls


def linears_only(x, num_frames, w1, b1, wc, bc, w2, b2):
    return x + F.linear(F.linear(x, w1, b1), w2, b2)


CPU_ROUNDS = dict(quick=10, full=30)   # alternating rounds per (config, dtype, mode) on the CPU
MIN_SAMPLE_MS = 20.0                   # a CPU sample repeats a call until it lasts at least this long


def timer(device, quick):
    """time_ms(fn) -> (median ms, (low, high)) of one callable: triton.testing.do_bench (20th and 80th
    percentiles) on a GPU; on the CPU the median of repeated samples (quartiles)."""
    if device == "cuda":
        import triton.testing

        def time_ms(fn):
            low, median, high = triton.testing.do_bench(fn, warmup=25 if quick else 100, rep=100 if quick else 500,
                                                        quantiles=[0.2, 0.5, 0.8])
            return median, (low, high)
        return time_ms

    def time_ms(fn):
        samples = interleaved_cpu_samples({"fn": fn}, CPU_ROUNDS["quick" if quick else "full"])["fn"]
        return _median_and_quartiles(samples)
    return time_ms


def _calls_per_sample(fn):
    """How many calls of fn (already warm) one CPU sample repeats so that it lasts >= MIN_SAMPLE_MS."""
    start = time.perf_counter()
    fn()
    once = (time.perf_counter() - start) * 1e3
    return max(1, int(MIN_SAMPLE_MS / max(once, 1e-3)) + 1) if once < MIN_SAMPLE_MS else 1


def interleaved_cpu_samples(steps, rounds, on_round=None):
    """{name: [ms per call, one per round]} of callables timed in alternating rounds (each round times every
    callable once, in a rotating order), so that a busy or throttled machine slows them all alike. Each is
    warmed up (compilation) first; a sample repeats calls until it lasts MIN_SAMPLE_MS. `on_round()` is
    called after each round (progress)."""
    for fn in steps.values():
        fn()
        fn()
    calls = {name: _calls_per_sample(fn) for name, fn in steps.items()}
    names, samples = list(steps), {name: [] for name in steps}
    for round_index in range(rounds):
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            start = time.perf_counter()
            for _ in range(calls[name]):
                steps[name]()
            samples[name].append((time.perf_counter() - start) * 1e3 / calls[name])
        if on_round is not None:
            on_round()
    return samples


def _median_and_quartiles(samples):
    if len(samples) < 2:
        return samples[0], (samples[0], samples[0])
    low, _, high = statistics.quantiles(samples, n=4)
    return statistics.median(samples), (low, high)


def measure_ceilings(device, time_ms):
    """(bytes/s of a large device copy, counting read + write; flop/s of a large bf16/fp32 GEMM). On the
    CPU from the fastest of alternating samples: a ceiling is the best the machine does, and a median
    taken while something else runs would put the floor above what the adapters then measure."""
    n = (1 << 28) if device == "cuda" else (1 << 24)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    size = 8192 if device == "cuda" else 1024
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    steps = dict(copy=lambda: dst.copy_(src), gemm=lambda: a @ b)
    if device == "cuda":
        copy_ms, gemm_ms = (time_ms(step)[0] for step in steps.values())
    else:
        copy_ms, gemm_ms = (min(samples) for samples in interleaved_cpu_samples(steps, CPU_ROUNDS["quick"]).values())
    return 2 * src.numel() * src.element_size() / (copy_ms * 1e-3), 2 * size ** 3 / (gemm_ms * 1e-3)


def si(value, unit):
    """`value` with an SI prefix chosen for it: si(1.45e11, "FLOP/s") == "145 GFLOP/s"."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def floor_ms(mode, frames, tokens, channels, adapter_channels, itemsize, bandwidth, flop_rate):
    """Each input read once, each output written once; two GEMMs forward, four backward."""
    x_bytes = frames * tokens * channels * itemsize
    rows = frames * (tokens - 1)
    gemm = 2 * rows * channels * adapter_channels
    bytes_, flops = (2 * x_bytes, 2 * gemm) if mode == "fwd" else (4 * x_bytes, 6 * gemm)
    return 1e3 * max(bytes_ / bandwidth, flops / flop_rate)


def case_step(fn, mode, x, params, grad_y, num_frames):
    """The callable that one (implementation, mode) row times."""
    if mode == "fwd":
        def forward():
            with torch.no_grad():
                return fn(x, num_frames, *params)
        return forward

    def forward_backward():
        # Gradients returned, not accumulated into .grad: a training step's activations pass their gradient
        # on, and its parameters' gradients start from None, so no accumulating add belongs in the timing.
        return torch.autograd.grad(fn(x, num_frames, *params), [x, *params], grad_y, allow_unused=True)
    return forward_backward


def bench_case(name, fn, mode, x, params, grad_y, num_frames, time_ms):
    return time_ms(case_step(fn, mode, x, params, grad_y, num_frames))


def graph_time_ms(step, quick=False):
    """GPU time of `step` without its host work: median replay time of a CUDA graph of it."""
    import triton.testing
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):   # warm-up outside the graph: autotuning, compilation, lazy allocations
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return triton.testing.do_bench(graph.replay, warmup=10 if quick else 50, rep=50 if quick else 200,
                                   return_mode="median")


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true", help="fewer repeats, the small config only (smoke runs)")
    parser.add_argument("--out", help="JSON file to write; rows of an existing file are kept unless re-measured")
    parser.add_argument("--save", action="store_true", help="--out benchmarks/results/<device-slug>.json")
    parser.add_argument("--configs", nargs="*", help=f"subset of config names (GPU: {', '.join(GPU_CONFIGS)}; CPU: "
                        f"{', '.join(CPU_CONFIGS)}); default: all, the small one with --quick")
    parser.add_argument("--dtypes", nargs="*", choices=["bfloat16", "float16", "float32"],
                        help="default: bfloat16 float16 on a GPU, float32 on the CPU")
    parser.add_argument("--e2e", action="store_true",
                        help="also time one training step of the authors' model (see st_adapter_fast/bench/e2e.py)")
    parser.add_argument("--e2e-only", action="store_true", help="the training step only, no microbenchmarks")
    parser.add_argument("--e2e-clips", type=positive_int, nargs="+", help="clips per step, one run per number; default on a "
                        "GPU: 8, 32 and 64 if it fits, each with the variants its goals need (the largest batch: all); "
                        "on the CPU: 2")
    parser.add_argument("--e2e-variants", nargs="*", help="subset of the e2e variants (default: all)")
    parser.add_argument("--e2e-steps", type=positive_int, help="timed steps per variant (default: 10 on a GPU, 5 on the CPU)")
    parser.add_argument("--e2e-compile-backend", default="inductor", help="torch.compile backend of the compiled "
                        "variants (aot_eager_decomp_partition: AOTAutograd's graphs as inductor partitions them, run op "
                        "by op, so that live tensors can be counted; no speed)")
    parser.add_argument("--rounds", type=positive_int, help=f"CPU: alternating timing rounds per case (default: "
                        f"{CPU_ROUNDS['full']}, {CPU_ROUNDS['quick']} with --quick)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def device_slug(device_name):
    return "".join(c if c.isalnum() else "-" for c in device_name.lower()).strip("-")


def adapter_inputs(clips, frames, tokens, channels, adapter_channels, device, dtype):
    """Random x (requiring grad), the six parameters (requiring grad) and a grad_y for one benchmark config."""
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(clips * frames, tokens, channels, device=device, dtype=dtype, generator=gen).requires_grad_()
    params = [(torch.randn(*shape, device=device, dtype=dtype, generator=gen) * scale).requires_grad_()
              for shape, scale in [((adapter_channels, channels), channels ** -0.5), ((adapter_channels,), 0.1),
                                   ((adapter_channels, 1, 3, 1, 1), 0.5), ((adapter_channels,), 0.1),
                                   ((channels, adapter_channels), adapter_channels ** -0.5), ((channels,), 0.1)]]
    return x, params, torch.randn_like(x)


COLUMNS = (("config", 8), ("dtype", 8), ("mode", 7), ("implementation", 28), ("median ms", 10),
           ("spread ms (p25-p75)", 20), ("vs authors'", 11), ("floor ms", 9), ("x floor", 8), ("saved MiB", 9),
           ("graph ms", 9))


def _row_text(cells):
    return "  ".join(str(cell).rjust(width) if i >= 4 else str(cell).ljust(width)
                     for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS))).rstrip()


def header_text():
    """The column labels of the printed table (CPU spreads are quartiles, GPU ones the 20th-80th percentiles)."""
    return _row_text([name for name, _ in COLUMNS])


def _time_implementations(steps, device, time_ms, rounds, report, progress):
    """{name: (median, spread, speedup spread or None)}: on the CPU in alternating rounds, with the speedup
    as the median of per-round ratios to the first implementation; on a GPU one after the other. A
    callable that cannot run here is reported and left out."""
    runnable = {}
    for name, step in steps.items():
        try:
            step()
        except Exception as e:  # a baseline that cannot run here is reported, not fatal
            report(f"{name}: failed: {type(e).__name__}: {e}")
        else:
            runnable[name] = step
    if device == "cuda":
        out = {}
        for name, step in runnable.items():
            out[name] = time_ms(step) + (None,)
            progress.update()
        return out
    samples = interleaved_cpu_samples(runnable, rounds, on_round=progress.update)
    first = next(iter(samples), None)
    out = {}
    for name, times in samples.items():
        ratios = [b / t for b, t in zip(samples[first], times)]
        out[name] = _median_and_quartiles(times) + (_median_and_quartiles(ratios),)
    return out


def bench_config(config, shape, dtype, device, impls, time_ms, bandwidth, flop_rate, quick=False, rounds=None,
                 progress=None):
    """Rows for every implementation and mode of one config; the first implementation is the baseline.
    Prints each row under `header_text()`'s columns; `progress` (a tqdm bar) advances per CPU round or
    GPU implementation."""
    import tqdm
    write = tqdm.tqdm.write
    clips, frames, tokens, channels, adapter_channels = shape
    x, params, grad_y = adapter_inputs(*shape, device, dtype)
    rounds = rounds or CPU_ROUNDS["quick" if quick else "full"]
    if progress is None:
        progress = tqdm.tqdm(disable=True)
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        floor = floor_ms(mode, clips * frames, tokens, channels, adapter_channels, x.element_size(),
                         bandwidth, flop_rate)
        steps = {name: case_step(fn, mode, x, params, grad_y, frames) for name, fn in impls.items()}
        timings = _time_implementations(steps, device, time_ms, rounds,
                                        lambda text: write(f"  {config} {dtype} {mode} {text}"), progress)
        baseline = None
        for name, (median, spread, speedup) in timings.items():
            graph = None
            if device == "cuda":
                try:
                    graph = graph_time_ms(steps[name], quick)
                except Exception as e:  # e.g. a path that synchronises: reported, the launched time stands
                    write(f"  {config} {dtype} {mode} {name}: CUDA graph failed: {type(e).__name__}: {e}")
            baseline = baseline or (name, median)
            fn = impls[name]
            saved = saved_activation_bytes(lambda: fn(x, frames, *params), x, *params) if mode != "fwd" else None
            row = dict(config=config, dtype=str(dtype).replace("torch.", ""), mode=mode, impl=name,
                       median_ms=median, spread_ms=spread, graph_ms=graph,
                       graph_over_floor=graph / floor if graph else None, baseline=baseline[0],
                       speedup_vs_reference=speedup[0] if speedup else baseline[1] / median,
                       floor_ms=floor, over_floor=median / floor,
                       saved_bytes=saved, shape=dict(clips=clips, frames=frames, tokens=tokens, channels=channels,
                                                     adapter_channels=adapter_channels))
            if speedup:
                row.update(speedup_spread=speedup[1], rounds=rounds)
            rows.append(row)
            write(_row_text([config, row["dtype"], mode, name, f"{median:.3f}", f"{spread[0]:.3f}-{spread[1]:.3f}",
                             f"{row['speedup_vs_reference']:.2f}x", f"{floor:.3f}", f"{row['over_floor']:.2f}x",
                             "" if saved is None else f"{saved / 2**20:.1f}",
                             "" if graph is None else f"{graph:.3f}"]))
    return rows


def _merged_e2e(old, new):
    """The e2e result to write: `new`, with the batches of `old` that it did not measure when both are runs of
    the same model and compile backend (separate commands then fill one file, e.g. 8, 32 and 64 clips)."""
    if not new or not old:
        return new or old
    same = all(old.get(k) == new.get(k) for k in ("model", "model_kwargs", "img_size", "frames", "compile_backend"))
    if not same or "by_clips" not in old:
        return new
    return dict(new, by_clips=dict(old["by_clips"], **new["by_clips"]),
                goal_checks=dict(old.get("goal_checks", {}), **new["goal_checks"]))


def write_results(path, result, quiet=False):
    """Write `result`, keeping rows of an existing file for (config, dtype, mode, impl) not measured now."""
    key = lambda r: (r.get("config"), r.get("dtype"), r.get("mode"), r.get("impl"))
    if os.path.exists(path):
        old = _read_results(path)
        fresh = {key(r) for r in result["rows"]}
        kept = {k: v for k, v in old.items() if k not in result}   # e.g. the ceilings of an earlier microbenchmark run
        result = dict(kept, **result)
        result.update(rows=[r for r in old.get("rows", []) if key(r) not in fresh] + result["rows"],
                      e2e=_merged_e2e(old.get("e2e"), result.get("e2e")))
    write_files({path: json.dumps(result, indent=1)})   # atomic: an interrupted write keeps the previous file
    if not quiet:
        print(f"wrote {path}")


@contextlib.contextmanager
def _quiet_cuda_home_warning():
    """Silence torch.utils.cpp_extension's "No CUDA runtime is found, using CUDA_HOME=..." warning, which
    importing it (torch.compile's CPU baselines do) logs on a machine without a GPU: nothing here needs CUDA."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run(args):
    """Run the benchmark that `args` (from add_arguments) asks for; returns the result dict (and writes
    it to --out / --save)."""
    with _quiet_cuda_home_warning():
        return _run(args)


def _run(args):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    configs = GPU_CONFIGS if device == "cuda" else CPU_CONFIGS
    if args.configs:
        unknown = sorted(set(args.configs) - set(configs))
        if unknown:
            raise ValueError(f"--configs: unknown on {device}: {unknown}; known: {sorted(configs)}")
        configs = {k: v for k, v in configs.items() if k in args.configs}
    elif args.quick:
        configs = {"small": configs["small"]}
    dtypes = [getattr(torch, d) for d in args.dtypes] if args.dtypes else (
        [torch.bfloat16, torch.float16] if device == "cuda" else [torch.float32])
    device_name = torch.cuda.get_device_name() if device == "cuda" else cpu_name()
    out = args.out or (os.path.join("benchmarks", "results", device_slug(device_name) + ".json") if args.save else None)
    _check_output_options(args, out)
    result = dict(device=device_name, torch=torch.__version__, cuda=torch.version.cuda,
                  triton=_triton_version(), python=platform.python_version(), command=" ".join(sys.argv),
                  date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), rows=[])
    if not getattr(args, "e2e_only", False):
        from tqdm import tqdm
        time_ms = timer(device, args.quick)
        bandwidth, flop_rate = measure_ceilings(device, time_ms)
        rounds = getattr(args, "rounds", None) or CPU_ROUNDS["quick" if args.quick else "full"]
        print(f"device: {device_name}; measured copy {si(bandwidth, 'B/s')} (read + write), GEMM "
              f"{si(flop_rate, 'FLOP/s')} ({'bf16 8192' if device == 'cuda' else 'fp32 1024'}^3)")
        print("timing: " + ("triton.testing.do_bench, spread = 20th-80th percentile" if device == "cuda" else
                            f"{rounds} alternating rounds, median; spread = quartiles; vs authors' = median of "
                            "per-round ratios"))
        print(header_text())
        impls = implementations(device)
        per_case = len(impls) if device == "cuda" else rounds
        result.update(copy_bandwidth_Bps=bandwidth, gemm_flops=flop_rate)
        with tqdm(total=2 * len(configs) * len(dtypes) * per_case, desc="bench",
                  unit="impl" if device == "cuda" else "round", file=sys.stderr,
                  disable=not getattr(args, "progress", True)) as progress:
            for config, shape in configs.items():
                for dtype in dtypes:
                    # Compiled baselines start afresh for each shape: otherwise dynamo's cache, shared by every
                    # torch.compile of one function, recompiles the second shape for dynamic shapes (slower code).
                    torch._dynamo.reset()
                    impls = implementations(device)
                    result["rows"] += bench_config(config, shape, dtype, device, impls, time_ms, bandwidth,
                                                   flop_rate, args.quick, rounds, progress)
                    if out:   # after each config: what a long run measured survives its interruption
                        write_results(out, result, quiet=True)
    if args.e2e or getattr(args, "e2e_only", False):
        from .e2e import end_to_end
        versions = dict(device=device_name, torch=result["torch"], cuda=result["cuda"], triton=result["triton"],
                        date=result["date"])

        def save_e2e(e2e):
            result["e2e"] = dict(e2e, **versions)
            if out:
                write_results(out, result, quiet=True)
        e2e = end_to_end(device, quick=args.quick, clips=getattr(args, "e2e_clips", None),
                         variants=getattr(args, "e2e_variants", None), steps=getattr(args, "e2e_steps", None),
                         compile_backend=getattr(args, "e2e_compile_backend", "inductor"), on_progress=save_e2e)
        save_e2e(e2e)
        print(e2e_goals_text(e2e))
    if out:
        write_results(out, result)
    return result


def _check_output_options(args, out):
    """Before any timing: the e2e variants and the compile backend asked for exist, and the results file can be
    written."""
    if getattr(args, "e2e_variants", None):
        from .e2e import VARIANTS
        unknown = sorted(set(args.e2e_variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"--e2e-variants: unknown {unknown}; known: {list(VARIANTS)}")
    backend, known = getattr(args, "e2e_compile_backend", "inductor"), torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(f"--e2e-compile-backend: unknown torch.compile backend {backend!r}; known: "
                         f"{', '.join(name for name in known if 'TESTING' not in name)}")
    if out:
        check_results_file(out, merged=True)


def check_results_file(path, merged=False):
    """Before any timing (a failure at the end would lose it all): `path` (--out) is a file that can be written,
    in a writable folder, and, if the results are `merged` into it (write_results), an existing one is a
    results file. ValueError / OSError naming --out otherwise."""
    if os.path.isdir(path):
        raise ValueError(f"--out {path} is a folder; name the JSON file to write")
    check_writable_folder(os.path.dirname(os.path.abspath(path)), "--out's folder")
    if merged and os.path.lexists(path):
        _read_results(path)


def _read_results(path):
    """The results file `path` as a dict; ValueError naming --out if it is not one (not JSON, not an object)."""
    text = read_text(path, "--out")
    try:
        results = json.loads(text)
    except ValueError as error:
        raise ValueError(f"--out {path}: not a results file (not valid JSON: {error}); name another file") from None
    if not isinstance(results, dict):
        raise ValueError(f"--out {path}: not a results file (a JSON {type(results).__name__}, not an object); name "
                         "another file")
    return results


def e2e_goals_text(e2e):
    """The end-to-end goals, one line per goal and batch: the ratio, the goal and whether it is met."""
    lines = ["e2e goals (ratio, goal, met):"]
    for clips, measured in e2e["goal_checks"].items():
        for name, g in measured.items():
            verdict = "" if g["met"] is None else ("  met" if g["met"] else "  MISSED")
            lines.append(f"  {clips:>3s} clips  {name:46s} {g['value']:6.3f}  {g['goal'] or '':8s}{verdict}")
    return "\n".join(lines)


def cpu_name():
    """The CPU's model and the machine's core count, e.g. "AMD EPYC 7B13 (2 cores)"."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "cpu"
    return f"{model} ({os.cpu_count()} cores)"


def _triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
