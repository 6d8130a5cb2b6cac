"""timm: VisionTransformer and Eva models (CLIP, DINOv2/v3, DeiT, SigLIP, EVA-02, PE, RoPE ViTs, ...)."""
import sys

from torch import nn

from . import import_library
from ..state import read_state_dict


def _timm():
    return import_library("timm", "timm", "video")


def check_name(name):
    """ValueError if timm has no model `name` (timm itself raises a RuntimeError, late)."""
    if not _timm().is_model(name):
        raise ValueError(f"unknown timm model {name!r}; timm.list_models('*vit*') lists the ViTs")


def create(name, **kwargs):
    """The model without its classifier head (num_classes=0), random init."""
    return create_timm_model(name, **dict(kwargs, num_classes=0))


def create_timm_model(name, **kwargs):
    """timm.create_model(name, pretrained=False, **kwargs), with errors that say what is wrong: an unknown name
    or arguments the model does not take."""
    check_name(name)
    try:
        return _timm().create_model(name, pretrained=False, **kwargs)
    except TypeError as error:   # an argument the model does not take (img_size: not a ViT)
        raise TypeError(f"timm model {name!r} cannot be created with {kwargs} ({error}); ST-Adapters "
                        "need a timm VisionTransformer or Eva model") from None


def checkpoint_state(model, path):
    """The tensors of a local timm-format (or, through the model's own filter, e.g. OpenAI CLIP) checkpoint for
    `model`, but for the classifier head. timm's pretrained-file route is not used: how it reads a local file
    differs between timm versions (some take any file for a JAX .npz)."""
    state = read_state_dict(path)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def features(model, images):
    """The model's own image feature: its pre-logits (pooling, fc_norm, head dropout), as forward computes."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


def final_norm(model):
    """The first norm after the blocks: `norm` on every token, or `fc_norm` on the pooled one (average pooling)."""
    for name in ("norm", "fc_norm"):
        if not isinstance(getattr(model, name), nn.Identity):
            return getattr(model, name)
    return model.norm


def num_features(model):
    return model.num_features


def strip_head(model):
    model.reset_classifier(0)


def set_grad_checkpointing(model, enable):
    model.set_grad_checkpointing(enable)


def num_prefix_tokens(model):
    return model.num_prefix_tokens


def check(model):
    """Nothing to check: timm ViTs run their blocks on (batch, tokens, channels)."""


def check_features(model):
    """A timm model built without pooling (global_pool='') gives tokens, not an image feature."""
    if not model.global_pool and getattr(model, "attn_pool", None) is None:
        raise ValueError(f"the timm model has no pooling (global_pool={model.global_pool!r}): build it with "
                         "global_pool='token', 'avg' or 'map'")


def check_image_size(model, size):
    """A model without dynamic_img_size takes only the image size it was built for."""
    patch_embed = model.patch_embed
    fixed = getattr(patch_embed, "strict_img_size", False) and not getattr(model, "dynamic_img_size", False)
    if fixed and tuple(size) != tuple(patch_embed.img_size):
        raise ValueError(f"the timm model takes {tuple(patch_embed.img_size)} frames, got {tuple(size)} (build it "
                         "with img_size=..., or dynamic_img_size=True for any size)")
