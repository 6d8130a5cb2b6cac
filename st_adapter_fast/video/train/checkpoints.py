"""Checkpoints that resume a run bit for bit: trainable weights, optimizer, schedule, scaler, every rank's
RNG states and the position in the data; refused when made by a run that computes something else."""
import dataclasses
import json
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from ...checkpoint import checkpoint_parameters
from ...files import check_regular_file
from .config import BOOKKEEPING_FIELDS

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def _rng_state():
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    state = dict(torch=torch.get_rng_state(), numpy=numpy_state, python=random.getstate())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    numpy_state = dict(state["numpy"], state=dict(state["numpy"]["state"]))
    numpy_state["state"]["key"] = numpy_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state(numpy_state)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(path, model, optimizer, scheduler, scaler, position, config, rank, world_size):
    """Write everything a bit-for-bit resume needs to `path` (rank 0 writes; every rank must call)."""
    own = _rng_state()
    rng = [own] if world_size == 1 else [None] * world_size
    if world_size > 1:
        dist.all_gather_object(rng, own)
    if rank != 0:
        return
    state = dict(format=CHECKPOINT_FORMAT, config=dataclasses.asdict(config), position=dict(position),
                 world_size=world_size, rng=rng, optimizer=optimizer.state_dict(),
                 scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                 trainable={n: p.detach().cpu() for n, p in checkpoint_parameters(model).items()})
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)   # a run killed while saving leaves the previous checkpoint intact


def load_checkpoint(path, model, optimizer, scheduler, scaler, config, rank, world_size):
    """Restore what save_checkpoint wrote; returns the data position. Raises ValueError if the
    checkpoint was made by a run that computes something else (other config or world size)."""
    state = _read_checkpoint(path)
    ours = json.loads(json.dumps(dataclasses.asdict(config)))
    # a field added since the checkpoint was written had its default then
    saved = dict(json.loads(json.dumps(dataclasses.asdict(type(config)()))), **state["config"])
    differ = sorted(k for k in set(ours) | set(saved) if k not in BOOKKEEPING_FIELDS and ours.get(k) != saved.get(k))
    if differ:
        raise ValueError(f"{path}: made with a different config ({', '.join(differ)}); use another "
                         f"output_dir or --no-resume")
    if state["world_size"] != world_size:
        raise ValueError(f"{path}: made with {state['world_size']} processes, this run has {world_size}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"][rank])
    return state["position"]


def checkpoint_step(output_dir):
    """The step of output_dir's checkpoint, or None if there is none."""
    path = os.path.join(output_dir, CHECKPOINT_NAME)
    if not os.path.exists(path):
        return None
    return _read_checkpoint(path)["position"]["step"]


def _read_checkpoint(path):
    """What save_checkpoint wrote to `path`; ValueError naming the file if it is not that."""
    check_regular_file(path, "checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:   # noqa: BLE001 -- zip / unpickling errors of a damaged or foreign file
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: not a readable checkpoint ({type(error).__name__}: {first_line}); use --no-resume "
                         "or another output_dir") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format "
                         f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}")
    return state
