"""The integrations with model libraries: adapters in timm, Hugging Face and open_clip backbones, VideoClassifier."""
from . import timm  # noqa: F401 -- `st_adapter_fast.integrations.timm.<name>`, the public names' former home
