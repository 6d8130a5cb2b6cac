"""`VideoClassifier`: an adapted image backbone as the authors' video model, and `build_video_classifier`, which
makes one from a model spec and records how, for `from_pretrained`.

The video feature is formed the way the backbone forms its image feature: the backbone's own forward runs on
all frames, and with the authors' pooling ("mean_then_norm") a pre-hook on its final norm averages what reaches
that norm over the frames of each clip (the class token for CLIP; the pooled token where a backbone pools
before its norm; every token where it norms the tokens and then pools them, by averaging or an attention-pool
head). So at one frame the video feature is exactly the backbone's own image feature.
"""
import contextlib
import os

import torch
from torch import nn

from ..files import check_regular_file
from ..validation import as_int
from .adapters import add_st_adapters, has_st_adapters, set_num_frames
from .backbones import (BACKBONE_TYPES, absolute_spec, backbone_key, backbone_type, check_model_name,
                        create_backbone, load_backbone_checkpoint)

POOLINGS = ("mean_then_norm", "norm_then_mean")
AUTHORS_POOLING = "mean_then_norm"
BACKBONE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# timm.create_model arguments that would load other weights, leave weights uninitialised or put the model on
# another device or dtype than the classifier's: what to use instead.
FORBIDDEN_MODEL_KWARGS = {
    "pretrained": "pass local weights as checkpoint_path (nothing is downloaded)",
    "pretrained_cfg": "pass local weights as checkpoint_path", "pretrained_cfg_overlay": "pass local weights as "
    "checkpoint_path", "checkpoint_path": "pass it as checkpoint_path, not inside model_kwargs",
    "cache_dir": "pass local weights as checkpoint_path", "device": "move the classifier with .to(device)",
    "dtype": "use backbone_dtype (adapters and head stay float32)",
    "features_only": "ST-Adapters need the whole VisionTransformer"}


