"""Host time and ATen ops of one adapter forward + backward, each backend against the reference, fp32 and bf16
autocast: on tiny CPU tensors (alternating rounds, median of per-round ratios), and on the GPU when there is
one (with the kernels launched). See st_adapter_fast/bench/host.py.

    python benchmarks/host_overhead.py [--rounds 30] [--calls 50] [--device cpu|cuda] [--json out.json]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from st_adapter_fast.bench.host import main  # noqa: E402

if __name__ == "__main__":
    main()
