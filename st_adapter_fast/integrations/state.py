"""State dicts of local checkpoint files: reading them, and checking one against a model's before anything is
copied, so that a load that fails leaves the model as it was."""
import pickle

import torch

from ..files import check_regular_file
from ..validation import check_state_dict


def read_state_dict(path):
    """The tensors of a local .safetensors or torch checkpoint file (torch files are read with
    weights_only=True: nothing is unpickled but tensors and plain containers). A {"model": ...} or
    {"state_dict": ...} wrapper and a DistributedDataParallel "module." prefix are taken off."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = check_regular_file(path, "checkpoint file")
    try:
        state = (load_file(path) if path.endswith(".safetensors")
                 else torch.load(path, map_location="cpu", weights_only=True))
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        reason = ("not a torch file of tensors" if isinstance(error, pickle.UnpicklingError)  # torch's text
                  else str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
        raise ValueError(f"{path}: not a readable .safetensors or torch checkpoint file ({reason})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{path}: expected a state dict of tensors (str keys)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_checked(module, state, source):
    """`module.load_state_dict(state)` after `check_state_dict`: nothing is copied unless all of it fits."""
    check_state_dict(module.state_dict(), state, source)
    module.load_state_dict(state, strict=True)


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
