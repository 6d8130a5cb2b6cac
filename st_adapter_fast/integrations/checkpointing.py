"""Activation checkpointing of a backbone's blocks: `full` (recompute each block in backward) or `selective`
(torch's selective checkpointing, `torch.utils.checkpoint.create_selective_checkpoint_contexts`, with the
policy below), applied per block and compatible with `torch.compile`.

A frozen backbone's activations are most of a training step's memory (the adapters' are a few percent): the
QuickGELU of a CLIP MLP alone keeps two 4C-wide tensors (its input and its sigmoid). The selective policy
keeps what is expensive to recompute and needed in backward, and recomputes the rest:

- kept: the outputs of attention (flash / memory-efficient / cuDNN kernels) and of the matmuls that widen
  their input (qkv, the MLP's fc1, the adapters' up-projection): backward needs them (q, k, v for attention's
  backward, fc1's output for the activation's) and recomputing them would repeat most of the block's flops;
- recomputed: every elementwise op (the activations, the norms, residual adds, casts), the adapters' conv,
  and the matmuls that keep or narrow the width (attention's output projection, the MLP's fc2, the adapters'
  down-projection). A pre-norm block's fc2 output only feeds the residual add, whose backward needs nothing:
  keeping it would hold C-wide memory per block that the backward never reads (measured on the CPU, a
  12-block CLIP model: peak live bytes against the reference adapters without checkpointing 0.76 keeping
  every matmul output, 0.70 without fc2's, 0.64 without the projection's too, which costs one C x C GEMM
  per block in backward);
- recomputed whole: an op run without autograd recording inside an autograd.Function (the fast adapter's
  eager path): such ops write into their outputs in place, which selective checkpointing cannot cache.
  Under torch.compile the fast adapter is one registered op (`st_adapter_fast::adapter_fwd`), recomputed
  as a whole too (its conv is recomputed in its own backward anyway).

The blocks are found by `checkpointed_blocks` (the one place that knows where a model keeps them) and
wrapped in place: each block's class becomes a subclass whose call runs the block (with its hooks, so the
adapters are inside) under `torch.utils.checkpoint.checkpoint(use_reentrant=False)`. Parameter names,
state_dict keys and hooks are unchanged; `set_checkpointing(model, "none")` restores the classes.
"""
import functools

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from .backbones import backbone_blocks

CHECKPOINTING = ("none", "full", "selective")

_aten = torch.ops.aten
# Matmuls whose output the policy keeps when it widens the input (the shapes of their last two operands).
_MATMULS = {_aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default}
_ATTENTION = {getattr(_aten, name).default for name in (
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_flash_attention_forward", "_efficient_attention_forward") if hasattr(_aten, name)}


def selective_policy(ctx, op, *args, **kwargs):
    """The selective checkpointing policy (see the module docstring): MUST_SAVE for attention outputs and for
    matmuls that widen their input, computed with autograd recording; PREFER_RECOMPUTE for everything else."""
    if not torch.is_grad_enabled():   # inside an autograd.Function's forward: possibly written in place later
        return CheckpointPolicy.PREFER_RECOMPUTE
    if op in _ATTENTION:
        return CheckpointPolicy.MUST_SAVE
    if op in _MATMULS and args[-1].shape[-1] > args[-2].shape[-1]:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_SELECTIVE_CONTEXT = functools.partial(create_selective_checkpoint_contexts, selective_policy)


class _Checkpointed:
    """Mixed into a block's class: the block's call (hooks and forward) runs under non-reentrant activation
    checkpointing, selective when `_st_adapter_checkpointing` is "selective". Without autograd recording
    (eval, no_grad) the block runs as it is."""

    _st_adapter_checkpointing = "full"

    def __call__(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return super().__call__(*args, **kwargs)
        # context_fn only when selective: under torch.compile dynamo accepts no other context_fn
        context = dict(context_fn=_SELECTIVE_CONTEXT) if self._st_adapter_checkpointing == "selective" else {}
        return checkpoint(super().__call__, *args, use_reentrant=False, **context, **kwargs)

    def __reduce_ex__(self, protocol):
        # pickle and deepcopy: the subclass is made at run time, so it is rebuilt from the block's class and mode
        return _new_checkpointed, (self._st_adapter_plain_class, self._st_adapter_checkpointing), self.__getstate__()


def _new_checkpointed(block_class, mode):
    cls = _checkpointed_class(block_class, mode)
    return cls.__new__(cls)


@functools.lru_cache(maxsize=None)
def _checkpointed_class(block_class, mode):
    """One subclass per block class and mode (the same class object every time: torch.compile guards on it)."""
    name = f"{mode.capitalize()}Checkpointed{block_class.__name__}"
    return type(name, (_Checkpointed, block_class), dict(_st_adapter_checkpointing=mode,
                                                         _st_adapter_plain_class=block_class))


def checkpointed_blocks(model):
    """The blocks that checkpointing wraps: those of the backbone `model` is or holds (a VideoClassifier's),
    as the table of supported backbones finds them (integrations/backbones.py: timm, Hugging Face, open_clip).
    TypeError naming what is supported if `model` is none of those."""
    return backbone_blocks(getattr(model, "backbone", model))


def checkpointing_mode(model):
    """"none", "full" or "selective": how `set_checkpointing` left `model`'s blocks."""
    return getattr(checkpointed_blocks(model)[0], "_st_adapter_checkpointing", "none")


def set_checkpointing(model, mode):
    """Checkpoint every block of `model` (an adapted model, a VideoClassifier, or a timm ViT) in backward:
    "full" (keep each block's input only, recompute the block), "selective" (keep attention and widening
    matmul outputs, recompute the rest: see the module docstring) or "none" (undo). In place; returns `model`.
    Works with torch.compile (compile after this call) and DistributedDataParallel.

    `True` / `False` are taken as "full" / "none". ValueError for another mode, or when the model already
    checkpoints its blocks itself (timm's `set_grad_checkpointing(True)`: turn that off first); nothing
    is changed then."""
    mode = {True: "full", False: "none"}.get(mode, mode) if isinstance(mode, bool) else mode
    if mode not in CHECKPOINTING:
        raise ValueError(f"mode must be one of {', '.join(CHECKPOINTING)} (or True / False), got {mode!r}")
    blocks = checkpointed_blocks(model)
    if mode != "none" and any(getattr(m, "grad_checkpointing", False) is True or
                              getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
        raise ValueError("the model already checkpoints its blocks with its library's own switch (timm's or "
                         "open_clip's set_grad_checkpointing(True), transformers' gradient_checkpointing_enable()); "
                         "turn that off first, or use only one of the two")
    for block in blocks:
        plain = getattr(block, "_st_adapter_plain_class", type(block))
        block.__class__ = plain if mode == "none" else _checkpointed_class(plain, mode)
    return model
