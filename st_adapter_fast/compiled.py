"""Old path of st_adapter_fast.kernels.compiled: an alias of it, kept for outside code."""
import sys

from .kernels import compiled as _module

sys.modules[__name__] = _module
