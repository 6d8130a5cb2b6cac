"""`convert`: swap adapters for fast `STAdapter`s with the same weights, in place."""
from torch import nn

from .module import STAdapter
from .reference import STAdapterReference


def _has_authors_structure(module):
    """fc1 Linear -> depthwise Conv3d `conv` -> fc2 Linear back to the input width, as the authors' Adapter."""
    fc1, conv, fc2 = (getattr(module, n, None) for n in ("fc1", "conv", "fc2"))
    return (isinstance(fc1, nn.Linear) and isinstance(conv, nn.Conv3d) and isinstance(fc2, nn.Linear)
            and conv.groups == conv.in_channels == conv.out_channels == fc1.out_features == fc2.in_features
            and fc2.out_features == fc1.in_features and fc1.bias is not None and fc2.bias is not None
            and conv.bias is not None)


def _fast_equivalent(module, backend):
    if isinstance(module, STAdapter):
        return None
    if type(module) is STAdapterReference:
        fast = STAdapter(module.fc1.in_features, module.fc1.out_features, module.conv.kernel_size,
                         activation=module.activation, num_prefix_tokens=module.num_prefix_tokens,
                         grid_size=module.grid_size, backend=backend)
    elif _has_authors_structure(module):   # their release: class token first, square grid, no activation
        fast = STAdapter(module.fc1.in_features, module.fc1.out_features, module.conv.kernel_size,
                         activation=None, num_prefix_tokens=1, backend=backend)
    else:
        return None
    fast.load_state_dict(module.state_dict())
    fast.train(module.training)
    return fast.to(device=module.fc1.weight.device, dtype=module.fc1.weight.dtype)


def convert(model, backend="auto"):
    """Replace, in place, every `STAdapterReference` and every module with the authors' adapter structure
    (fc1 / depthwise conv / fc2) inside `model` by an `STAdapter` with the same weights (and
    requires_grad flags). Returns how many were replaced. `model` itself is never replaced."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()]
    count = 0
    for parent, name, child in swaps:
        fast = _fast_equivalent(child, backend)
        if fast is not None:
            for p_new, p_old in zip(fast.parameters(), child.parameters()):
                p_new.requires_grad_(p_old.requires_grad)
            setattr(parent, name, fast)
            count += 1
    return count
