"""Adapter-only checkpoints: the adapters' and the head's tensors as safetensors plus a JSON config.
Never unpickles.

`adapter_config.json` holds `format_version`, `st_adapter_config` (what add_st_adapters recorded; load_adapters
requires the model's to be equal), `tensors` (name: shape, dtype) and, for a classifier made by
build_video_classifier, `video_classifier`: the arguments that rebuild it (timm model name and kwargs,
classes, frames, dropout, pooling, backbone dtype, seed, adapter arguments), which `from_pretrained` uses.
"""
import json
import os
import warnings

import torch

from .integrations.timm import VideoClassifier, adapter_config, build_video_classifier
from .reference import STAdapterReference

WEIGHTS_NAME = "adapters.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT_VERSION = 1
CLASSIFIER_KEY = "video_classifier"
TRAIN_CONFIG_NAME = "train_config.json"   # written beside the adapters by `train`


def checkpoint_parameters(model):
    """The parameters an adapter checkpoint holds, picked by what they are, not by requires_grad: every
    adapter's (each STAdapter / STAdapterReference inside `model`) and each VideoClassifier's head. A
    frozen model (`requires_grad_(False)`) gives the same ones; an unfrozen backbone layer is not one."""
    modules = list(model.modules())
    wanted = {id(p) for m in modules if isinstance(m, STAdapterReference) for p in m.parameters()}
    wanted |= {id(p) for m in modules if isinstance(m, VideoClassifier) for p in m.head.parameters()}
    return {name: p for name, p in model.named_parameters() if id(p) in wanted}


def _classifier_record(model):
    """build_video_classifier's arguments for `model` as JSON, with the classifier's current classes,
    dropout, pooling and backbone dtype; None (with a warning if they are not JSON) when there are none."""
    arguments = getattr(model, "build_arguments", None)
    if arguments is None:
        return None
    dtype = model.backbone_dtype
    record = dict(arguments, num_classes=model.head.out_features, dropout=model.dropout.p, pooling=model.pooling,
                  backbone_dtype=None if dtype is None else str(dtype).replace("torch.", ""))
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
    record = _classifier_record(model)
    if record is not None:
        config[CLASSIFIER_KEY] = record
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=1)
    return path


def load_adapters(model, path):
    """Load what `save_adapters` wrote into `model`, strictly: the adapter configuration must equal the
    model's, and the saved tensors must be exactly the model's trainable parameters, with their shapes and a
    floating-point dtype (cast to the parameter's on copy). Everything is checked before anything is
    copied: on an error the model is untouched. Raises ValueError / TypeError naming the file and, for a
    tensor, its name."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    config_file, weights_file = os.path.join(path, CONFIG_NAME), os.path.join(path, WEIGHTS_NAME)
    with open(config_file) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_file}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: expected a JSON object (as save_adapters writes), got a JSON "
                         f"{type(config).__name__}")
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
    arguments = _recorded_arguments(os.fspath(path))
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
    """build_video_classifier's arguments recorded in `path`: by save_adapters, else (an older train run's
    folder) from its train_config.json."""
    config_file = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{config_file} not found: expected a folder written by save_adapters or a train "
                                "run's output_dir/adapters")
    with open(config_file) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_file}: not valid JSON ({error})") from None
    record = config.get(CLASSIFIER_KEY) if isinstance(config, dict) else None
    if record is not None:
        return record
    if os.path.isfile(os.path.join(path, TRAIN_CONFIG_NAME)):
        from .video.train import TrainConfig, classifier_arguments, load_config_file
        train_config = os.path.join(path, TRAIN_CONFIG_NAME)
        return classifier_arguments(TrainConfig.from_dict(load_config_file(train_config), source=train_config))
    raise ValueError(f"{config_file} does not record how to build the model (it was not saved from a classifier "
                     "made by build_video_classifier, or its build arguments were not JSON): build the model "
                     "yourself and call load_adapters(model, path)")
