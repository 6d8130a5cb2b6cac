"""Entry point kept beside the other benchmark scripts; the code is st_adapter_fast/bench/benchmark.py
(also `st-adapter-fast bench`)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from st_adapter_fast.bench.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main()
