"""Old path of st_adapter_fast.kernels.triton.adapter: an alias of it, kept for outside code."""
import sys

from ..kernels.triton import adapter as _module

sys.modules[__name__] = _module
