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

from .adapted import adapter_config
from .reference import STAdapterReference

WEIGHTS_NAME = "adapters.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT_VERSION = 1
CLASSIFIER_KEY = "video_classifier"


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
    `build_video_classifier`. Returns `path`."""
    from safetensors.torch import save_file
    os.makedirs(path, exist_ok=True)
    tensors = {name: p.detach().cpu().contiguous() for name, p in checkpoint_parameters(model).items()}
    save_file(tensors, os.path.join(path, WEIGHTS_NAME))
    config = dict(format_version=FORMAT_VERSION, st_adapter_config=adapter_config(model),
                  tensors={name: dict(shape=list(t.shape), dtype=str(t.dtype)) for name, t in tensors.items()})
    record = _build_record(model)
    if record is not None:
        config[CLASSIFIER_KEY] = record
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=1)
    return path


def read_adapter_config(path):
    """The JSON object of `path`/adapter_config.json; FileNotFoundError / ValueError naming the file."""
    config_file = os.path.join(os.fspath(path), CONFIG_NAME)
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{config_file} not found: expected a folder written by save_adapters or a train "
                                "run's output_dir/adapters")
    with open(config_file) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_file}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: expected a JSON object (as save_adapters writes), got a JSON "
                         f"{type(config).__name__}")
    return config


def load_adapters(model, path):
    """Load what `save_adapters` wrote into `model`, strictly: the adapter configuration must equal the
    model's, and the saved tensors must be exactly the model's trainable parameters, with their shapes and a
    floating-point dtype (cast to the parameter's on copy). Everything is checked before anything is
    copied: on an error the model is untouched. Raises ValueError / TypeError naming the file and, for a
    tensor, its name."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    config_file, weights_file = os.path.join(path, CONFIG_NAME), os.path.join(path, WEIGHTS_NAME)
    config = read_adapter_config(path)
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{config_file}: unknown adapter checkpoint format {config.get('format_version')!r}")
    saved = config.get("st_adapter_config")
    if not isinstance(saved, dict):
        raise ValueError(f"{config_file}: 'st_adapter_config' must be a JSON object with the adapter "
                         f"configuration, got {saved!r}")
    ours = json.loads(json.dumps(adapter_config(model)))   # as it would read back from JSON
    if saved != ours:
        diff = {k: (saved.get(k), ours.get(k)) for k in sorted(set(saved) | set(ours)) if saved.get(k) != ours.get(k)}
        raise ValueError(f"{config_file}: adapter configuration differs from the model's (saved, model): {diff}")
    try:
        tensors = load_file(weights_file)
    except SafetensorError as error:
        raise ValueError(f"{weights_file}: not a readable safetensors file ({error})") from None
    params = checkpoint_parameters(model)
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
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    return model
