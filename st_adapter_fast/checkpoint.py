"""Adapter-only checkpoints: the trainable tensors as safetensors plus a JSON config. Never unpickles."""
import json
import os

import torch

from .integrations.timm import adapter_config

WEIGHTS_NAME = "adapters.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT_VERSION = 1


def _trainable(model):
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_adapters(model, path):
    """Write the model's trainable tensors (adapters, head) to `path`/adapters.safetensors and the adapter
    configuration to `path`/adapter_config.json. Returns `path`."""
    from safetensors.torch import save_file
    os.makedirs(path, exist_ok=True)
    tensors = {name: p.detach().cpu().contiguous() for name, p in _trainable(model).items()}
    save_file(tensors, os.path.join(path, WEIGHTS_NAME))
    config = dict(format_version=FORMAT_VERSION, st_adapter_config=adapter_config(model),
                  tensors={name: dict(shape=list(t.shape), dtype=str(t.dtype)) for name, t in tensors.items()})
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=1)
    return path


def load_adapters(model, path):
    """Load what `save_adapters` wrote into `model`, strictly: the adapter configuration must equal the
    model's, and the saved tensors must be exactly the model's trainable parameters, with their shapes.
    Raises ValueError saying what differs."""
    from safetensors.torch import load_file
    with open(os.path.join(path, CONFIG_NAME)) as f:
        config = json.load(f)
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unknown adapter checkpoint format {config.get('format_version')!r}")
    ours = json.loads(json.dumps(adapter_config(model)))   # as it would read back from JSON
    saved = config["st_adapter_config"]
    if saved != ours:
        diff = {k: (saved.get(k), ours.get(k)) for k in sorted(set(saved) | set(ours)) if saved.get(k) != ours.get(k)}
        raise ValueError(f"{path}: adapter configuration differs from the model's (saved, model): {diff}")
    tensors = load_file(os.path.join(path, WEIGHTS_NAME))
    params = _trainable(model)
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(f"{path}: tensors do not match the model's trainable parameters; "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(params[name].shape):
            raise ValueError(f"{path}: {name} has shape {tuple(t.shape)}, the model's {tuple(params[name].shape)}")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    return model
