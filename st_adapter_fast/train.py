"""Old path of st_adapter_fast.video.train: an alias of it, kept for outside code."""
import sys

from .video import train as _module

sys.modules[__name__] = _module
