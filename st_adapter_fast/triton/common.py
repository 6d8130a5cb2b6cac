"""Old path of st_adapter_fast.kernels.triton.common: an alias of it, kept for outside code."""
import sys

from ..kernels.triton import common as _module

sys.modules[__name__] = _module
