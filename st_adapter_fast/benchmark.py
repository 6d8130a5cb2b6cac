"""Microbenchmark of one ST-Adapter: every available backend against the authors' eager computation.

    st-adapter-fast bench [--quick] [--out benchmarks/results/<device>.json]
    python benchmarks/bench_adapter.py ...          (the same)

For each config, dtype and mode (fwd, fwd+bwd) it times, side by side in one process on the same inputs:
the reference (authors' permute + Conv3d path) eager and under torch.compile, a shift-based pure PyTorch
version (kt shifted multiply-adds in the token layout) eager and compiled, the fused Triton path (on a
GPU also with the down-projection GEMMs inside its kernels) and the compiled kernels (csrc/); and, as a
practical floor, the adapter's two Linear layers and residual alone (no conv, no activation). Medians
come from triton.testing.do_bench on a GPU, a repeat loop on the CPU; on a GPU each row also gets the
GPU time of a CUDA-graph replay of its step (graph_ms), which leaves the host's launch work out.
Next to each number: the floor, max(bytes that must move / measured copy bandwidth,
flops / measured GEMM rate), and bytes saved for backward per adapter.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from .activations import apply_activation
from .compiled import extension_info
from .measure import saved_activation_bytes
from .ops import st_adapter
from .reference import st_adapter_reference

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
    from .triton import adapter
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
    if device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        impls["triton"] = lambda x, T, *p: st_adapter(x, T, *p, backend="triton")
    if device == "cuda":
        impls["triton, fused down-projection"] = _triton_fused_gemm
    info = extension_info()
    if info["available"] and (device == "cpu" or info["with_cuda"]):
        impls[f"compiled {device}"] = lambda x, T, *p: st_adapter(x, T, *p, backend=device)
    # Not an adapter: its two Linear layers and the residual alone, the GEMM-bound part every version does.
    impls["linears only (no conv/act)"] = linears_only
    return impls


def linears_only(x, num_frames, w1, b1, wc, bc, w2, b2):
    return x + F.linear(F.linear(x, w1, b1), w2, b2)


def timer(device, quick):
    if device == "cuda":
        import triton.testing

        def time_ms(fn):
            low, median, high = triton.testing.do_bench(fn, warmup=25 if quick else 100, rep=100 if quick else 500,
                                                        quantiles=[0.2, 0.5, 0.8])
            return median, (low, high)
        return time_ms

    def time_ms(fn):
        fn()
        samples = []
        for _ in range(3 if quick else 10):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples), (min(samples), max(samples))
    return time_ms


def measure_ceilings(device, time_ms):
    """(bytes/s of a large device copy, counting read + write; flop/s of a large bf16/fp32 GEMM)."""
    n = (1 << 28) if device == "cuda" else (1 << 24)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    copy_ms, _ = time_ms(lambda: dst.copy_(src))
    size = 8192 if device == "cuda" else 1024
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    gemm_ms, _ = time_ms(lambda: a @ b)
    return 2 * src.numel() * src.element_size() / (copy_ms * 1e-3), 2 * size ** 3 / (gemm_ms * 1e-3)


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
        fn(x, num_frames, *params).backward(grad_y)
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
    parser.add_argument("--configs", nargs="*", help="subset of config names")
    parser.add_argument("--dtypes", nargs="*", choices=["bfloat16", "float16", "float32"],
                        help="default: bfloat16 float16 on a GPU, float32 on the CPU")
    parser.add_argument("--e2e", action="store_true",
                        help="also time one training step of the authors' model (see st_adapter_fast/e2e.py)")
    parser.add_argument("--e2e-only", action="store_true", help="the training step only, no microbenchmarks")
    parser.add_argument("--e2e-clips", type=int, help="clips per step; default on a GPU: 8, then the largest "
                        "of 64 / 32 that fits")
    parser.add_argument("--e2e-variants", nargs="*", help="subset of the e2e variants (default: all)")


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


def bench_config(config, shape, dtype, device, impls, time_ms, bandwidth, flop_rate, quick=False):
    """Rows for every implementation and mode of one config; the first implementation is the baseline."""
    clips, frames, tokens, channels, adapter_channels = shape
    x, params, grad_y = adapter_inputs(*shape, device, dtype)
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        floor = floor_ms(mode, clips * frames, tokens, channels, adapter_channels, x.element_size(),
                         bandwidth, flop_rate)
        baseline = None
        for name, fn in impls.items():
            step = case_step(fn, mode, x, params, grad_y, frames)
            try:
                median, spread = time_ms(step)
            except Exception as e:  # a baseline that cannot run here is reported, not fatal
                print(f"  {config} {dtype} {mode} {name}: failed: {type(e).__name__}: {e}")
                continue
            graph = None
            if device == "cuda":
                try:
                    graph = graph_time_ms(step, quick)
                except Exception as e:  # e.g. a path that synchronises: reported, the launched time stands
                    print(f"  {config} {dtype} {mode} {name}: CUDA graph failed: {type(e).__name__}: {e}")
            baseline = baseline or (name, median)
            saved = saved_activation_bytes(lambda: fn(x, frames, *params), x, *params) if mode != "fwd" else None
            row = dict(config=config, dtype=str(dtype).replace("torch.", ""), mode=mode, impl=name,
                       median_ms=median, spread_ms=spread, graph_ms=graph,
                       graph_over_floor=graph / floor if graph else None, baseline=baseline[0],
                       speedup_vs_reference=baseline[1] / median, floor_ms=floor, over_floor=median / floor,
                       saved_bytes=saved, shape=dict(clips=clips, frames=frames, tokens=tokens, channels=channels,
                                                     adapter_channels=adapter_channels))
            rows.append(row)
            in_graph = f"  graph {graph:7.3f} ms ({graph / floor:4.2f}x floor)" if graph else ""
            print(f"{config:8s} {row['dtype']:8s} {mode:7s} {name:28s} {median:9.3f} ms  "
                  f"x{row['speedup_vs_reference']:5.2f}  floor {floor:.3f} ms  ({row['over_floor']:.2f}x){in_graph}"
                  + (f"  saved {saved / 2**20:.1f} MiB" if saved is not None else ""), flush=True)
    return rows


def write_results(path, result, quiet=False):
    """Write `result`, keeping rows of an existing file for (config, dtype, mode, impl) not measured now."""
    key = lambda r: (r.get("config"), r.get("dtype"), r.get("mode"), r.get("impl"))
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        fresh = {key(r) for r in result["rows"]}
        kept = {k: v for k, v in old.items() if k not in result}   # e.g. the ceilings of an earlier microbenchmark run
        result = dict(kept, **result)
        result.update(rows=[r for r in old.get("rows", []) if key(r) not in fresh] + result["rows"],
                      e2e=result.get("e2e") or old.get("e2e"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    if not quiet:
        print(f"wrote {path}")


def run(args):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    configs = GPU_CONFIGS if device == "cuda" else CPU_CONFIGS
    if args.configs:
        configs = {k: v for k, v in configs.items() if k in args.configs}
    elif args.quick:
        configs = {"small": configs["small"]}
    dtypes = [getattr(torch, d) for d in args.dtypes] if args.dtypes else (
        [torch.bfloat16, torch.float16] if device == "cuda" else [torch.float32])
    device_name = torch.cuda.get_device_name() if device == "cuda" else _cpu_name()
    out = args.out or (os.path.join("benchmarks", "results", device_slug(device_name) + ".json") if args.save else None)
    result = dict(device=device_name, torch=torch.__version__, cuda=torch.version.cuda,
                  triton=_triton_version(), python=platform.python_version(), command=" ".join(sys.argv),
                  date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), rows=[])
    if not getattr(args, "e2e_only", False):
        time_ms = timer(device, args.quick)
        bandwidth, flop_rate = measure_ceilings(device, time_ms)
        print(f"device: {device_name}; copy {bandwidth / 1e12:.2f} TB/s, GEMM {flop_rate / 1e12:.1f} TFLOP/s")
        impls = implementations(device)
        result.update(copy_bandwidth_Bps=bandwidth, gemm_flops=flop_rate)
        for config, shape in configs.items():
            for dtype in dtypes:
                result["rows"] += bench_config(config, shape, dtype, device, impls, time_ms, bandwidth, flop_rate,
                                               args.quick)
                if out:   # after each config: what a long run measured survives its interruption
                    write_results(out, result, quiet=True)
    if args.e2e or getattr(args, "e2e_only", False):
        from .e2e import end_to_end
        result["e2e"] = dict(end_to_end(device, quick=args.quick, clips=getattr(args, "e2e_clips", None),
                                        variants=getattr(args, "e2e_variants", None)),
                             device=device_name, torch=result["torch"], cuda=result["cuda"], triton=result["triton"],
                             date=result["date"])
    if out:
        write_results(out, result)
    return result


def _cpu_name():
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
