"""The video application on top of the kernel library: video data (data.py), the synthetic temporal-order
task (synthetic.py), training and evaluation (train/), the demo (demo.py). Needs the `[video]` extra.

Importing this package teaches `from_pretrained` to read a train run's adapters/ folder from its
train_config.json (older runs recorded no build arguments in adapter_config.json); it imports none of the
extra's packages."""
import os

from ..integrations.pretrained import register_folder_reader


@register_folder_reader
def _train_folder_arguments(folder):
    if not os.path.isfile(os.path.join(folder, "train_config.json")):   # video.train.TRAIN_CONFIG_NAME
        return None
    from .train.model import train_folder_arguments   # the [video] extra's modules, only for such a folder
    return train_folder_arguments(folder)
