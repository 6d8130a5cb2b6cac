"""The conv + activation kernels alone (compiled CUDA and Triton), forward and backward, against the bytes
they must move: achieved bandwidth over the measured copy bandwidth, for several CUDA block sizes.

    python benchmarks/cuda_kernel_sweep.py [--configs vit-b16 vit-l14] [--dtypes bfloat16 float16] [--json out.json]
    python benchmarks/cuda_kernel_sweep.py --device cpu --configs smoke   (the code path on the CPU: the compiled
                                                                          CPU kernels and interpreted Triton)

Bytes: forward reads h and writes a; backward reads grad_a and h and writes grad_h and a (the weight and
bias partial sums are small). Each kernel is timed with triton.testing.do_bench (median) on tensors of the
benchmark configs' patch-row shapes. The last line names the fastest block size of each direction.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import triton.testing

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from st_adapter_fast.bench.benchmark import GPU_CONFIGS, measure_ceilings  # noqa: E402
from st_adapter_fast.kernels.triton.adapter import TRITON_KERNELS  # noqa: E402

THREADS = (64, 128, 256)   # the backward kernel takes at most 256 (see csrc/temporal_conv_cuda.cu)
CONFIGS = dict(GPU_CONFIGS, smoke=(1, 4, 17, 32, 16))


def tensors(config, dtype, device):
    clips, frames, tokens, _, ca = CONFIGS[config]
    shape = (clips * frames, tokens - 1, ca)
    make = lambda: torch.randn(shape, device=device, dtype=dtype)
    weight = (0.5 * torch.randn(ca, 3, device=device)).to(dtype)
    bias = (0.1 * torch.randn(ca, device=device)).to(dtype)
    return dict(h=make(), grad_a=make(), out=make(), grad_h=make(), a=make(), weight=weight, bias=bias,
                frames=frames)


def timers(t):
    ops = torch.ops.st_adapter_fast
    return {
        ("fwd", "compiled"): lambda: ops.temporal_conv_act_out(t["h"], t["weight"], t["bias"], t["frames"], "gelu", t["out"]),
        ("bwd", "compiled"): lambda: ops.temporal_conv_act_backward_out(t["grad_a"], t["h"], t["weight"], t["bias"],
                                                                   t["frames"], "gelu", t["grad_h"], t["a"]),
        ("fwd", "triton"): lambda: TRITON_KERNELS.conv_act_forward(
            x_patch=t["h"], fc1_weight=t["weight"], fc1_bias=t["bias"], conv_weight=t["weight"], conv_bias=t["bias"],
            h=t["h"], a=t["out"], num_frames=t["frames"], activation="gelu", store_h=False),
        ("bwd", "triton"): lambda: TRITON_KERNELS.conv_act_backward(
            g_patch=t["grad_a"], fc2_weight=t["weight"], h=t["h"], conv_weight=t["weight"], conv_bias=t["bias"],
            a=t["a"], grad_h=t["grad_h"], num_frames=t["frames"], activation="gelu"),
    }


def timer(device):
    if device == "cuda":
        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")

    def time_ms(fn):
        fn()
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return time_ms


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=["vit-b16", "vit-l14"])
    parser.add_argument("--dtypes", nargs="*", default=["bfloat16", "float16"])
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args(argv)
    bench = timer(args.device)
    bandwidth, _ = measure_ceilings(args.device, lambda fn: (bench(fn), None))
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"{name}: copy {bandwidth / 1e12:.2f} TB/s")
    rows = []
    for config in args.configs:
        for dtype_name in args.dtypes:
            t = tensors(config, getattr(torch, dtype_name), args.device)
            size = t["h"].numel() * t["h"].element_size()
            for (direction, kernels), fn in timers(t).items():
                moved = (2 if direction == "fwd" else 4) * size
                variable = f"ST_ADAPTER_FAST_CUDA_{direction.upper()}_THREADS"
                for threads in (THREADS if kernels == "compiled" else (None,)):
                    if threads:
                        os.environ[variable] = str(threads)
                    ms = bench(fn)
                    os.environ.pop(variable, None)
                    row = dict(config=config, dtype=dtype_name, direction=direction, kernels=kernels,
                               threads=threads, ms=ms, bytes=moved, of_copy_bandwidth=moved / (ms * 1e-3) / bandwidth)
                    rows.append(row)
                    print(f"{config:8s} {dtype_name:9s} {direction} {kernels:8s} threads {str(threads):>4s}  "
                          f"{ms * 1e3:7.1f} us  {row['of_copy_bandwidth']:6.1%} of copy bandwidth", flush=True)
    best = {}
    for direction in ("fwd", "bwd"):
        by_threads = {n: statistics.mean(r["of_copy_bandwidth"] for r in rows
                                         if r["kernels"] == "compiled" and r["direction"] == direction and r["threads"] == n)
                      for n in THREADS}
        best[direction] = max(by_threads, key=by_threads.get)
    print(f"best CUDA threads per block: fwd {best['fwd']}, bwd {best['bwd']}")
    return best
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, torch=torch.__version__, copy_bandwidth_Bps=bandwidth,
                           rows=rows, best_threads=best), f, indent=1)


if __name__ == "__main__":
    main()
