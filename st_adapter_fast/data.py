"""Old path of st_adapter_fast.video.data: an alias of it, kept for outside code."""
import sys

from .video import data as _module

sys.modules[__name__] = _module
