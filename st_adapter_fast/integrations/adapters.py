"""ST-Adapters in any supported backbone (backbones.py), through module hooks, without copying a library's code.

`add_st_adapters` puts an adapter on the residual stream before a block's attention and/or MLP branch, as the
authors' ResidualAttentionBlock does. The adapters are child modules of the blocks (`{block}.st_adapter_attn` /
`st_adapter_mlp`), applied by two hooks per block at the points that blocks.py names: a pre-hook on the
attention branch's first module sees the block input x, a hook on its last module replaces the branch output b
that the block adds to x. With A the adapter before attention (identity if none) and M the one before the MLP:

    pre-hook:  xa = A(x) is the branch's input; kept: xa and d = xa - x
    hook:      y = xa + b (what the authors' block computes before its MLP);
               the block adds  b + d + (M(y) - y)  to x,  giving  x + b + (xa - x) + (M(y) - y) = M(y)

Each correction (d, M(y) - y) is exactly zero for an adapter at its identity init, so the block then returns
exactly the plain block's output, in every dtype (returning M(y) - x, for the block to add to x, would round
x + b a second time: off by one unit in the last place wherever x and b nearly cancel in half precision).

The frame count, the patch grid (read from the patch embedding's output, so a model that takes other image
sizes gets the grid of each input) and whether the adapters are on are one state per adapted model, read by
its hooks only; `remove_st_adapters` undoes `add_st_adapters`.

Adapters cannot be merged into the backbone's weights (as LoRA's can): the temporal conv mixes the tokens of
neighbouring frames, which no per-frame linear layer of the image model can compute.
"""
import contextlib
import numbers
import warnings

import torch
from torch import nn

from ..activations import check_activation
from ..adapted import adapted_module, adapter_config, has_st_adapters  # noqa: F401 (public here too)
from ..module import STAdapter
from ..ops import BACKENDS
from ..validation import as_int, check_kernel_size, check_module
from .backbones import backbone_type
from .blocks import block_type, supported_blocks

PLACEMENTS = ("attn", "mlp")
ADAPTER_NAMES = {"attn": "st_adapter_attn", "mlp": "st_adapter_mlp"}


class _AdapterState:
    """Frames per clip, the patch grid of the current input, and whether the adapters are on, for one adapted
    model: shared by its adapters' hooks and never by two models. One value for every thread: autograd's worker
    threads recompute checkpointed blocks with the values that the forward set (thread-local values would give
    them the initial ones)."""

    def __init__(self, num_frames):
        self.num_frames = num_frames
        self.grid = None   # until the first input: each adapter's own grid_size (None: square)
        self.enabled = True


# The hooks are objects, not closures, so that copy.deepcopy of an adapted model gives hooks that use the
# copy's adapters and state (deepcopy maps their attributes through its memo), and pickling works.

class _GridHook:
    """Forward hook of the patch embedding's conv: its output's (H, W) is the grid of this input."""

    def __init__(self, state):
        self.state = state

    def __call__(self, conv, args, output):
        self.state.grid = tuple(output.shape[-2:])


