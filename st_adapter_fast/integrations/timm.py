"""ST-Adapters in timm VisionTransformers (CLIP ViTs and ViTs with register tokens included).

`add_st_adapters` puts an adapter on the residual stream before a block's attention and/or MLP branch,
as the authors' ResidualAttentionBlock does, without replacing any timm code: the adapters are child
modules of the blocks (`blocks.{i}.st_adapter_attn` / `st_adapter_mlp`) applied through module hooks.

- before attention: a forward pre-hook on the block replaces its input x by adapter(x).
- before the MLP: a pre-hook on `norm2` feeds it x' = adapter(x) and keeps d = x' - x; a hook on
  `drop_path2` (the end of the MLP branch) adds d to the branch, so the block returns x' + mlp(norm2(x')).

The frame count is a per-model setting (`set_num_frames`), read by that model's adapters only.
"""
import threading

import torch
from torch import nn

from ..module import STAdapter

PLACEMENTS = ("attn", "mlp")


class _Frames(threading.local):
    """Frames per clip for one adapted model: shared by its adapters, never by two models, and
    thread-local (each thread starts from the value given at add_st_adapters)."""

    def __init__(self, num_frames):
        self.initial = num_frames
        self.num_frames = num_frames

    def __reduce__(self):  # copies and pickles start again from the initial value
        return _Frames, (self.initial,)


def _layer_indices(num_blocks, layers):
    if layers is None:
        return list(range(num_blocks))
    if isinstance(layers, int):
        if not 0 < layers <= num_blocks:
            raise ValueError(f"layers={layers}: the model has {num_blocks} blocks")
        return list(range(num_blocks - layers, num_blocks))
    if any(not -num_blocks <= int(i) < num_blocks for i in layers):
        raise ValueError(f"layers={list(layers)}: the model has {num_blocks} blocks")
    return sorted({int(i) % num_blocks for i in layers})


# The hooks are objects, not closures, so that copy.deepcopy of an adapted model gives hooks that use
# the copy's adapters and frame slot (deepcopy maps their attributes through its memo), and pickling works.

class _PreAttnHook:
    """Forward pre-hook of a block: its input x becomes adapter(x)."""

    def __init__(self, frames):
        self.frames = frames

    def __call__(self, block, args, kwargs):
        return (block.st_adapter_attn(args[0], self.frames.num_frames), *args[1:]), kwargs


class _PreMlpHooks:
    """Pre-hook of norm2 (feeds it x' = adapter(x), keeps d = x' - x) and hook of drop_path2 (adds d to
    the MLP branch), so that the block returns x' + mlp(norm2(x'))."""

    def __init__(self, block, frames):
        self.block, self.frames, self.pending = block, frames, []

    def before_norm2(self, norm2, args):
        x = args[0]
        adapted = self.block.st_adapter_mlp(x, self.frames.num_frames)
        self.pending.append(adapted - x)
        return (adapted, *args[1:])

    def after_mlp_branch(self, drop_path2, args, output):
        return output + self.pending.pop()


def _attach_pre_attn(block, adapter, frames):
    block.st_adapter_attn = adapter
    return [block.register_forward_pre_hook(_PreAttnHook(frames), with_kwargs=True)]


def _check_supports_pre_mlp(block):
    from timm.models.vision_transformer import Block
    # The hooks rely on Block's order x + drop_path2(ls2(mlp(norm2(x)))); post-norm or parallel blocks
    # order their modules differently and would be adapted at the wrong place.
    if not isinstance(block, Block):
        raise TypeError(f"placement 'mlp' supports timm's pre-norm vision_transformer.Block, not "
                        f"{type(block).__name__}; placement 'attn' works with any block")


def _attach_pre_mlp(block, adapter, frames):
    block.st_adapter_mlp = adapter
    hooks = _PreMlpHooks(block, frames)
    return [block.norm2.register_forward_pre_hook(hooks.before_norm2),
            block.drop_path2.register_forward_hook(hooks.after_mlp_branch)]