class _TemporalMean:
    """Forward pre-hook of the backbone's final norm: while `frames` is set (by VideoClassifier.forward), its
    input (clips * frames, ...) becomes the mean over each clip's frames (clips, ...), taken in fp32."""

    def __init__(self):
        self.frames = None

    def __call__(self, norm, args):
        if self.frames is None:
            return None
        x = args[0]
        mean = x.float().reshape(x.shape[0] // self.frames, self.frames, *x.shape[1:]).mean(1)
        return (mean.to(x.dtype), *args[1:])


def _backbone_autocast(device_type, dtype):
    """Autocast to `dtype` for a backbone whose frozen weights are kept in it, unless the caller's
    autocast is already on (it then applies unchanged: never switched off, never overridden)."""
    if dtype is None or not torch.amp.is_autocast_available(device_type) or torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


class VideoClassifier(nn.Module):
    """Video (B, 3, T, H, W) -> logits, as the authors' video model: every frame through the (adapted, frozen)
    image backbone, its features pooled over time, dropout, a linear head. Only adapters and head train.

    Args:
        backbone: a supported image backbone with adapters (`add_st_adapters`).
        num_classes: classes of the video task (an int >= 1).
        dropout: before the head, in [0, 1) (the authors use 0.5).
        backbone_dtype: None, torch.float16 or torch.bfloat16 (or its name) to keep the frozen backbone weights
            in low precision (adapters and head stay fp32), as the authors keep theirs in fp16. The backbone then
            runs under torch.autocast in that dtype, unless the caller's own autocast is on, which is always
            honoured (never switched off inside). torch.float32: as None.
        pooling: "mean_then_norm" (the authors': what reaches the backbone's final norm averaged over time, then
            the norm and the rest of the backbone's own pooling: for CLIP the class token averaged, then ln_post)
            or "norm_then_mean" (each frame's image feature, as the backbone computes it, averaged over time).
            The norm is not linear, so the two give different models; loading the authors' checkpoint needs
            theirs. At one frame both give exactly the backbone's own image feature.

    The backbone's classifier head (timm) or image-text projection (open_clip) is removed: `head` replaces it.
    """

    checkpoint_children = ("head",)   # saved with the adapters by save_adapters (see adapted.py)
    # build_record() arguments that decide the function computed, which load_adapters requires a folder's record
    # to agree on (how it runs, the frame count and where the backbone's weights came from may differ)
    record_identity_keys = ("model_name", "model_kwargs", "num_classes", "pooling")

    def __init__(self, backbone, num_classes, dropout=0.5, backbone_dtype=None, pooling=AUTHORS_POOLING):
        super().__init__()
        kind = backbone_type(backbone)
        if not has_st_adapters(backbone):
            raise ValueError("backbone has no ST-Adapters: call add_st_adapters(backbone, ...) first")
        num_classes = as_int("num_classes", num_classes, 1)
        dropout = check_dropout(dropout)
        backbone_dtype = check_backbone_dtype(backbone_dtype)
        check_pooling(pooling)
        kind.library.check_features(backbone)
        kind.library.strip_head(backbone)
        self.backbone = backbone
        self._backbone_key = backbone_key(backbone)   # a str: the classifier stays picklable
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(kind.library.num_features(backbone), num_classes)
        self.backbone_dtype = backbone_dtype
        self.pooling = pooling
        self._temporal_mean = _TemporalMean()
        kind.final_norm(backbone).register_forward_pre_hook(self._temporal_mean)
        if backbone_dtype is not None:
            for name, p in backbone.named_parameters():
                if ".st_adapter_" not in name:
                    p.data = p.data.to(backbone_dtype)

    def forward(self, video):
        """Logits (B, num_classes) of a video batch (B, 3, T, H, W): channels before frames, floating point."""
        kind = BACKBONE_TYPES[self._backbone_key]
        video = self._checked_video(video, kind)
        clips, channels, frames, height, width = video.shape
        if has_st_adapters(self.backbone):   # not after remove_st_adapters
            set_num_frames(self.backbone, frames)
        images = video.transpose(1, 2).reshape(clips * frames, channels, height, width)
        with _backbone_autocast(video.device.type, self.backbone_dtype):
            if self.pooling == AUTHORS_POOLING and frames > 1:
                self._temporal_mean.frames = frames
                try:
                    features = kind.library.features(self.backbone, images)
                finally:
                    self._temporal_mean.frames = None
            else:
                features = kind.library.features(self.backbone, images)
                features = features.float().reshape(clips, frames, -1).mean(1)
        return self.head(self.dropout(features.float()))

    def _checked_video(self, video, kind):
        """`video` in the dtype of the backbone's patch embedding; errors that name what is wrong."""
        conv = kind.patch_conv(self.backbone)
        channels = conv.in_channels
        if not isinstance(video, torch.Tensor) or video.dim() != 5 or video.shape[1] != channels:
            got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            hint = ""
            if isinstance(video, torch.Tensor) and video.dim() == 5 and video.shape[2] == channels:
                hint = ("; this looks like (B, T, C, H, W): pass video.permute(0, 2, 1, 3, 4) (or "
                        "video.transpose(1, 2))")
            raise ValueError(f"video must have shape (B, {channels}, T, H, W), channels before frames, got {got}{hint}")
        if not video.is_floating_point():
            raise TypeError(f"video must be a floating-point tensor (normalised pixel values), got {video.dtype}: "
                            "convert it, e.g. video.float() / 255 and the backbone's mean/std")
        if video.device != conv.weight.device:
            raise ValueError(f"video is on {video.device} but the classifier is on {conv.weight.device}: move one of "
                             f"them (video.to({str(conv.weight.device)!r}) or classifier.to(...))")
        kind.library.check_image_size(self.backbone, video.shape[-2:])
        return video.to(conv.weight.dtype) if conv.weight.is_floating_point() else video

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


def check_pooling(pooling):
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return pooling


def check_dropout(dropout):
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    return float(dropout)


def check_backbone_dtype(dtype):
    """None, or float16 / bfloat16 (a torch.dtype or its name); float32 is None (weights as they are)."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""), dtype)
    if dtype is not None and dtype not in BACKBONE_DTYPES:
        raise ValueError(f"backbone_dtype must be None or one of {BACKBONE_DTYPES} (or their names), got {dtype!r}")
    return None if dtype == torch.float32 else dtype


def check_model_kwargs(model_kwargs, where="model_kwargs"):
    """ValueError naming `where` and the key if `model_kwargs` (for timm.create_model) would load other weights,
    leave them uninitialised or choose a device or dtype (FORBIDDEN_MODEL_KWARGS says what to use instead);
    TypeError if it is not a dict with str keys."""
    if not isinstance(model_kwargs, dict) or not all(isinstance(k, str) for k in model_kwargs):
        raise TypeError(f"{where} must be a dict of str keys (the backbone's arguments) or None, got {model_kwargs!r}")
    for key, instead in FORBIDDEN_MODEL_KWARGS.items():
        if key in model_kwargs:
            raise ValueError(f"{where}: {key!r} is not allowed (it would choose the backbone's weights, device or "
                             f"form behind the classifier's back): {instead}")
    if model_kwargs.get("weight_init") == "skip":
        raise ValueError(f"{where}: weight_init 'skip' leaves the backbone's weights uninitialised: pass "
                         "checkpoint_path to load weights")


def build_video_classifier(model_name, num_classes, *, num_frames=8, adapter_channels=384, kernel_size=(3, 1, 1),
                           placement=("mlp",), layers=None, activation="gelu", backend="auto", checkpoint_path=None,
                           dropout=0.5, backbone_dtype=None, pooling=AUTHORS_POOLING, model_kwargs=None, seed=None):
    """A VideoClassifier from a model spec: random init, or the weights of a local checkpoint file (no network
    access). Every argument is checked before anything is built.

    Args:
        model_name: a timm model name (e.g. "vit_base_patch16_clip_quickgelu_224"), "hf:<model type or local
            config folder>" (model types: clip, siglip, dinov2, dinov2_with_registers, dinov3_vit; needs the
            [hf] extra) or "open_clip:<model name or local model-config .json>" (e.g. ViT-B-16-quickgelu; needs
            the [open_clip] extra).
        num_classes, dropout, backbone_dtype, pooling: as VideoClassifier.
        num_frames, adapter_channels, kernel_size, placement, layers, activation, backend: as add_st_adapters.
        checkpoint_path: a local file with the backbone's weights (timm format, the transformers model's or a
            whole CLIP's, an open_clip CLIP's), loaded strictly.
        model_kwargs: timm.create_model's arguments (e.g. img_size), a transformers config's fields or an
            open_clip vision_cfg's fields; `img_size` works for all three.
        seed: if given, the random init (backbone, adapters, head) draws from this seed, without touching
            torch's global RNG, so that the same call gives the same model.

    The authors' models: `vit_base_patch16_clip_quickgelu_224` (or `open_clip:ViT-B-16-quickgelu`), OpenAI
    CLIP's architecture with its QuickGELU MLPs, `adapter_channels=384`, `activation=None`, `placement="mlp"`
    (their Kinetics-400 model) or `("attn", "mlp")` (Something-Something v2). The timm `*_clip_224` models
    without "quickgelu" use GELU: a different network from OpenAI's CLIP.

    The classifier records these arguments (`build_arguments`), which `save_adapters` writes so that
    `from_pretrained` can rebuild it."""
    check_model_name(model_name)
    as_int("num_classes", num_classes, 1)
    as_int("num_frames", num_frames, 1)
    check_dropout(dropout)
    check_backbone_dtype(backbone_dtype)
    check_pooling(pooling)
    if model_kwargs is not None:
        check_model_kwargs(model_kwargs)
    if seed is not None:
        as_int("seed", seed, 0)
    if checkpoint_path is not None:
        check_regular_file(checkpoint_path, "checkpoint_path")
    adapter_arguments = dict(adapter_channels=adapter_channels, kernel_size=kernel_size, placement=placement,
                             layers=layers, activation=activation, backend=backend)
    arguments = dict(model_name=absolute_spec(model_name), num_classes=num_classes, num_frames=num_frames,
                     checkpoint_path=None if checkpoint_path is None else os.path.abspath(checkpoint_path),
                     dropout=dropout, backbone_dtype=backbone_dtype, pooling=pooling,
                     model_kwargs=dict(model_kwargs or {}), seed=seed,
                     **{k: list(v) if isinstance(v, tuple) else v for k, v in adapter_arguments.items()})
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        backbone = create_backbone(model_name, **dict(model_kwargs or {}))
        if not backbone_type(backbone).blocks(backbone):
            raise ValueError(f"model_name={model_name!r} with model_kwargs={dict(model_kwargs or {})}: the "
                             f"{type(backbone).__name__} has no blocks to put adapters in")
        if checkpoint_path is not None:
            load_backbone_checkpoint(backbone, checkpoint_path)
        add_st_adapters(backbone, num_frames=num_frames, **adapter_arguments)
        classifier = VideoClassifier(backbone, num_classes, dropout=dropout, backbone_dtype=backbone_dtype,
                                     pooling=pooling)
    classifier.build_arguments = arguments   # what save_adapters records for from_pretrained
    return classifier
