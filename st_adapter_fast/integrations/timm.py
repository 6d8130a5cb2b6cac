"""ST-Adapters in timm VisionTransformers (CLIP ViTs and ViTs with register tokens included).

`add_st_adapters` puts an adapter on the residual stream before a block's attention and/or MLP branch,
as the authors' ResidualAttentionBlock does, without replacing any timm code: the adapters are child
modules of the blocks (`blocks.{i}.st_adapter_attn` / `st_adapter_mlp`) applied through module hooks.

- before attention: a forward pre-hook on the block replaces its input x by adapter(x).
- before the MLP: a pre-hook on the block keeps its input x; a hook on `drop_path1` (the end of the
  attention branch b) returns adapter(x + b) - x, so the block's residual add gives x' = adapter(x + b)
  and the block returns x' + mlp(norm2(x')).

The frame count is a per-model setting (`set_num_frames`), read by that model's adapters only, as is
whether they are on (`disable_adapters`); `remove_st_adapters` undoes `add_st_adapters`.
`VideoClassifier` turns an adapted backbone into the authors' video model.

Adapters cannot be merged into the backbone's weights (as LoRA's can): the temporal conv mixes the
tokens of neighbouring frames, which no per-frame linear layer of the image model can compute.
"""
import contextlib
import os
import warnings

import torch
from torch import nn

from ..adapted import adapted_module, adapter_config, has_st_adapters  # noqa: F401 (public here too)
from ..module import STAdapter
from ..validation import check_kernel_size

PLACEMENTS = ("attn", "mlp")


class _AdapterState:
    """Frames per clip, and whether the adapters are on, for one adapted model: shared by its adapters'
    hooks and never by two models. One value for every thread: autograd's worker threads recompute
    checkpointed blocks with the value that the forward set (a thread-local value would give them the
    initial one)."""

    def __init__(self, num_frames):
        self.num_frames = num_frames
        self.enabled = True


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
    """Forward pre-hook of a block: its input x becomes adapter(x) (unchanged while disabled)."""

    def __init__(self, state):
        self.state = state

    def __call__(self, block, args, kwargs):
        if not self.state.enabled:
            return None
        return (block.st_adapter_attn(args[0], self.state.num_frames), *args[1:]), kwargs


class _PreMlpHooks:
    """The adapter between a block's attention and MLP branches, through two hooks: a forward pre-hook
    of the block keeps its input x, and a hook of `drop_path1` (the end of the attention branch b)
    returns adapter(x + b) - x, so that the block's own residual add gives adapter(x + b), which the MLP
    branch and its residual then see.

    The kept x is used up inside the same block call, before any tensor of the MLP branch is saved, so
    activation checkpointing's recomputation (which may stop right after the last saved tensor) always
    finds it and never leaves it behind."""

    def __init__(self, block, state):
        self.block, self.state, self.inputs = block, state, []

    def keep_block_input(self, block, args, kwargs):
        self.inputs.append(args[0])

    def adapt_attention_output(self, drop_path1, args, branch):
        x = self.inputs.pop()
        if not self.state.enabled:
            return None
        return self.block.st_adapter_mlp(x + branch, self.state.num_frames) - x


def _attach_pre_attn(block, adapter, state):
    block.st_adapter_attn = adapter
    # prepend: runs before the pre-MLP adapter's hook, which must see the block input after this adapter
    return [block.register_forward_pre_hook(_PreAttnHook(state), with_kwargs=True, prepend=True)]


def _check_supports_pre_mlp(block):
    from timm.models.vision_transformer import Block
    # The hooks rely on Block's order x = x + drop_path1(ls1(attn(norm1(x)))); x = x + drop_path2(...):
    # post-norm or parallel blocks order their modules differently and would be adapted at the wrong place.
    if not isinstance(block, Block):
        raise TypeError(f"placement 'mlp' supports timm's pre-norm vision_transformer.Block, not "
                        f"{type(block).__name__} (e.g. EVA and RoPE ViTs); placement 'attn' works with any block")


def _attach_pre_mlp(block, adapter, state):
    block.st_adapter_mlp = adapter
    hooks = _PreMlpHooks(block, state)
    return [block.register_forward_pre_hook(hooks.keep_block_input, with_kwargs=True),
            block.drop_path1.register_forward_hook(hooks.adapt_attention_output)]


