"""State dicts of local checkpoint files: reading them, and checking one against a model's before anything is
copied, so that a load that fails leaves the model as it was."""
import os

import torch


def read_state_dict(path):
    """The tensors of a local .safetensors or torch checkpoint file (torch files are read with
    weights_only=True: nothing is unpickled but tensors and plain containers). A {"model": ...} or
    {"state_dict": ...} wrapper and a DistributedDataParallel "module." prefix are taken off."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path} not found")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_state_dict(expected, given, source):
    """ValueError naming `source` unless `given` ({name: tensor}) has exactly `expected`'s keys (a model's
    state_dict()), each with its shape, a floating dtype where the model's tensor is floating, and finite
    values. Checks everything before a copy is made."""
    if not isinstance(given, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in given.items()):
        raise TypeError(f"{source}: expected a dict of str -> torch.Tensor, got {type(given).__name__}")
    problems = []
    missing, unexpected = sorted(expected.keys() - given.keys()), sorted(given.keys() - expected.keys())
    if missing:
        problems.append(f"missing {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    for name in sorted(expected.keys() & given.keys()):
        want, got = expected[name], given[name]
        if got.shape != want.shape:
            problems.append(f"{name} has shape {tuple(got.shape)}, the model's {tuple(want.shape)}")
        elif want.is_floating_point() and not got.is_floating_point():
            problems.append(f"{name} has dtype {got.dtype}, the model's is floating point ({want.dtype})")
        elif got.is_floating_point() and not bool(torch.isfinite(got).all()):
            problems.append(f"{name} holds non-finite values")
    if problems:
        raise ValueError(f"{source} does not fit the model: " + "; ".join(problems))


def load_checked(module, state, source):
    """`module.load_state_dict(state)` after `check_state_dict`: nothing is copied unless all of it fits."""
    check_state_dict(module.state_dict(), state, source)
    module.load_state_dict(state, strict=True)


def _some(names, shown=5):
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def matching_state(model, state, prefixes=("", "vision_model.", "visual.", "model.")):
    """The part of `state` that holds `model`'s tensors: the keys under the first of `prefixes` that covers every
    key of the model (a whole CLIP checkpoint's `visual.` tower, say), without that prefix; else `state` as it is
    (for check_state_dict to say what is missing)."""
    own = model.state_dict().keys()
    for prefix in prefixes:
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if own <= part.keys():
            return {k: part[k] for k in own}
    return state
