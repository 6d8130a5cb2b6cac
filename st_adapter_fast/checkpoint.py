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
    params = _trainable(model)
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
