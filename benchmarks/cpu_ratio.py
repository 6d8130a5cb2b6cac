"""Side-by-side ratio of two adapter backends on the CPU, robust to a noisy 2-core machine.

    python benchmarks/cpu_ratio.py [--rounds 30] [--backend cpu] [--baseline reference]

Times fwd+bwd of one adapter (fp32, B=2 T=8 L=197 C=768 Ca=384, kernel (3,1,1), GELU; the issue's
CPU config) in alternating rounds, so that both see the same machine state, and reports the median of
the per-round ratios (baseline / backend) with its spread, next to the linears-only time (the adapter's
two Linear layers and residual: the GEMM-bound floor of any implementation).
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from st_adapter_fast.bench.benchmark import adapter_inputs, interleaved_cpu_samples, linears_only  # noqa: E402
from st_adapter_fast.ops import st_adapter  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--baseline", default="reference")
    args = parser.parse_args()
    x, params, grad_y = adapter_inputs(2, 8, 197, 768, 384, "cpu", torch.float32)
    fns = {name: (lambda x_, T, *p, b=name: st_adapter(x_, T, *p, backend=b)) for name in (args.baseline, args.backend)}
    fns["linears only"] = linears_only
    times = interleaved_cpu_samples({name: lambda fn=fn: fn(x, 8, *params).backward(grad_y) for name, fn in fns.items()},
                                    args.rounds)
    ratios = [b / f for b, f in zip(times[args.baseline], times[args.backend])]
    for name, samples in times.items():
        print(f"{name:14s} fwd+bwd median {statistics.median(samples):7.2f} ms  (min {min(samples):.2f}, "
              f"max {max(samples):.2f}, {len(samples)} rounds)")
    q = statistics.quantiles(ratios, n=4)
    print(f"ratio {args.baseline} / {args.backend}: median {statistics.median(ratios):.3f} "
          f"(quartiles {q[0]:.3f} .. {q[2]:.3f}); torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
