"""Where the Triton path spends its time: per-kernel CUDA times for each variant (fused GEMM in the
conv kernels or cuBLAS beside them), next to the plain cuBLAS GEMMs of the same shapes.

    python benchmarks/profile_triton.py [--config vit-b16] [--dtype bfloat16]
"""
import argparse
import os
import sys

import torch
import triton.testing

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import st_adapter_fast as saf  # noqa: E402
from st_adapter_fast.kernels.triton import adapter as triton_adapter  # noqa: E402
from st_adapter_fast.bench.benchmark import GPU_CONFIGS, adapter_inputs  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="vit-b16", choices=sorted(GPU_CONFIGS))
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    clips, frames, tokens, channels, ca = GPU_CONFIGS[args.config]
    x, params, g = adapter_inputs(clips, frames, tokens, channels, ca, "cuda", getattr(torch, args.dtype))
    bench = lambda fn: triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")

    rows = x.detach().view(-1, channels)
    w1 = params[0].detach()
    h = rows @ w1.t()
    print(f"cuBLAS x @ W1^T ({rows.shape[0]}x{channels}x{ca}): {bench(lambda: rows @ w1.t()):.3f} ms")
    print(f"cuBLAS h @ W1   ({rows.shape[0]}x{ca}x{channels}): {bench(lambda: h @ w1):.3f} ms")
    print(f"copy of x: {bench(lambda: x.detach().clone()):.3f} ms")

    def fwd():
        with torch.no_grad():
            saf.st_adapter(x, frames, *params, backend="triton")

    def train():
        saf.st_adapter(x, frames, *params, backend="triton").backward(g)

    for fused in (True, False):
        triton_adapter.FUSED_GEMM = fused
        fwd(), train()
        print(f"\n== FUSED_GEMM={fused}: fwd {bench(fwd):.3f} ms, fwd+bwd {bench(train):.3f} ms")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                train()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
