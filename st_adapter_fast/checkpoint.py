"""Adapter-only checkpoints: the adapters' and the head's tensors as safetensors plus a JSON config.
Never unpickles.

`adapter_config.json` holds `format_version`, `st_adapter_config` (what add_st_adapters recorded; load_adapters
requires the model's to be equal), `tensors` (name: shape, dtype) and, for a model that can say how it was
built (`build_record()`: a classifier made by build_video_classifier), `video_classifier`: the arguments that
rebuild it (timm model name and kwargs, classes, frames, dropout, pooling, backbone dtype, seed, adapter
arguments), which `from_pretrained` (integrations/pretrained.py) uses. This module knows no model library:
what it saves is read from the contract of adapted.py.
"""
import json
import os
import warnings

import torch
from torch import nn

from .adapted import adapter_config
from .compiling import CompiledModel
from .files import check_regular_file, read_text, write_files
from .reference import STAdapterReference

WEIGHTS_NAME = "adapters.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT_VERSION = 1
CLASSIFIER_KEY = "video_classifier"
CONFIG_KEYS = ("format_version", "st_adapter_config", "tensors", CLASSIFIER_KEY)   # what adapter_config.json may hold


def unwrapped(model):
    """The model inside the wrappers that prefix its parameter names: torch.compile's ("_orig_mod."),
    compile_model's, DistributedDataParallel's and DataParallel's ("module."). A checkpoint names its tensors as
    the model itself does, so that it loads into the model however either of them is wrapped."""
    while True:
        if isinstance(model, (CompiledModel, nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def checkpoint_parameters(model):
    """The parameters an adapter checkpoint holds, picked by what they are, not by requires_grad: every
    adapter's (each STAdapter / STAdapterReference inside `model`) and those of the children that a module
    names in its `checkpoint_children` (a VideoClassifier's head). A frozen model (`requires_grad_(False)`)
    gives the same ones; an unfrozen backbone layer is not one."""
    modules = list(model.modules())
    wanted = {id(p) for m in modules if isinstance(m, STAdapterReference) for p in m.parameters()}
    wanted |= {id(p) for m in modules for child in getattr(m, "checkpoint_children", ())
               for p in getattr(m, child).parameters()}
    return {name: p for name, p in model.named_parameters() if id(p) in wanted}


def _build_record(model):
    """How to rebuild `model` as JSON (its `build_record()`), or None (with a warning if it is not JSON)."""
    build_record = getattr(model, "build_record", None)
    record = build_record() if build_record is not None else None
    if record is None:
        return None
    try:
        return json.loads(json.dumps(record))
    except (TypeError, ValueError) as error:
        warnings.warn(f"save_adapters: the classifier's build arguments are not JSON ({error}); from_pretrained "
                      "cannot rebuild it from this folder (load_adapters into a model built the same way still "
                      "works)", stacklevel=3)
        return None


def save_adapters(model, path):
    """Write the adapters' and the head's tensors (every adapter's parameters and a VideoClassifier's
    head, whatever their requires_grad) to `path`/adapters.safetensors and the adapter configuration to
    `path`/adapter_config.json, with what `from_pretrained` needs to rebuild a classifier made by
    `build_video_classifier`. Returns `path`.

    `model` may be wrapped (torch.compile, compile_model, DistributedDataParallel): the tensors are named as
    in the model itself. Everything is checked first (the model has adapters, every tensor has values and is finite, the
    configuration is JSON), then both files are written under temporary names in `path` and renamed into
    place: a save that fails leaves a folder's earlier checkpoint as it was."""
    from safetensors.torch import save as safetensors_bytes
    folder = _folder_path(path, "save_adapters")
    model = unwrapped(model)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"save_adapters: {folder} exists and is not a folder")
    settings = adapter_config(model)
    params = checkpoint_parameters(model)
    _check_values(params, "save_adapters: the model's", "nothing was saved")
    tensors = {name: p.detach().cpu().contiguous() for name, p in params.items()}
    config = dict(format_version=FORMAT_VERSION, st_adapter_config=settings,
                  tensors={name: dict(shape=list(t.shape), dtype=str(t.dtype)) for name, t in tensors.items()})
    record = _build_record(model)
    if record is not None:
        config[CLASSIFIER_KEY] = record
    try:
        text = json.dumps(config, indent=1, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"save_adapters: the adapter configuration is not JSON ({error}); nothing was saved") from None
    write_files({os.path.join(folder, WEIGHTS_NAME): safetensors_bytes(tensors),
                 os.path.join(folder, CONFIG_NAME): text})
    return path


def _folder_path(path, caller):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{caller}: path must be a folder path (str or os.PathLike), got {type(path).__name__}")
    return os.fspath(path)


def _check_values(tensors, whose, consequence, finite=True):
    """ValueError for the first tensor of {name: tensor} that has no values (meta) or (`finite`) a non-finite
    value."""
    for name, t in tensors.items():
        if t.device.type == "meta":
            raise ValueError(f"{whose} {name} is on the meta device and has no values (materialise the model, "
                             f"e.g. model.to_empty(device=...), and initialise or load it first); {consequence}")
        if finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{whose} {name} has non-finite values (nan or inf: a diverged run?); {consequence}")


def read_adapter_config(path):
    """The JSON object of `path`/adapter_config.json, its structure checked: FileNotFoundError / ValueError
    naming the file (and the key) for a missing or non-regular file, invalid JSON, an unknown format version,
    keys it does not know, or a malformed `st_adapter_config` or `tensors`."""
    folder = _folder_path(path, "adapter checkpoint")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{folder} is not a folder: expected a folder written by save_adapters or a train run's "
                         "output_dir/adapters")
    config_file = os.path.join(folder, CONFIG_NAME)
    if not os.path.lexists(config_file):
        raise FileNotFoundError(f"{config_file} not found: expected a folder written by save_adapters or a train "
                                "run's output_dir/adapters")
    try:
        config = json.loads(read_text(config_file, "adapter config"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: expected a JSON object (as save_adapters writes), got a JSON "
                         f"{type(config).__name__}")
    if type(config.get("format_version")) is not int or config["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{config_file}: unknown adapter checkpoint format {config.get('format_version')!r}")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"{config_file}: unknown keys {unknown}; an adapter checkpoint has {list(CONFIG_KEYS)}")
    if not isinstance(config.get("st_adapter_config"), dict):
        raise ValueError(f"{config_file}: 'st_adapter_config' must be a JSON object with the adapter "
                         f"configuration, got {config.get('st_adapter_config')!r}")
    table = config.get("tensors", {})
    if not isinstance(table, dict) or not all(
            isinstance(entry, dict) and set(entry) == {"shape", "dtype"} and isinstance(entry["dtype"], str)
            and isinstance(entry["shape"], list) and all(type(n) is int for n in entry["shape"])
            for entry in table.values()):
        raise ValueError(f"{config_file}: 'tensors' must map each tensor name to {{\"shape\": [ints], \"dtype\": "
                         f"str}}, as save_adapters writes")
    if config.get(CLASSIFIER_KEY) is not None and not isinstance(config[CLASSIFIER_KEY], dict):
        raise ValueError(f"{config_file}: {CLASSIFIER_KEY!r} must be a JSON object of build_video_classifier "
                         f"arguments, got a JSON {type(config[CLASSIFIER_KEY]).__name__}")
    return config


