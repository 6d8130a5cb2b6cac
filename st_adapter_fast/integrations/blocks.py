"""The transformer blocks ST-Adapters go into: one table of block types, for every library, of the two modules
that the adapters' hooks use.

Every supported block computes x + b, b = its attention branch of x, then adds its MLP branch. Two modules of
the attention branch are enough for both placements, without copying any library's block code:

- `first`, the first module of the branch: a forward pre-hook sees the block input x (and may give the branch
  another input);
- `last`, the last module of the branch, whose output b the block adds to x: a forward hook may replace b.

Both hooks run inside the block's forward, so they also survive checkpointing that wraps a block's `forward`
rather than its `__call__` (Hugging Face's). A `last` module that the block calls again for its MLP branch
(Dinov2's one `drop_path`) is hooked on its first call per block call only (see adapters.py).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class BlockType:
    """Where the adapters' hooks go in one type of block: the names of the first and last module of its
    attention branch, and whether `last` returns a tuple whose first item is the branch output (Hugging Face's
    CLIP / SigLIP attention returns (output, weights))."""
    first: str
    last: str
    tuple_output: bool = False


_PRE_NORM = BlockType("norm1", "drop_path1")     # x + drop_path1(ls1(attn(norm1(x))))
_POST_NORM = BlockType("attn", "drop_path1")     # x + drop_path1(norm1(attn(x)))
_HF_CLIP = BlockType("layer_norm1", "self_attn", tuple_output=True)
_HF_DINO = BlockType("norm1", "drop_path")       # drop_path(layer_scale1(attention(norm1(x)))) + x
_OPEN_CLIP = BlockType("ln_1", "ls_1")           # x + ls_1(attn(ln_1(x)))

# Keyed by the class's module and name (nothing here imports a library), matched along a block's MRO.
BLOCK_TYPES = {
    "timm.models.vision_transformer.Block": _PRE_NORM,
    "timm.models.vision_transformer.ResPostBlock": _POST_NORM,
    "timm.models.eva.EvaBlock": _PRE_NORM,
    "timm.models.eva.EvaBlockPostNorm": _POST_NORM,
    "transformers.models.clip.modeling_clip.CLIPEncoderLayer": _HF_CLIP,
    "transformers.models.siglip.modeling_siglip.SiglipEncoderLayer": _HF_CLIP,
    "transformers.models.dinov2.modeling_dinov2.Dinov2Layer": _HF_DINO,
    "transformers.models.dinov2_with_registers.modeling_dinov2_with_registers.Dinov2WithRegistersLayer": _HF_DINO,
    "transformers.models.dinov3_vit.modeling_dinov3_vit.DINOv3ViTLayer": _HF_DINO,
    "open_clip.transformer.ResidualAttentionBlock": _OPEN_CLIP,
    "open_clip.transformer.CustomResidualAttentionBlock": _OPEN_CLIP,
}


def qualified_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def block_type(block):
    """The BlockType of `block` (its class or the nearest base class in the table), or None."""
    for cls in type(block).__mro__:
        found = BLOCK_TYPES.get(qualified_name(cls))
        if found is not None:
            return found
    return None


def supported_blocks():
    """The supported block classes, by name, for error messages."""
    return ", ".join(name.rsplit(".", 1)[-1] for name in BLOCK_TYPES)
