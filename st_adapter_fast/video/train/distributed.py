"""Distributed set-up under torchrun (one process per rank) and the all-reduce the evaluation uses."""
import os

import torch
import torch.distributed as dist

from .config import config_key


def check_device(device):
    """`device` (a TrainConfig's: None, cpu, cuda or cuda:N) as this machine can run it (None: cuda if available,
    else cpu); ValueError naming --device if it names CUDA where there is none, or a CUDA device this machine
    does not have."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    parsed = torch.device(device)
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{config_key('device')} {device!r}: no CUDA device is available here; use cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"{config_key('device')} {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def setup_distributed(device=None):
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) joins the process group: nccl when
    the device is CUDA, gloo otherwise."""
    device = check_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return rank, world_size, torch.device(device)


def all_reduce_sum(values, device, world_size):
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()
