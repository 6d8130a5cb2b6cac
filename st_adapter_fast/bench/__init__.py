"""Measuring tools: the adapter microbenchmark (benchmark.py), one training step end to end (e2e.py), and the
parity report against the float64 reference (parity.py), used by `st-adapter-fast check` and the tests."""
