"""`convert`: swap adapters for fast `STAdapter`s with the same weights, in place, where the swap provably
computes the same function, and say which adapter-like modules were left as they are and why."""
import copy
import warnings

import torch
from torch import nn

from .module import STAdapter
from .reference import STAdapterReference
from .validation import check_module

_CHILDREN = {"fc1": nn.Linear, "conv": nn.Conv3d, "fc2": nn.Linear}   # exact types: a subclass may compute otherwise


class ConversionReport(int):
    """What `convert` did: an int, the number of modules replaced, with `converted` (their names) and
    `skipped` ({name: why} of the adapter-like modules left unconverted)."""

    def __new__(cls, converted, skipped):
        report = super().__new__(cls, len(converted))
        report.converted, report.skipped = converted, skipped
        return report


def _looks_like_adapter(module):
    return isinstance(module, STAdapterReference) or all(hasattr(module, name) for name in _CHILDREN)


def _has_hooks(module):
    return any(getattr(module, name, None) for name in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


def _conv_problem(conv, channels):
    """Why `conv` is not the adapter's depthwise conv (stride 1, no dilation, zero padding k//2), or None."""
    kernel = conv.kernel_size
    padding = conv.padding
    if padding == "same":
        padding = tuple(k // 2 for k in kernel)
    elif padding == "valid":
        padding = (0, 0, 0)
    wanted = dict(in_channels=channels, out_channels=channels, groups=channels, stride=(1, 1, 1),
                  dilation=(1, 1, 1), padding_mode="zeros")
    for name, value in wanted.items():
        if getattr(conv, name) != value:
            return f"conv.{name} is {getattr(conv, name)!r}, the adapter's is {value!r}"
    if any(k % 2 == 0 for k in kernel):
        return f"conv.kernel_size {kernel} is not odd"
    if tuple(padding) != tuple(k // 2 for k in kernel):
        return f"conv.padding is {conv.padding!r}, the adapter's is {tuple(k // 2 for k in kernel)} (k // 2)"
    return None


def _why_not(module):
    """Why `module` (adapter-like) cannot be swapped for an STAdapter computing the same, or None if it can."""
    if isinstance(module, STAdapterReference) and type(module) is not STAdapterReference:
        return f"{type(module).__name__} subclasses STAdapterReference: its computation may differ"
    children = dict(module.named_children())
    if set(children) != set(_CHILDREN):
        extra, absent = sorted(set(children) - set(_CHILDREN)), sorted(set(_CHILDREN) - set(children))
        return (f"child modules {', '.join(f'{n} ({type(children[n]).__name__})' for n in extra)} that an "
                "STAdapter does not have" if extra else f"no {', '.join(absent)}")
    for name, kind in _CHILDREN.items():
        if type(children[name]) is not kind:
            return f"{name} is a {type(children[name]).__name__}, not exactly an nn.{kind.__name__}"
        if children[name].bias is None:
            return f"{name} has no bias"
    fc1, conv, fc2 = children["fc1"], children["conv"], children["fc2"]
    if fc2.in_features != fc1.out_features or fc2.out_features != fc1.in_features:
        return f"fc1 {fc1.in_features} -> {fc1.out_features} and fc2 {fc2.in_features} -> {fc2.out_features} do not mirror"
    problem = _conv_problem(conv, fc1.out_features)
    if problem:
        return problem
    if next(module.parameters(recurse=False), None) is not None or next(module.buffers(), None) is not None:
        return "parameters or buffers of its own, besides fc1, conv and fc2's"
    if any(_has_hooks(m) for m in module.modules()):
        return "hooks on it or its children, which an STAdapter would not run"
    if len({(p.device, p.dtype) for p in module.parameters()}) != 1:
        return "parameters on several devices or of several dtypes"
    if type(module) is not STAdapterReference and type(module).forward is not nn.Module.forward:
        return _forward_problem(module)   # (a module with no forward of its own computed nothing to differ from)
    return None


def _forward_problem(module):
    """Why `module`'s own forward (which convert cannot read) is not the authors' adapter, or None: it is run as
    `module(x, num_frames)`, on a float64 copy with random weights and a small random clip batch (class token
    first, square grid), against the reference computation with the same weights."""
    generator = torch.Generator().manual_seed(0)
    theirs = copy.deepcopy(module).to(device="cpu", dtype=torch.float64)
    kt, kh, kw = theirs.conv.kernel_size
    ours = STAdapterReference(theirs.fc1.in_features, theirs.fc1.out_features, (kt, kh, kw), activation=None,
                              num_prefix_tokens=1).to(torch.float64)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
        nn.Module.load_state_dict(ours, theirs.state_dict())
        frames, side = kt + 1, max(kh, kw) + 1
        x = torch.randn(2 * frames, 1 + side * side, theirs.fc1.in_features, generator=generator, dtype=torch.float64)
        expected = ours(x.clone(), frames)
        try:
            got = theirs(x.clone(), frames)
        except Exception as error:   # any error of a forward that convert did not write
            return f"its forward cannot be run as adapter(x, num_frames) ({type(error).__name__}: {error})"
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return f"its forward returns {tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}, " \
               f"not the adapter's (B*T, L, C) = {tuple(expected.shape)}"
    error = float((got - expected).norm() / expected.norm())
    if not error <= 1e-9:
        return (f"its forward computes something else than the authors' adapter (relative difference {error:.2g} "
                "on a test input)")
    return None


def _fast_equivalent(module, backend):
    """An STAdapter with `module`'s weights, requires_grad flags, mode, device and dtype."""
    if type(module) is STAdapterReference:
        settings = dict(activation=module.activation, num_prefix_tokens=module.num_prefix_tokens,
                        grid_size=module.grid_size)
    else:   # the authors' release: class token first, square grid, no activation
        settings = dict(activation=None, num_prefix_tokens=1)
    fast = STAdapter(module.fc1.in_features, module.fc1.out_features, module.conv.kernel_size, backend=backend,
                     **settings)
    nn.Module.load_state_dict(fast, module.state_dict())   # the values as they are (the adapter's own checks refuse NaN)
    for p_new, p_old in zip(fast.parameters(), module.parameters()):
        p_new.requires_grad_(p_old.requires_grad)
    fast.train(module.training)
    return fast.to(device=module.fc1.weight.device, dtype=module.fc1.weight.dtype)


def convert(model, backend="auto"):
    """Replace, in place, every `STAdapterReference` and every module with the authors' adapter structure
    (fc1 / depthwise conv / fc2, as their release's `Adapter`) inside `model` by an `STAdapter` with the same
    weights (and requires_grad flags), where that provably computes the same function: exact module types
    (no subclasses), exactly the children fc1, conv and fc2 (no activation or other module whose place in the
    computation convert cannot see), a depthwise conv with stride 1, no dilation, zero padding k // 2 and
    biases everywhere, no parameters or buffers of its own, no hooks, and, for a module other than an
    `STAdapterReference` (whose forward convert cannot read), a forward `module(x, num_frames)` that gives the
    authors' adapter's output on a test input (a copy with random weights). Adapter-like modules that fail a
    check, and `model` itself if it is one, are left as they are, with a warning that names each and says why.

    All replacements are built before the first is put in place: if one fails, `model` is unchanged.
    `model` itself is never replaced. Returns a `ConversionReport`: the number replaced (an int), with
    `.converted` (their names) and `.skipped` ({name: why})."""
    check_module(model, "convert's model")
    names = {}
    for name, module in model.named_modules():
        names.setdefault(id(module), name)
    replacements, skipped = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, STAdapter) or not _looks_like_adapter(module):
            continue
        if module is model:
            skipped[name] = ("convert replaces the adapters inside the model it is given, not that model itself: "
                             "pass a module that holds it, or load its state_dict into an STAdapter")
            continue
        if id(module) in replacements or name in skipped:
            continue
        reason = _why_not(module)
        if reason is None:
            replacements[id(module)] = _fast_equivalent(module, backend)
        else:
            skipped[name] = reason
    # every place that holds a replaced module (_modules, not named_children: a module shared by two names is
    # swapped under both, and stays shared)
    swaps = [(parent, child_name, replacements[id(child)]) for parent in model.modules()
             for child_name, child in parent._modules.items() if id(child) in replacements]
    for parent, child_name, fast in swaps:
        setattr(parent, child_name, fast)
    if skipped:
        warnings.warn(f"convert: left {len(skipped)} adapter-like module(s) as they are, since an STAdapter would "
                      "not compute the same: " + "; ".join(f"{n or type(model).__name__}: {why}"
                                                            for n, why in skipped.items()), stacklevel=2)
    return ConversionReport(sorted(names[i] for i in replacements), skipped)
