"""`from_pretrained`: rebuild a classifier made by `build_video_classifier` from the folder `save_adapters`
wrote, and load its adapters and head.

The folder's adapter_config.json records the build arguments (`video_classifier`): the one record of the model,
which `from_pretrained`, `load_adapters` (its `st_adapter_config` and `tensors`) and the video application's
`eval` all read. The record is checked against a schema before any model is built: its keys are
`build_video_classifier`'s arguments (read from its signature, so that new arguments are allowed as they come)
and `authors_checkpoint`, values of the wrong type are refused naming the file and key, and `model_kwargs` may not
choose weights or a device (`check_model_kwargs`). A folder written by an application in another form (an older
`train` run's adapters/ folder, with only its train_config.json) is read by a reader that the application
registers (`register_folder_reader`): the integrations never import the application.
"""
import inspect
import math
import os
import warnings

import torch

from ..checkpoint import CLASSIFIER_KEY, CONFIG_NAME, load_adapters, read_adapter_config
from ..files import check_regular_file
from .authors import load_authors_checkpoint
from .classifier import build_video_classifier, check_model_kwargs

# Callables folder -> build_video_classifier arguments, or None when the folder is not theirs; asked in order
# when adapter_config.json records no build arguments.
_FOLDER_READERS = []
# Where a recorded model's backbone weights came from: local files, not rebuilt unless given again.
WEIGHT_SOURCES = ("checkpoint_path", "authors_checkpoint")
BACKBONE_DTYPES = ("float32", "float16", "bfloat16", "float64")


def register_folder_reader(reader):
    """Teach `from_pretrained` another form of folder: `reader(folder)` returns build_video_classifier's
    arguments (a dict) for a folder it knows, else None. Returns `reader`."""
    if reader not in _FOLDER_READERS:
        _FOLDER_READERS.append(reader)
    return reader


def from_pretrained(path, checkpoint_path=None, *, authors_checkpoint=None, **overrides):
    """Rebuild the VideoClassifier whose adapters and head `save_adapters` wrote to `path` (a `train`
    run's output_dir/adapters included) and load them; returned in eval mode (`.train()` to go on
    training).

    The backbone comes from the recorded timm model name and kwargs: random init (from the recorded seed
    if there is one, so a randomly initialised backbone is rebuilt exactly), or the weights of the local
    file `checkpoint_path` (see `build_video_classifier`; nothing is downloaded), or those of the authors'
    released checkpoint `authors_checkpoint` (see `load_authors_checkpoint`) for a model trained from it.
    `overrides` replace recorded `build_video_classifier` arguments, e.g. `backend="reference"`,
    `backbone_dtype=torch.bfloat16`, `num_frames=16`; one that changes the adapters' shapes makes loading
    fail with what differs.

    The record and the overrides are checked before any model is built: ValueError naming the file and key
    of a malformed record, TypeError / ValueError naming an unknown or malformed override. Raises
    FileNotFoundError if `path` has no adapter_config.json (or a weights file given does not exist), and
    ValueError if the folder does not record how to build the model (saved from a model not made by
    build_video_classifier: build it yourself and call `load_adapters`)."""
    arguments = recorded_arguments(path)
    check_build_arguments(overrides, "from_pretrained", kind=TypeError)
    weights_from = [arguments.pop(key, None) for key in WEIGHT_SOURCES]
    for name, file in (("checkpoint_path", checkpoint_path), ("authors_checkpoint", authors_checkpoint)):
        if file is not None:
            check_regular_file(file, f"from_pretrained: {name}")
    if checkpoint_path is None and authors_checkpoint is None and any(weights_from):
        sources = " and ".join(filter(None, weights_from))
        warnings.warn(f"from_pretrained: the saved model's backbone weights came from {sources}; without "
                      "checkpoint_path this backbone is randomly initialised", stacklevel=2)
    elif checkpoint_path is None and authors_checkpoint is None and arguments.get("seed") is None:
        warnings.warn("from_pretrained: the saved model's backbone was randomly initialised with no recorded seed, "
                      "and no checkpoint_path is given: this backbone's random weights differ from it", stacklevel=2)
    arguments.update(overrides)
    if isinstance(arguments.get("backbone_dtype"), str):
        arguments["backbone_dtype"] = getattr(torch, arguments["backbone_dtype"])
    try:
        model = build_video_classifier(checkpoint_path=checkpoint_path, **arguments)
    except (ValueError, TypeError) as error:   # a value only build_video_classifier knows to check
        raise type(error)(f"from_pretrained({os.fspath(path)!r}): the recorded classifier (with the overrides) "
                          f"cannot be built: {error}") from None
    if authors_checkpoint is not None:
        load_authors_checkpoint(model, authors_checkpoint)
    return load_adapters(model, path, overridden=tuple(overrides)).eval()


