"""Fine-tune a frozen timm ViT with ST-Adapters on a video list, and evaluate it (see loop.py)."""
from .loop import *  # noqa: F401,F403
