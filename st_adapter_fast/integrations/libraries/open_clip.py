"""open_clip: the image tower (`VisionTransformer`) of a built-in model config (e.g. ViT-B-16-quickgelu, OpenAI
CLIP's architecture) or of a local model-config JSON, with overrides, never downloaded."""
import json
import os

from . import import_library
from ..state import matching_state, read_state_dict


def _open_clip():
    return import_library("open_clip", "open_clip_torch", "open_clip")


def _model_config(name):
    """The model config (embed_dim, quick_gelu, vision_cfg, ...) of a local JSON file or a built-in name."""
    if name.endswith(".json"):
        if not os.path.isfile(name):
            raise ValueError(f"open_clip:{name}: no such model-config file")
        with open(name) as f:
            config = json.load(f)
    else:
        config = _open_clip().get_model_config(name)
        if config is None:
            raise ValueError(f"open_clip:{name}: unknown model; open_clip.list_models() lists the built-in ones, "
                             "or give a model-config .json file")
    if not isinstance(config, dict) or not isinstance(config.get("vision_cfg"), dict):
        raise ValueError(f"open_clip:{name}: the model config has no vision_cfg")
    return config


def check_name(name):
    """ValueError unless `name` is a built-in open_clip model or a model-config JSON file."""
    _model_config(name)


def create(name, **overrides):
    """The image tower of `name` with random weights, its vision_cfg fields replaced by `overrides` (`img_size`
    is taken for `image_size`, as timm names it)."""
    import dataclasses
    open_clip = _open_clip()
    config = _model_config(name)
    if "img_size" in overrides:
        overrides["image_size"] = overrides.pop("img_size")
    fields = {f.name for f in dataclasses.fields(open_clip.model.CLIPVisionCfg)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"open_clip:{name}: vision_cfg has no field {', '.join(map(repr, unknown))}")
    vision_cfg = open_clip.model.CLIPVisionCfg(**{**config["vision_cfg"], **overrides})
    return open_clip.model._build_vision_tower(config.get("embed_dim", vision_cfg.width), vision_cfg,
                                              quick_gelu=config.get("quick_gelu", False))


def checkpoint_state(model, path):
    """The image tower's tensors in a local checkpoint file (its own keys, or a whole CLIP's under `visual.`)."""
    return matching_state(model, read_state_dict(path))


def features(model, images):
    """The tower's own image feature (its projection is removed by `strip_head`)."""
    out = model(images)
    return out[0] if isinstance(out, tuple) else out


def num_features(model):
    return model.ln_post.normalized_shape[0]


def strip_head(model):
    """The image-text projection `proj`, like timm's head, is replaced by the classifier's."""
    model.proj = None


def set_grad_checkpointing(model, enable):
    model.set_grad_checkpointing(enable)


def check(model):
    """Older open_clip versions ran their blocks sequence-first (tokens, batch, channels): not what adapters take."""
    if not getattr(model.transformer, "batch_first", False):
        raise TypeError("this open_clip VisionTransformer runs its blocks sequence-first; ST-Adapters need "
                        "open_clip_torch >= 3 (batch-first blocks)")


def check_features(model):
    """Every image tower has an image feature."""


def check_image_size(model, size):
    """The tower's position embedding is fixed: it takes only the image size it was built for."""
    if tuple(size) != tuple(model.image_size):
        raise ValueError(f"the open_clip model takes {tuple(model.image_size)} frames, got {tuple(size)} (build it "
                         "with image_size=...)")
