"""st-adapter-fast: a fused, drop-in ST-Adapter (Pan et al., NeurIPS 2022) for PyTorch."""
from .checkpoint import load_adapters, save_adapters
from .convert import convert
from .module import STAdapter
from .ops import BACKENDS, st_adapter
from .reference import STAdapterReference
from .report import ParameterReport, parameter_report

__version__ = "0.1.0"
__all__ = ["STAdapter", "STAdapterReference", "st_adapter", "BACKENDS", "convert", "parameter_report",
           "ParameterReport", "save_adapters", "load_adapters", "__version__"]
