"""Old path of st_adapter_fast.bench.e2e: an alias of it, kept for outside code."""
import sys

from .bench import e2e as _module

sys.modules[__name__] = _module
