"""What differs between the model libraries ST-Adapters integrate with: creating a backbone from a name, its
own image feature, its head, its checkpointing switch and checkpoint files. One module per library, the same
functions in each; `integrations.backbones` puts them in its table."""
import importlib


def import_library(name, pip_name, extra):
    """The model library `name`, or an ImportError saying how to install it (pip, or this package's extra)."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"these models need {pip_name} ({error}): pip install {pip_name}, or install "
                          f"st-adapter-fast with its [{extra}] extra") from None