def recorded_arguments(path):
    """build_video_classifier's arguments (and the weight sources, `WEIGHT_SOURCES`) recorded in `path`: by
    save_adapters, else by a registered reader; checked against the schema (ValueError naming the file and key)."""
    config = read_adapter_config(path)
    path = os.fspath(path)
    record, where = config.get(CLASSIFIER_KEY), f"{os.path.join(path, CONFIG_NAME)}: {CLASSIFIER_KEY}"
    for reader in _FOLDER_READERS if record is None else ():
        record, where = reader(path), f"the build arguments read from {path}"
        if record is not None:
            break
    if record is None:
        raise ValueError(f"{os.path.join(path, CONFIG_NAME)} does not record how to build the model (it was not "
                         "saved from a classifier made by build_video_classifier, or its build arguments were not "
                         "JSON): build the model yourself and call load_adapters(model, path)")
    check_build_arguments(record, where, required=True)
    return dict(record)


def build_argument_names():
    """(every argument a record may hold, the required ones): build_video_classifier's named arguments (it
    lists every one: no **kwargs) and the weight sources."""
    parameters = inspect.signature(build_video_classifier).parameters.values()
    names = {p.name for p in parameters} | set(WEIGHT_SOURCES)
    return names, {p.name for p in parameters if p.default is p.empty}


def _is_int(value, minimum=None):
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def _is_str(value):
    return isinstance(value, str) and bool(value)


def _is_list_of(check):
    return lambda value: isinstance(value, (list, tuple)) and all(check(item) for item in value)


def _optional(check):
    return lambda value: value is None or check(value)


# What each known argument must be, as JSON (tuples count as lists, a torch dtype as its name). Arguments not
# listed here (added to build_video_classifier later) are passed on unchecked: it checks them itself.
_SCHEMA = {
    "model_name": ("a non-empty string", _is_str),
    "num_classes": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "num_frames": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "checkpoint_path": ("a file path or null", _optional(_is_str)),
    "authors_checkpoint": ("a file path or null", _optional(_is_str)),
    "dropout": ("a number in [0, 1]", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v) and 0 <= v <= 1),
    "backbone_dtype": (f"null or one of {', '.join(BACKBONE_DTYPES)}", lambda v: v is None or v in BACKBONE_DTYPES),
    "pooling": ("a string", _is_str),
    "model_kwargs": ("a JSON object of timm.create_model arguments",
                     lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v)),
    "seed": ("an integer or null", _optional(_is_int)),
    "adapter_channels": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "kernel_size": ("an integer or a list of 3 integers", lambda v: _is_int(v, 1) or (
        _is_list_of(lambda k: _is_int(k, 1))(v) and len(v) == 3)),
    "placement": ("'attn', 'mlp' or a list of them", lambda v: _is_str(v) or (_is_list_of(_is_str)(v) and v)),
    "layers": ("null, an integer or a list of integers", lambda v: v is None or _is_int(v) or _is_list_of(_is_int)(v)),
    "activation": ("a string or null", _optional(_is_str)),
    "backend": ("a string", _is_str),
    "freeze": ("true or false", lambda v: isinstance(v, bool)),
}


def check_build_arguments(arguments, where, required=False, kind=ValueError):
    """Check build_video_classifier arguments (a record, or overrides) against the schema: a mapping, only known
    keys (`kind` of error for an unknown one), the required ones if `required`, each value of its type, and
    `model_kwargs` without keys that choose weights or a device. Errors name `where` and the key."""
    if not isinstance(arguments, dict):
        raise ValueError(f"{where}: expected a JSON object of build_video_classifier arguments, got "
                         f"{type(arguments).__name__}")
    names, needed = build_argument_names()
    unknown = sorted(set(arguments) - names)
    if unknown:
        raise kind(f"{where}: unknown argument(s) {unknown}; build_video_classifier takes {sorted(names)}")
    missing = sorted(needed - set(arguments)) if required else []
    if missing:
        raise ValueError(f"{where}: missing {missing}")
    for key, value in arguments.items():
        expected, check = _SCHEMA.get(key, (None, None))
        if isinstance(value, torch.dtype):
            value = str(value).replace("torch.", "")
        if check is not None and not check(value):
            raise ValueError(f"{where}: {key} must be {expected}, got {value!r}")
    if arguments.get("model_kwargs"):
        check_model_kwargs(arguments["model_kwargs"], f"{where}: model_kwargs")
