"""GPU time of one adapter's forward+backward with the CPU taken out: the step is captured in a CUDA
graph and its replays are timed, next to the ordinary (CPU-launched) timing of the same step.

    python benchmarks/graph_time.py [--config vit-b16] [--dtype bfloat16]

The gap between the two columns is launch/dispatch overhead, which a model with enough work per
step hides (or torch.compile / CUDA graphs remove). `st-adapter-fast bench` stores the same GPU time in
every row (graph_ms); this script is the short version for two implementations.
"""
import argparse
import os
import sys

import torch
import triton.testing

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import st_adapter_fast as saf  # noqa: E402
from st_adapter_fast.reference import st_adapter_reference  # noqa: E402
from st_adapter_fast.bench.benchmark import GPU_CONFIGS, adapter_inputs, case_step, graph_time_ms  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", nargs="*", default=["vit-b16", "vit-l14"])
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    impls = {"reference eager": lambda x, T, *p: st_adapter_reference(x, T, *p),
             "triton": lambda x, T, *p: saf.st_adapter(x, T, *p, backend="triton")}
    print(f"{'config':8s} {'impl':16s} {'mode':8s} {'launched ms':>12s} {'graph ms':>10s}")
    for config in args.config:
        clips, frames, tokens, channels, ca = GPU_CONFIGS[config]
        x, params, g = adapter_inputs(clips, frames, tokens, channels, ca, "cuda", dtype)
        for name, fn in impls.items():
            for mode in ("fwd", "fwd+bwd"):
                step = case_step(fn, mode, x, params, g, frames)
                launched = triton.testing.do_bench(step, warmup=50, rep=300, return_mode="median")
                try:
                    in_graph = f"{graph_time_ms(step):10.3f}"
                except Exception as e:  # report, keep going
                    in_graph = f"failed: {type(e).__name__}: {str(e)[:80]}"
                print(f"{config:8s} {name:16s} {mode:8s} {launched:12.3f} {in_graph}", flush=True)


if __name__ == "__main__":
    main()
