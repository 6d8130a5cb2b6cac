"""Old path of st_adapter_fast.kernels.triton.temporal_conv: an alias of it, kept for outside code."""
import sys

from ..kernels.triton import temporal_conv as _module

sys.modules[__name__] = _module
