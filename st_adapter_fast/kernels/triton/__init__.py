"""Triton kernels. Import only where triton is installed; `ops.py` decides when they are used."""
