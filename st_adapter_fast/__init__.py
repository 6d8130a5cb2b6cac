"""st-adapter-fast: a fused, drop-in ST-Adapter (Pan et al., NeurIPS 2022) for PyTorch."""
from .module import STAdapter
from .ops import BACKENDS, st_adapter
from .reference import STAdapterReference

__version__ = "0.1.0"
__all__ = ["STAdapter", "STAdapterReference", "st_adapter", "BACKENDS", "__version__"]