def add_st_adapters(model, adapter_channels=384, kernel_size=(3, 1, 1), placement=("mlp",), layers=None, *,
                    num_frames=8, activation="gelu", backend="auto", freeze=True):
    """Add ST-Adapters to a timm VisionTransformer in place and return it.

    Args:
        model: a timm VisionTransformer (`model.blocks`, `model.embed_dim`, `model.num_prefix_tokens`).
        adapter_channels: Ca of every adapter (the paper: 384 for ViT-B).
        kernel_size: the depthwise conv kernel (kt, kh, kw), or an int kt for (kt, 1, 1).
        placement: "mlp" / ("mlp",) (the authors' K400 model), "attn" / ("attn",) or ("attn", "mlp").
            Before the MLP needs timm's pre-norm `vision_transformer.Block` (EVA and RoPE ViTs have other
            blocks: use "attn" there); before attention works with any block.
        layers: None (every block), an int N (the last N blocks) or a list of block indices.
        num_frames: frames per clip the model will see (change with `set_num_frames`).
        activation, backend: as for `STAdapter`.
        freeze: freeze every parameter that is not an adapter's (`remove_st_adapters` restores the
            requires_grad flags they had before).

    The adapters are modules `blocks.{i}.st_adapter_attn` / `blocks.{i}.st_adapter_mlp`, applied through
    hooks; `adapter_config(model)` is the configuration recorded here (used by save/load).
    """
    placement = _check_placement(placement)
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
    kernel_size = check_kernel_size(kernel_size)
    state = _AdapterState(num_frames)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
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
            handles += attach(model.blocks[i], adapter, state)
    model.st_adapter_config = dict(adapter_channels=adapter_channels, kernel_size=list(kernel_size),
                                   placement=list(placement), layers=indices, activation=activation,
                                   num_prefix_tokens=model.num_prefix_tokens, embed_dim=model.embed_dim,
                                   num_blocks=len(model.blocks))
    model._st_adapter_state = state
    model._st_adapter_hooks = handles
    model._st_adapter_requires_grad = requires_grad
    return model


def _check_placement(placement):
    """`placement` as a tuple in the canonical order ("attn" before "mlp"); a single name may be a string."""
    names = (placement,) if isinstance(placement, str) else tuple(placement)
    if not names or any(p not in PLACEMENTS for p in names):
        raise ValueError(f"placement must be 'attn', 'mlp' or a non-empty subset of {PLACEMENTS}, got {placement!r}")
    return tuple(p for p in PLACEMENTS if p in names)


def remove_st_adapters(model):
    """Undo `add_st_adapters` in place and return `model`: the hooks and adapter modules are gone, the
    parameters' requires_grad flags are what they were before, and the model computes what the plain
    backbone computes. `model` is the adapted timm model or a module holding it (a VideoClassifier, which
    then classifies with the plain frozen backbone: a linear probe)."""
    adapted = adapted_module(model)
    for handle in adapted._st_adapter_hooks:
        handle.remove()
    for block in adapted.blocks:
        for name in ("st_adapter_attn", "st_adapter_mlp"):
            if hasattr(block, name):
                delattr(block, name)
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
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    _state_of(model).num_frames = num_frames


def _state_of(model):
    return adapted_module(model)._st_adapter_state


POOLINGS = ("mean_then_norm", "norm_then_mean")
AUTHORS_POOLING = "mean_then_norm"


def _tokens_before_final_norm(backbone, images):
    """The last block's output tokens (prefix tokens first), before the backbone's final norm."""
    last = backbone.forward_intermediates(images, indices=1, norm=False, output_fmt="NLC",
                                          intermediates_only=True, return_prefix_tokens=True)[-1]
    if isinstance(last, (tuple, list)):   # (patch tokens, prefix tokens) when the model has prefix tokens
        patches, prefix = last
        return torch.cat([prefix, patches], dim=1)
    return last


def _backbone_autocast(device_type, dtype):
    """Autocast to `dtype` for a backbone whose frozen weights are kept in it, unless the caller's
    autocast is already on (it then applies unchanged: never switched off, never overridden)."""
    if dtype is None or not torch.amp.is_autocast_available(device_type) or torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


