"""Old path of st_adapter_fast.bench.parity: an alias of it, kept for outside code."""
import sys

from .bench import parity as _module

sys.modules[__name__] = _module
