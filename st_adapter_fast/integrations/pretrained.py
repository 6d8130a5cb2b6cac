"""`from_pretrained`: rebuild a classifier made by `build_video_classifier` from the folder `save_adapters`
wrote, and load its adapters and head.

The folder's adapter_config.json records the build arguments (`video_classifier`). A folder written by an
application in another form (an older `train` run's adapters/ folder, with only its train_config.json) is read
by a reader that the application registers (`register_folder_reader`): the integrations never import the
application.
"""
import os
import warnings

import torch

from ..checkpoint import CLASSIFIER_KEY, CONFIG_NAME, load_adapters, read_adapter_config
from .classifier import build_video_classifier

# Callables folder -> build_video_classifier arguments, or None when the folder is not theirs; asked in order
# when adapter_config.json records no build arguments.
_FOLDER_READERS = []


def register_folder_reader(reader):
    """Teach `from_pretrained` another form of folder: `reader(folder)` returns build_video_classifier's
    arguments (a dict) for a folder it knows, else None. Returns `reader`."""
    if reader not in _FOLDER_READERS:
        _FOLDER_READERS.append(reader)
    return reader


def from_pretrained(path, checkpoint_path=None, **overrides):
    """Rebuild the VideoClassifier whose adapters and head `save_adapters` wrote to `path` (a `train`
    run's output_dir/adapters included) and load them; returned in eval mode (`.train()` to go on
    training).

    The backbone comes from the recorded timm model name and kwargs: random init (from the recorded seed
    if there is one, so a randomly initialised backbone is rebuilt exactly), or the weights of the local
    file `checkpoint_path` (see `build_video_classifier`; nothing is downloaded). `overrides` replace
    recorded `build_video_classifier` arguments, e.g. `backend="reference"`, `backbone_dtype=torch.bfloat16`,
    `num_frames=16`; one that changes the adapters' shapes makes loading fail with what differs.

    Raises FileNotFoundError if `path` has no adapter_config.json, ValueError if it does not record how
    to build the model (saved from a model not made by build_video_classifier: build it yourself and call
    `load_adapters`)."""
    arguments = dict(_recorded_arguments(os.fspath(path)))
    weights_from = [arguments.pop(key, None) for key in ("checkpoint_path", "authors_checkpoint")]
    if checkpoint_path is None and any(weights_from):
        sources = " and ".join(filter(None, weights_from))
        warnings.warn(f"from_pretrained: the saved model's backbone weights came from {sources}; without "
                      "checkpoint_path this backbone is randomly initialised", stacklevel=2)
    elif checkpoint_path is None and arguments.get("seed") is None:
        warnings.warn("from_pretrained: the saved model's backbone was randomly initialised with no recorded seed, "
                      "and no checkpoint_path is given: this backbone's random weights differ from it", stacklevel=2)
    arguments.update(overrides)
    if isinstance(arguments.get("backbone_dtype"), str):
        arguments["backbone_dtype"] = getattr(torch, arguments["backbone_dtype"])
    model = build_video_classifier(checkpoint_path=checkpoint_path, **arguments)
    return load_adapters(model, path).eval()


def _recorded_arguments(path):
    """build_video_classifier's arguments recorded in `path`: by save_adapters, else by a registered reader."""
    config = read_adapter_config(path)
    record = config.get(CLASSIFIER_KEY)
    if record is not None:
        return record
    for reader in _FOLDER_READERS:
        arguments = reader(path)
        if arguments is not None:
            return arguments
    raise ValueError(f"{os.path.join(path, CONFIG_NAME)} does not record how to build the model (it was not saved "
                     "from a classifier made by build_video_classifier, or its build arguments were not JSON): build "
                     "the model yourself and call load_adapters(model, path)")
