"""Old path of st_adapter_fast.video.demo: an alias of it, kept for outside code."""
import sys

from .video import demo as _module

sys.modules[__name__] = _module
