"""Memory measurements shared by the tests and the benchmarks."""
import torch


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
