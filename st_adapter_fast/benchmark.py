"""Old path of st_adapter_fast.bench.benchmark: an alias of it, kept for outside code."""
import sys

from .bench import benchmark as _module

sys.modules[__name__] = _module