def add_st_adapters(model, adapter_channels=384, kernel_size=(3, 1, 1), placement=("mlp",), layers=None, *,
                    num_frames=8, activation="gelu", backend="auto", freeze=True):
    """Add ST-Adapters to a timm VisionTransformer in place and return it.

    Args:
        model: a timm VisionTransformer (`model.blocks`, `model.embed_dim`, `model.num_prefix_tokens`).
        adapter_channels: Ca of every adapter (the paper: 384 for ViT-B).
        kernel_size: the depthwise conv kernel (kt, kh, kw).
        placement: ("mlp",) (the authors' K400 model), ("attn",) or ("attn", "mlp").
        layers: None (every block), an int N (the last N blocks) or a list of block indices.
        num_frames: frames per clip the model will see (change with `set_num_frames`).
        activation, backend: as for `STAdapter`.
        freeze: freeze every parameter that is not an adapter's.

    The model records its adapter configuration in `model.st_adapter_config` (used by save/load).
    """
    placement = tuple(placement)
    if not placement or any(p not in PLACEMENTS for p in placement):
        raise ValueError(f"placement must be a non-empty subset of {PLACEMENTS}, got {placement!r}")
    if getattr(model, "st_adapter_config", None) is not None:
        raise ValueError("this model already has ST-Adapters")
    for attr in ("blocks", "embed_dim", "num_prefix_tokens", "patch_embed"):
        if not hasattr(model, attr):
            raise TypeError(f"add_st_adapters expects a timm VisionTransformer; {type(model).__name__} has no `{attr}`")
    grid_size = tuple(model.patch_embed.grid_size)
    indices = _layer_indices(len(model.blocks), layers)
    if "mlp" in placement:
        for i in indices:
            _check_supports_pre_mlp(model.blocks[i])
    frames = _Frames(num_frames)
    if freeze:
        model.requires_grad_(False)
    device = next(model.parameters()).device
    handles = []
    for i in indices:
        for where in placement:
            adapter = STAdapter(model.embed_dim, adapter_channels, kernel_size, activation=activation,
                                num_prefix_tokens=model.num_prefix_tokens, grid_size=grid_size,
                                backend=backend).to(device)
            attach = _attach_pre_attn if where == "attn" else _attach_pre_mlp
            handles += attach(model.blocks[i], adapter, frames)
    model.st_adapter_config = dict(adapter_channels=adapter_channels, kernel_size=list(adapter.conv.kernel_size),
                                   placement=list(placement), layers=indices, activation=activation,
                                   num_prefix_tokens=model.num_prefix_tokens, embed_dim=model.embed_dim,
                                   num_blocks=len(model.blocks))
    model._st_adapter_frames = frames
    model._st_adapter_hooks = handles
    return model