def _apply(adapter, x, state):
    """adapter(x) with the model's frame count and grid. Some libraries' tokens have a transposed layout (the patch
    embedding's (B, C, N) output viewed as (B, N, C)): the kernels need channels contiguous, and the copy that the
    op would make with a warning meant for its own callers is made here, quietly."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    return adapter(x, state.num_frames, grid_size=state.grid)


class _BranchHooks:
    """The adapters of one block, through the two hooks of the module docstring. The kept tensors are used up
    inside the same block call, before any tensor of the MLP branch is saved, so activation checkpointing's
    recomputation (which may stop right after the last saved tensor) always finds them. A `last` module that
    the block calls again for its MLP branch finds nothing kept then and leaves that call alone."""

    def __init__(self, block, state, tuple_output):
        self.block, self.state, self.tuple_output = block, state, tuple_output
        self.kept = None

    def _adapt(self, name, x):
        return _apply(getattr(self.block, name), x, self.state)

    def before_branch(self, module, args, kwargs):
        self.kept = None
        if not self.state.enabled:
            return None
        x = args[0]
        if not hasattr(self.block, ADAPTER_NAMES["attn"]):
            self.kept = (x, None)
            return None
        adapted = self._adapt(ADAPTER_NAMES["attn"], x)
        self.kept = (adapted, adapted - x)
        return (adapted, *args[1:]), kwargs

    def after_branch(self, module, args, output):
        kept, self.kept = self.kept, None
        if kept is None:
            return None
        x, moved = kept
        branch = output[0] if self.tuple_output else output
        new = branch if moved is None else branch + moved
        if hasattr(self.block, ADAPTER_NAMES["mlp"]):
            y = x + branch
            new = new + (self._adapt(ADAPTER_NAMES["mlp"], y) - y)
        return (new, *output[1:]) if self.tuple_output else new


class _BlockInputHook:
    """Forward pre-hook of a block that is not in blocks.py's table: its input x becomes adapter(x), which is
    "before attention" for any block that starts with its attention branch (placement "attn" only)."""

    def __init__(self, state):
        self.state = state

    def __call__(self, block, args, kwargs):
        if not self.state.enabled:
            return None
        adapted = _apply(block.st_adapter_attn, args[0], self.state)
        return (adapted, *args[1:]), kwargs


def _attach(block, adapters, state):
    """Add `adapters` ({placement: STAdapter}) to `block` and hook them in; the hook handles."""
    for where, adapter in adapters.items():
        setattr(block, ADAPTER_NAMES[where], adapter)
    kind = block_type(block)
    if kind is None:   # only "attn" gets here (checked before)
        return [block.register_forward_pre_hook(_BlockInputHook(state), with_kwargs=True)]
    hooks = _BranchHooks(block, state, kind.tuple_output)
    return [getattr(block, kind.first).register_forward_pre_hook(hooks.before_branch, with_kwargs=True),
            getattr(block, kind.last).register_forward_hook(hooks.after_branch)]


def _check_block(block, index, placement):
    kind = block_type(block)
    if kind is None and "mlp" in placement:
        raise TypeError(f"block {index} is a {type(block).__name__}, whose MLP branch ST-Adapters cannot find; "
                        f"placement 'mlp' supports {supported_blocks()}; placement 'attn' works with any block")
    if kind is not None:
        for name in (kind.first, kind.last):
            if not isinstance(getattr(block, name, None), nn.Module):
                raise TypeError(f"block {index} ({type(block).__name__}) has no module {name!r} to hook")


def add_st_adapters(model, adapter_channels=384, kernel_size=(3, 1, 1), placement=("mlp",), layers=None, *,
                    num_frames=8, activation="gelu", backend="auto", freeze=True):
    """Add ST-Adapters to an image backbone in place and return it.

    Args:
        model: a timm VisionTransformer or Eva (CLIP, DINOv2/v3, SigLIP, EVA-02, PE, RoPE ViTs, ...), a Hugging
            Face CLIPVisionModel, SiglipVisionModel, Dinov2Model, Dinov2WithRegistersModel or DINOv3ViTModel, or
            an open_clip VisionTransformer (`model.visual` of an open_clip CLIP).
        adapter_channels: Ca of every adapter (the paper: 384 for ViT-B).
        kernel_size: the depthwise conv kernel (kt, kh, kw), or an int kt for (kt, 1, 1).
        placement: "mlp" / ("mlp",) (the authors' K400 model), "attn" / ("attn",) or ("attn", "mlp").
        layers: None (every block), an int N (the last N blocks) or a list of block indices.
        num_frames: frames per clip the model will see (change with `set_num_frames`).
        activation, backend: as for `STAdapter`.
        freeze: freeze every parameter that is not an adapter's (`remove_st_adapters` restores the
            requires_grad flags they had before).

    Every argument and every chosen block is checked before the model is touched: on an error the model is
    exactly as it was. The adapters are modules `{block}.st_adapter_attn` / `{block}.st_adapter_mlp`, applied
    through hooks; `adapter_config(model)` is the configuration recorded here (used by save/load). Add them
    before `torch.compile`: graphs compiled earlier do not see new hooks (a warning says so).
    """
    given, model = model, _uncompiled(model, "add_st_adapters")
    kind = backbone_type(model)
    if has_st_adapters(model):
        raise ValueError("this model already has ST-Adapters (remove_st_adapters removes them)")
    settings = _checked_settings(adapter_channels, kernel_size, placement, activation, backend)
    num_frames = as_int("num_frames", num_frames, 1)
    if not isinstance(freeze, bool):
        raise TypeError(f"freeze must be a bool, got {freeze!r}")
    blocks = kind.blocks(model)
    indices = _layer_indices(len(blocks), layers)
    if not indices:   # nothing would train, and freeze would still freeze the whole model
        raise ValueError(f"layers={layers!r} selects no block of the model's {len(blocks)}: name at least one"
                         if blocks else f"the {type(model).__name__} has no blocks to put adapters in")
    for i in indices:
        _check_block(blocks[i], i, settings["placement"])
    conv, prefix_tokens = kind.patch_conv(model), kind.num_prefix_tokens(model)
    device = next(model.parameters(), torch.empty(0)).device

    def adapter():
        return STAdapter(conv.out_channels, settings["adapter_channels"], settings["kernel_size"],
                         activation=activation, num_prefix_tokens=prefix_tokens, backend=backend).to(device)
    new = {i: {where: adapter() for where in settings["placement"]} for i in indices}
    _hook_in(model, blocks, conv, new, _AdapterState(num_frames), freeze)
    model.st_adapter_config = dict(settings, kernel_size=list(settings["kernel_size"]),
                                   placement=list(settings["placement"]), layers=indices,
                                   num_prefix_tokens=prefix_tokens, embed_dim=conv.out_channels,
                                   num_blocks=len(blocks))
    return given


def _checked_settings(adapter_channels, kernel_size, placement, activation, backend):
    """The adapters' settings, checked, in the order adapter_config records them (backend is not recorded)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return dict(adapter_channels=as_int("adapter_channels", adapter_channels, 1),
                kernel_size=check_kernel_size(kernel_size), placement=_check_placement(placement),
                activation=check_activation(activation))


