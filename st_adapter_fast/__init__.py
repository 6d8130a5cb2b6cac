"""st-adapter-fast: a fused, drop-in ST-Adapter (Pan et al., NeurIPS 2022) for PyTorch."""
from . import video  # noqa: F401 -- lets from_pretrained read a train run's folder (imports no extra)
from .checkpoint import load_adapters, save_adapters
from .integrations.checkpointing import set_checkpointing
from .compiling import compile_model
from .convert import convert
from .integrations.pretrained import from_pretrained
from .integrations.adapters import (adapter_config, add_st_adapters, disable_adapters, remove_st_adapters,
                                    set_num_frames)
from .integrations.classifier import VideoClassifier, build_video_classifier
from .module import STAdapter
from .ops import BACKENDS, st_adapter
from .reference import STAdapterReference
from .report import ParameterReport, parameter_report

__version__ = "0.1.0"
__all__ = ["STAdapter", "STAdapterReference", "st_adapter", "BACKENDS", "convert", "parameter_report",
           "ParameterReport", "add_st_adapters", "remove_st_adapters", "disable_adapters", "set_num_frames",
           "adapter_config", "VideoClassifier", "build_video_classifier", "save_adapters", "load_adapters",
           "from_pretrained", "set_checkpointing", "compile_model", "__version__"]
