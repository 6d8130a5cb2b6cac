"""Distributed set-up under torchrun (one process per rank) and the all-reduce the evaluation uses."""
import os

import torch
import torch.distributed as dist


def setup_distributed(device=None):
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) joins the process group: nccl when
    the device is CUDA, gloo otherwise."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device (--device) {device!r}: no CUDA device is available here; use cpu")
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