class VideoClassifier(nn.Module):
    """Video (B, 3, T, H, W) -> logits, as the authors' video model: every frame through the (adapted,
    frozen) image backbone, the pooled token of each frame (the class token for CLIP ViTs) averaged over
    time, the backbone's final norm, dropout, a linear head. Only adapters and head train.

    Args:
        backbone: a timm VisionTransformer with adapters (`add_st_adapters`).
        num_classes: classes of the video task.
        dropout: before the head (the authors use 0.5).
        backbone_dtype: e.g. torch.float16 / torch.bfloat16 to keep the frozen backbone weights in low
            precision (adapters and head stay fp32), as the authors keep theirs in fp16. The backbone then
            runs under torch.autocast in that dtype, unless the caller's own autocast is on, which is
            always honoured (never switched off inside).
        pooling: "mean_then_norm" (the authors': each frame's pooled token before the final norm, averaged
            over time, then the final norm) or "norm_then_mean" (each frame's normed features, the
            backbone's usual image features, averaged over time). The final norm is not linear, so the two
            give different models; loading the authors' checkpoint needs theirs.
    """

    checkpoint_children = ("head",)   # saved with the adapters by save_adapters (see adapted.py)

    def __init__(self, backbone, num_classes, dropout=0.5, backbone_dtype=None, pooling=AUTHORS_POOLING):
        super().__init__()
        if getattr(backbone, "st_adapter_config", None) is None:
            raise ValueError("backbone has no ST-Adapters: call add_st_adapters(backbone, ...) first")
        _check_pooling(backbone, pooling)
        self.backbone = backbone
        if hasattr(backbone, "reset_classifier"):
            backbone.reset_classifier(0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.backbone_dtype = backbone_dtype
        self.pooling = pooling
        if backbone_dtype is not None:
            for name, p in backbone.named_parameters():
                if ".st_adapter_" not in name:
                    p.data = p.data.to(backbone_dtype)

    def forward(self, video):
        """Logits (B, num_classes) of a video batch (B, 3, T, H, W): channels before frames."""
        self._check_video(video)
        clips, channels, frames, height, width = video.shape
        if getattr(self.backbone, "st_adapter_config", None) is not None:   # not after remove_st_adapters
            set_num_frames(self.backbone, frames)
        images = video.transpose(1, 2).reshape(clips * frames, channels, height, width)
        with _backbone_autocast(video.device.type, self.backbone_dtype):
            features = self._video_features(images, clips, frames)
        return self.head(self.dropout(features))

    def _check_video(self, video):
        proj = getattr(getattr(self.backbone, "patch_embed", None), "proj", None)
        channels = getattr(proj, "in_channels", 3)
        if not isinstance(video, torch.Tensor) or video.dim() != 5 or video.shape[1] != channels:
            got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            hint = ""
            if isinstance(video, torch.Tensor) and video.dim() == 5 and video.shape[2] == channels:
                hint = ("; this looks like (B, T, C, H, W): pass video.permute(0, 2, 1, 3, 4) (or "
                        "video.transpose(1, 2))")
            raise ValueError(f"video must have shape (B, {channels}, T, H, W), channels before frames, got {got}{hint}")

    def _video_features(self, images, clips, frames):
        backbone = self.backbone
        if self.pooling == "norm_then_mean":
            per_frame = backbone.forward_head(backbone.forward_features(images), pre_logits=True)
            return per_frame.float().reshape(clips, frames, -1).mean(1)
        pooled = backbone.pool(_tokens_before_final_norm(backbone, images))
        # averaged in fp32, normed in the tokens' dtype (the norm's weights may be in backbone_dtype)
        pooled = pooled.float().reshape(clips, frames, -1).mean(1).to(pooled.dtype)
        return backbone.head_drop(backbone.fc_norm(backbone.norm(pooled))).float()

    def build_record(self):
        """build_video_classifier's arguments for this classifier, with its current classes, dropout, pooling and
        backbone dtype (what save_adapters writes for from_pretrained); None if it was not built by
        build_video_classifier."""
        arguments = getattr(self, "build_arguments", None)
        if arguments is None:
            return None
        dtype = self.backbone_dtype
        return dict(arguments, num_classes=self.head.out_features, dropout=self.dropout.p, pooling=self.pooling,
                    backbone_dtype=None if dtype is None else str(dtype).replace("torch.", ""))

    def extra_repr(self):
        return f"pooling={self.pooling!r}, backbone_dtype={self.backbone_dtype}"


def _check_pooling(backbone, pooling):
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    needs = ("forward_intermediates", "pool", "norm", "fc_norm", "head_drop") if pooling == "mean_then_norm" else (
        "forward_features", "forward_head")
    missing = [name for name in needs if not hasattr(backbone, name)]
    if missing:
        raise TypeError(f"pooling={pooling!r} needs a timm VisionTransformer (timm >= 1.0) with "
                        f"{', '.join(missing)}; {type(backbone).__name__} has not")


def build_video_classifier(model_name, num_classes, *, num_frames=8, checkpoint_path=None, dropout=0.5,
                           backbone_dtype=None, pooling=AUTHORS_POOLING, model_kwargs=None, seed=None,
                           **adapter_kwargs):
    """A VideoClassifier from a timm model name: random init (pretrained=False) or the weights of a local
    checkpoint file (no network access). `model_kwargs` go to timm.create_model (e.g. img_size),
    `adapter_kwargs` to `add_st_adapters`; `dropout`, `backbone_dtype` and `pooling` to VideoClassifier.
    `seed`: if given, the random init (backbone, adapters, head) draws from this seed, without touching
    torch's global RNG, so that the same call gives the same model.

    The authors' models: `vit_base_patch16_clip_quickgelu_224` (or `vit_large_patch14_clip_quickgelu_224`),
    OpenAI CLIP's architecture with its QuickGELU MLPs, `adapter_channels=384`, `activation=None`,
    `placement="mlp"` (their Kinetics-400 model) or `("attn", "mlp")` (Something-Something v2).
    The `*_clip_224` models without "quickgelu" use GELU: a different network from OpenAI's CLIP.

    The classifier records these arguments (`build_arguments`), which `save_adapters` writes so that
    `from_pretrained` can rebuild it."""
    arguments = dict(model_name=model_name, num_classes=num_classes, num_frames=num_frames,
                     checkpoint_path=None if checkpoint_path is None else os.path.abspath(checkpoint_path),
                     dropout=dropout, backbone_dtype=backbone_dtype, pooling=pooling,
                     model_kwargs=dict(model_kwargs or {}), seed=seed, **adapter_kwargs)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        backbone = create_timm_model(model_name, **dict(model_kwargs or {}, num_classes=0))
        if checkpoint_path is not None:
            _load_backbone_checkpoint(backbone, checkpoint_path)
        add_st_adapters(backbone, num_frames=num_frames, **adapter_kwargs)
        classifier = VideoClassifier(backbone, num_classes, dropout=dropout, backbone_dtype=backbone_dtype,
                                     pooling=pooling)
    classifier.build_arguments = arguments   # what save_adapters records for from_pretrained
    return classifier


def create_timm_model(model_name, **kwargs):
    """timm.create_model(model_name, pretrained=False, **kwargs), with errors that say what is wrong: an
    unknown name (see `check_timm_model_name`) or arguments the model does not take."""
    check_timm_model_name(model_name)
    import timm
    try:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    except TypeError as error:   # an argument the model does not take (img_size: not a ViT)
        raise TypeError(f"timm model {model_name!r} cannot be created with {kwargs} ({error}); ST-Adapters "
                        "need a timm VisionTransformer") from None


def check_timm_model_name(model_name):
    """ValueError if timm has no model `model_name` (timm itself raises a RuntimeError, late), ImportError
    saying how to install timm if it is missing."""
    try:
        import timm
    except ImportError as error:
        raise ImportError(f"the timm integration needs timm ({error}): pip install timm, or install "
                          "st-adapter-fast with its [train] extra") from None
    if not timm.is_model(model_name):
        raise ValueError(f"unknown timm model {model_name!r}; timm.list_models('*vit*') lists the ViTs")


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


def _authors_architecture_problems(classifier):
    """What differs between `classifier` and the authors' video ViT that their weights were trained in."""
    from timm.layers.activations import QuickGELU
    backbone = classifier.backbone
    problems = []
    acts = [getattr(getattr(block, "mlp", None), "act", None) for block in backbone.blocks]
    if not all(isinstance(act, QuickGELU) for act in acts):
        problems.append(f"the backbone's MLPs use {sorted({type(act).__name__ for act in acts})}, OpenAI CLIP's use QuickGELU (build it from "
                        "vit_base_patch16_clip_quickgelu_224 or vit_large_patch14_clip_quickgelu_224)")
    activation = adapter_config(classifier)["activation"]
    if activation is not None:
        problems.append(f"the adapters use activation={activation!r}, the authors' release uses none "
                        "(activation=None)")
    return problems


def read_state_dict(path):
    """The tensors of a local .safetensors or torch checkpoint file (torch files are read with
    weights_only=True: nothing is unpickled but tensors and plain containers). A {"model": ...} or
    {"state_dict": ...} wrapper and a DistributedDataParallel "module." prefix are taken off."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_authors_checkpoint(classifier, state_dict, prefix="", strict_architecture=True):
    """Load the authors' released video ViT (a state dict, or the path of a local checkpoint file, see
    `read_state_dict`) into `classifier`, strictly: a VideoClassifier whose backbone is a timm CLIP ViT with
    QuickGELU MLPs and the same adapters, `activation=None`.

    Their model averages the class token over time before the final norm, so `classifier.pooling` is set
    to "mean_then_norm" (with a warning if it was not). A GELU backbone or adapters with an activation
    compute a different function from the one their accuracy was published for: ValueError, or only a
    warning with `strict_architecture=False`."""
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = read_state_dict(state_dict)
    problems = _authors_architecture_problems(classifier)
    if problems:
        message = "this classifier is not the authors' model: " + "; ".join(problems)
        if strict_architecture:
            raise ValueError(message + " (strict_architecture=False loads anyway)")
        warnings.warn(message, stacklevel=2)
    classifier.load_state_dict(convert_authors_state_dict(state_dict, prefix), strict=True)
    if classifier.pooling != AUTHORS_POOLING:
        warnings.warn(f"load_authors_checkpoint: pooling set to {AUTHORS_POOLING!r} (was {classifier.pooling!r}), "
                      "the authors' order", stacklevel=2)
        _check_pooling(classifier.backbone, AUTHORS_POOLING)
        classifier.pooling = AUTHORS_POOLING
    return classifier
