"""Measurements of what really ran, shared by the tests, the training loop and the benchmarks."""
import collections
import contextlib

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


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


class LiveTensorBytes(TorchDispatchMode):
    """Context manager: the peak bytes of tensor storage that was allocated while it was active and is still
    alive, as seen after every op (`peak_bytes`; `live_bytes` now). Device-independent (it counts storages,
    not an allocator's blocks: the same figures on the CPU and a GPU) and blind to what existed before (weights,
    inputs). Under torch.compile it sees the ops that a compiled graph runs through the dispatcher ("aot_eager"
    backends: all of them); inductor's own buffers are invisible to it.

    A storage is counted when an op returns it and none of the op's inputs had it (views and in-place ops
    allocate nothing), and uncounted once it has been freed (weak references, checked at every op)."""

    @classmethod
    def ignore_compile_internals(cls):
        return True   # compile as if the mode were off; its compiled code then runs under the mode

    def __init__(self):
        super().__init__()
        self._live = {}   # storage address -> (weak reference, bytes)
        self.live_bytes = self.peak_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key, (ref, nbytes) in list(self._live.items()):   # first: a freed storage's address may come back
            if ref.expired():
                del self._live[key]
                self.live_bytes -= nbytes
        inputs = {_storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and _storage_key(t) not in inputs and _storage_key(t) not in self._live:
                storage = t.untyped_storage()
                self._live[_storage_key(t)] = (StorageWeakRef(storage), storage.nbytes())
                self.live_bytes += storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return out


def _storage_key(t):
    return t.untyped_storage()._cdata


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


@contextlib.contextmanager
def one_torch_thread():
    """Run the block with one torch intra-op thread (then as before): for timings of small work, where waking
    threads is noise, and for per-item work in processes that run in parallel."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
