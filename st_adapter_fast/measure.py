"""Measurements of what really ran, shared by the tests, the training loop and the benchmarks."""
import collections
import contextlib

import torch
from torch import nn


def saved_activation_bytes(fn, *exclude):
    """Bytes of the distinct storages autograd saves while running fn(), excluding the storages of
    `exclude` (parameters, and the input x, which the model keeps alive anyway)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def backbone_linears(model):
    """The nn.Linear modules of `model` that belong to no adapter (an adapter's fc1/fc2 are excluded)."""
    from .reference import STAdapterReference
    in_adapters = {id(m) for a in model.modules() if isinstance(a, STAdapterReference) for m in a.modules()}
    return [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in in_adapters]


@contextlib.contextmanager
def linear_compute_dtypes(model):
    """Count, while the block runs, the dtypes that the backbone's nn.Linear layers (every Linear of
    `model` outside its adapters) computed in, as seen by forward hooks on their outputs: autocast casts
    inside F.linear, so neither the weights' dtype nor the requested autocast tells. Yields a Counter
    {dtype name: calls}."""
    seen = collections.Counter()

    def record(module, args, output):
        seen[str(output.dtype).replace("torch.", "")] += 1

    handles = [m.register_forward_hook(record) for m in backbone_linears(model)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def compute_dtype_name(seen):
    """One name for a Counter from linear_compute_dtypes: the dtype, "mixed (a: n, b: m)", or None if empty."""
    if not seen:
        return None
    if len(seen) == 1:
        return next(iter(seen))
    return "mixed (" + ", ".join(f"{name}: {count}" for name, count in sorted(seen.items())) + ")"