def _hook_in(model, blocks, conv, new, state, freeze):
    """Attach the adapters `new` ({block index: {placement: STAdapter}}) and their hooks, and record on `model`
    what remove_st_adapters undoes; all or nothing."""
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    handles = [conv.register_forward_hook(_GridHook(state))]
    try:
        for i, adapters in new.items():
            handles += _attach(blocks[i], adapters, state)
    except BaseException:
        _detach(blocks, handles)
        raise
    if freeze:
        model.requires_grad_(False)
        for adapters in new.values():
            for adapter in adapters.values():
                adapter.requires_grad_(True)
    model._st_adapter_state = state
    model._st_adapter_hooks = handles
    model._st_adapter_requires_grad = requires_grad


def _uncompiled(model, what):
    """`model`, or the module inside a torch.compile wrapper, with a warning if `model` or a module in it was
    compiled: dynamo does not guard on module hooks (torch._dynamo.config.skip_nnmodule_hook_guards), so graphs
    compiled before hooks were added or removed keep running without (or with) them."""
    check_module(model, f"{what}'s model")
    if any(hasattr(m, "_orig_mod") or getattr(m, "_compiled_call_impl", None) is not None for m in model.modules()):
        warnings.warn(f"{what} on a torch.compile'd module: graphs it has already compiled may not see the change "
                      "of hooks and keep computing the model as it was; call torch._dynamo.reset() or compile the "
                      "model again (best: add adapters before compiling)", stacklevel=3)
    return getattr(model, "_orig_mod", model)


def _layer_indices(num_blocks, layers):
    if layers is None:
        return list(range(num_blocks))
    if isinstance(layers, int) and not isinstance(layers, bool):
        if not 0 < layers <= num_blocks:
            raise ValueError(f"layers={layers}: the model has {num_blocks} blocks")
        return list(range(num_blocks - layers, num_blocks))
    if isinstance(layers, (str, bytes)) or not _iterable(layers) or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in layers):
        raise TypeError(f"layers must be None, an int N (the last N blocks) or a list of block indices, got {layers!r}")
    if any(not -num_blocks <= i < num_blocks for i in layers):
        raise ValueError(f"layers={list(layers)}: the model has {num_blocks} blocks")
    return sorted({int(i) % num_blocks for i in layers})


def _check_placement(placement):
    """`placement` as a tuple in the canonical order ("attn" before "mlp"); a single name may be a string."""
    names = (placement,) if isinstance(placement, str) else tuple(placement) if _iterable(placement) else ()
    if not names or any(p not in PLACEMENTS for p in names):
        raise ValueError(f"placement must be 'attn', 'mlp' or a non-empty subset of {PLACEMENTS}, got {placement!r}")
    return tuple(p for p in PLACEMENTS if p in names)


def _iterable(value):
    try:
        iter(value)
    except TypeError:
        return False
    return True


def _detach(blocks, handles):
    """Remove the hooks `handles` and every adapter module from `blocks`."""
    for handle in handles:
        handle.remove()
    for block in blocks:
        for name in ADAPTER_NAMES.values():
            if name in block._modules:
                delattr(block, name)


def remove_st_adapters(model):
    """Undo `add_st_adapters` in place and return `model`: the hooks and adapter modules are gone, the
    parameters' requires_grad flags are what they were before, and the model computes what the plain
    backbone computes. `model` is the adapted model or a module holding it (a VideoClassifier, which
    then classifies with the plain frozen backbone: a linear probe)."""
    adapted = adapted_module(_uncompiled(model, "remove_st_adapters"))
    _detach(backbone_type(adapted).blocks(adapted), adapted._st_adapter_hooks)
    for name, p in adapted.named_parameters():
        p.requires_grad_(adapted._st_adapter_requires_grad.get(name, p.requires_grad))
    for name in ("st_adapter_config", "_st_adapter_state", "_st_adapter_hooks", "_st_adapter_requires_grad"):
        delattr(adapted, name)
    return model


@contextlib.contextmanager
def disable_adapters(model):
    """Context manager: inside it, `model` (adapted, or a module holding the adapted model) computes
    exactly what the plain backbone computes, as if its adapters were not there; they are back on exit,
    also when the block raises. Nests. (Activation checkpointing recomputes blocks in backward: run the
    backward inside the block too.)"""
    state = _state_of(model)
    enabled, state.enabled = state.enabled, False
    try:
        yield model
    finally:
        state.enabled = enabled


def set_num_frames(model, num_frames):
    """Frames per clip that this model's adapters assume from now on (`model` is the adapted model or a
    module holding it; a VideoClassifier sets it from each video it gets)."""
    _state_of(model).num_frames = as_int("num_frames", num_frames, 1)


def _state_of(model):
    return adapted_module(model)._st_adapter_state
