"""Old path of st_adapter_fast.video.synthetic: an alias of it, kept for outside code."""
import sys

from .video import synthetic as _module

sys.modules[__name__] = _module