def set_num_frames(model, num_frames):
    """Frames per clip that this model's adapters assume from now on."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    _frames_of(model).num_frames = num_frames


def _adapted_attribute(model, name):
    """`name` as set by add_st_adapters on `model` or the adapted module inside it (a VideoClassifier)."""
    for m in model.modules():
        value = getattr(m, name, None)
        if value is not None:
            return value
    raise ValueError("the model has no ST-Adapters (use add_st_adapters or build_video_classifier)")


def _frames_of(model):
    return _adapted_attribute(model, "_st_adapter_frames")


def adapter_config(model):
    """The adapter configuration add_st_adapters recorded (adapter_channels, placement, layers, ...)."""
    return _adapted_attribute(model, "st_adapter_config")


class VideoClassifier(nn.Module):
    """Video (B, 3, T, H, W) -> logits, as the authors' model: every frame through the (adapted, frozen)
    image backbone, its pre-logits features (class token after the final norm) averaged over time,
    dropout, a linear head. Only adapters and head train.

    Args:
        backbone: a timm VisionTransformer with adapters (`add_st_adapters`).
        num_classes: classes of the video task.
        dropout: before the head (the authors use 0.5).
        backbone_dtype: e.g. torch.float16 / torch.bfloat16 to keep the frozen backbone weights in low
            precision (adapters and head stay fp32), as the authors do; the backbone then runs under
            torch.autocast in that dtype.
    """

    def __init__(self, backbone, num_classes, dropout=0.5, backbone_dtype=None):
        super().__init__()
        if getattr(backbone, "st_adapter_config", None) is None:
            raise ValueError("backbone has no ST-Adapters: call add_st_adapters(backbone, ...) first")
        self.backbone = backbone
        if hasattr(backbone, "reset_classifier"):
            backbone.reset_classifier(0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.backbone_dtype = backbone_dtype
        if backbone_dtype is not None:
            for name, p in backbone.named_parameters():
                if ".st_adapter_" not in name:
                    p.data = p.data.to(backbone_dtype)

    def forward(self, video):
        if video.dim() != 5:
            raise ValueError(f"video must have shape (B, 3, T, H, W), got {tuple(video.shape)}")
        clips, channels, frames, height, width = video.shape
        set_num_frames(self.backbone, frames)
        images = video.transpose(1, 2).reshape(clips * frames, channels, height, width)
        with torch.autocast(video.device.type, dtype=self.backbone_dtype, enabled=self.backbone_dtype is not None):
            features = self.backbone.forward_head(self.backbone.forward_features(images), pre_logits=True)
        return self.head(self.dropout(features.float().reshape(clips, frames, -1).mean(1)))


def build_video_classifier(model_name, num_classes, *, num_frames=8, checkpoint_path=None, dropout=0.5,
                           backbone_dtype=None, model_kwargs=None, **adapter_kwargs):
    """A VideoClassifier from a timm model name: random init (pretrained=False) or the weights of a local
    checkpoint file (no network access). `model_kwargs` go to timm.create_model (e.g. img_size),
    `adapter_kwargs` to `add_st_adapters`."""
    import timm
    backbone = timm.create_model(model_name, pretrained=False, **dict(model_kwargs or {}, num_classes=0))
    if checkpoint_path is not None:
        _load_backbone_checkpoint(backbone, checkpoint_path)
    add_st_adapters(backbone, num_frames=num_frames, **adapter_kwargs)
    return VideoClassifier(backbone, num_classes, dropout=dropout, backbone_dtype=backbone_dtype)


def _load_backbone_checkpoint(backbone, path):
    """Weights of a local timm-format (or, through the model's own filter, e.g. OpenAI CLIP) checkpoint, strict
    but for the classifier head, which VideoClassifier replaces. timm's pretrained-file route is not used: how
    it reads a local file differs between timm versions (some take any file for a JAX .npz)."""
    import sys

    from timm.models import load_state_dict
    state = load_state_dict(str(path))
    filter_fn = getattr(sys.modules[type(backbone).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, backbone)
    backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")}, strict=True)


_AUTHORS_ADAPTER_NAMES = {"adapter_pre_attn": "st_adapter_attn", "adapter_pre_mlp": "st_adapter_mlp"}


def convert_authors_state_dict(state_dict, prefix=""):
    """Keys of the authors' video ViT (CLIP layout: `conv1`, `class_embedding`, `positional_embedding`,
    `ln_pre`, `transformer.resblocks.{i}.{ln_1,attn,ln_2,mlp,adapter_pre_attn,adapter_pre_mlp}`, `ln_post`,
    head `fc`) mapped onto a VideoClassifier built on a timm CLIP ViT (`backbone.*`, `head.*`).
    The CLIP text projection `proj`, if present, has no place in the classifier and is dropped."""
    from timm.models import vision_transformer
    convert_clip = getattr(vision_transformer, "_convert_openai_clip", None)
    if convert_clip is None:
        raise RuntimeError("this timm version has no OpenAI-CLIP key converter; map the backbone keys yourself")
    state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    head = {f"head.{k[3:]}": v for k, v in state_dict.items() if k.startswith("fc.")}
    backbone = convert_clip({k: v for k, v in state_dict.items() if not k.startswith("fc.")}, None, prefix="")
    backbone.pop("head.weight", None), backbone.pop("head.bias", None)
    out = dict(head)
    for k, v in backbone.items():
        for theirs, ours in _AUTHORS_ADAPTER_NAMES.items():
            k = k.replace(f".{theirs}.", f".{ours}.")
        out[f"backbone.{k}"] = v
    return out


def load_authors_checkpoint(classifier, state_dict, prefix=""):
    """Load a state_dict of the authors' released video ViT into `classifier` (a VideoClassifier whose
    backbone is a timm CLIP ViT with the same adapters, `activation=None`), strictly."""
    classifier.load_state_dict(convert_authors_state_dict(state_dict, prefix), strict=True)
    return classifier