def load_adapters(model, path, *, overridden=()):
    """Load what `save_adapters` wrote into `model`, strictly: the adapter configuration must equal the
    model's, and the saved tensors must be exactly the model's checkpoint parameters, with the names, shapes
    and dtypes that adapter_config.json lists, a floating-point dtype (cast to the parameter's on copy) and
    finite values. A model that records how it was built (a classifier from build_video_classifier) must have
    been built as the folder's record says in what decides the function it computes (its
    `record_identity_keys`: model spec and kwargs, classes, pooling), but for the arguments named in
    `overridden` (from_pretrained's overrides). Everything is checked before anything is copied: on an error
    the model is untouched. Raises ValueError / TypeError naming the file and, for a tensor or a recorded
    argument, its name; only regular files are read."""
    model = unwrapped(model)
    ours = json.loads(json.dumps(adapter_config(model)))   # as read from JSON
    config = read_adapter_config(path)
    path = os.fspath(path)
    config_file, weights_file = os.path.join(path, CONFIG_NAME), os.path.join(path, WEIGHTS_NAME)
    saved = config["st_adapter_config"]
    if saved != ours:
        diff = {k: (saved.get(k), ours.get(k)) for k in sorted(set(saved) | set(ours)) if saved.get(k) != ours.get(k)}
        raise ValueError(f"{config_file}: adapter configuration differs from the model's (saved, model): {diff}")
    _check_record(model, config.get(CLASSIFIER_KEY), config_file, overridden)
    tensors = _read_weights(weights_file)
    params = checkpoint_parameters(model)
    _check_values(params, "load_adapters: the model's", "nothing was loaded", finite=False)
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(f"{weights_file}: tensors do not match the model's trainable parameters; "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(params[name].shape):
            raise ValueError(f"{weights_file}: {name} has shape {tuple(t.shape)}, the model's "
                             f"{tuple(params[name].shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{weights_file}: {name} has dtype {t.dtype}; adapter checkpoint tensors must be "
                            f"floating point (the model's is {params[name].dtype})")
    _check_listed(tensors, config.get("tensors"), weights_file, config_file)
    converted = {name: t.to(params[name].dtype) for name, t in tensors.items()}
    _check_values(converted, f"{weights_file}:", "nothing was loaded (values in the model's dtypes)")
    with torch.no_grad():
        for name, t in converted.items():
            params[name].copy_(t)
    return model


def _check_record(model, saved, config_file, overridden):
    """ValueError unless `model`, if it records how it was built, was built as the folder's record `saved` says
    in the arguments it names in `record_identity_keys` (but for those `overridden`)."""
    build_record = getattr(model, "build_record", None)
    ours = build_record() if saved is not None and build_record is not None else None
    if ours is None:
        return
    try:
        ours = json.loads(json.dumps(ours))   # as read from JSON
    except (TypeError, ValueError):
        return   # save_adapters would not have recorded it either
    keys = [k for k in getattr(model, "record_identity_keys", ()) if k not in overridden and k in ours]
    diff = {k: (saved.get(k), ours[k]) for k in keys if saved.get(k) != ours[k]}
    if diff:
        raise ValueError(f"{config_file}: {CLASSIFIER_KEY} records another model than the one given (saved, model): "
                         f"{diff}; build the model as recorded (from_pretrained does) or save it again")


def _read_weights(weights_file):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    check_regular_file(weights_file, "adapter weights file")
    try:
        return load_file(weights_file)
    except SafetensorError as error:
        raise ValueError(f"{weights_file}: not a readable safetensors file ({error})") from None


def _check_listed(tensors, table, weights_file, config_file):
    """ValueError unless the tensors of adapters.safetensors are those that adapter_config.json lists (`table`,
    absent in no folder save_adapters wrote)."""
    if table is not None:
        found = {name: dict(shape=list(t.shape), dtype=str(t.dtype)) for name, t in tensors.items()}
        differ = sorted(name for name in set(found) | set(table) if found.get(name) != table.get(name))
        if differ:
            name = differ[0]
            raise ValueError(f"{weights_file} does not hold the tensors that {config_file} lists (a folder with "
                             f"files of two saves?): {len(differ)} differ, e.g. {name}: listed {table.get(name)}, "
                             f"in the file {found.get(name)}")
