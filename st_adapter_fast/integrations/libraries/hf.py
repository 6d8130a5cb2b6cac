"""Hugging Face transformers: CLIPVisionModel, SiglipVisionModel, Dinov2Model (with registers too) and
DINOv3ViTModel, built from a config (a built-in model type's defaults or a local folder's config.json, with
overrides), never downloaded."""
import os

from . import import_library
from ..state import matching_state, read_state_dict

# model type of a vision config -> the transformers class of its vision model
MODEL_CLASSES = {"clip_vision_model": "CLIPVisionModel", "siglip_vision_model": "SiglipVisionModel",
                 "dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel",
                 "dinov3_vit": "DINOv3ViTModel"}
# model types whose config holds the vision model's config as `vision_config` (a whole CLIP / SigLIP)
COMPOSITE = ("clip", "siglip")
# the models whose forward needs interpolate_pos_encoding=True for another image size (the others always do it)
INTERPOLATE_ON_REQUEST = ("clip_vision_model", "siglip_vision_model")
_BACKBONE_FIELDS = ("stage_names", "out_features", "out_indices")


def _transformers():
    return import_library("transformers", "transformers", "hf")


def check_name(name):
    """ValueError unless `name` is a local folder with a config.json or a supported model type."""
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ValueError(f"hf:{name}: the folder has no config.json")
    elif name not in MODEL_CLASSES and name not in COMPOSITE:
        raise ValueError(f"hf:{name}: not a local folder with a config.json nor a supported model type "
                         f"({', '.join(COMPOSITE + tuple(MODEL_CLASSES))})")


def _vision_config(name, overrides):
    """The vision model's config of `name` (a local folder's, or a model type's defaults) with `overrides`."""
    transformers = _transformers()
    if os.path.isdir(name):
        config = transformers.AutoConfig.from_pretrained(name, local_files_only=True)
    else:
        config = transformers.AutoConfig.for_model(name)
    if config.model_type in COMPOSITE:
        config = config.vision_config
    if config.model_type not in MODEL_CLASSES:
        raise ValueError(f"hf:{name}: model type {config.model_type!r} is not supported; supported: "
                         f"{', '.join(COMPOSITE + tuple(MODEL_CLASSES))}")
    fields = config.to_dict()
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise TypeError(f"hf:{name}: {type(config).__name__} has no field {', '.join(map(repr, unknown))}")
    # a folder's values, but for those of transformers' *Backbone classes, which follow num_hidden_layers
    saved = {k: v for k, v in fields.items() if k not in _BACKBONE_FIELDS} if os.path.isdir(name) else {}
    try:
        return type(config)(**{**saved, **overrides})
    except Exception as error:   # transformers' config validation (not a ValueError in every version)
        raise ValueError(f"hf:{name}: the config does not take {overrides}: {error}") from None


def create(name, **overrides):
    """The vision model of `name` with random weights, its config's fields replaced by `overrides` (`img_size`
    is taken for `image_size`, as timm names it)."""
    check_name(name)
    if "img_size" in overrides:
        overrides["image_size"] = overrides.pop("img_size")
    config = _vision_config(name, overrides)
    model_class = getattr(_transformers(), MODEL_CLASSES[config.model_type], None)
    if model_class is None:
        raise ValueError(f"hf:{name}: this transformers version has no {MODEL_CLASSES[config.model_type]}")
    return model_class(config)


def checkpoint_state(model, path):
    """The model's tensors in a local checkpoint file (its own keys, or those of a whole CLIP / SigLIP under
    `vision_model.`)."""
    return matching_state(model, read_state_dict(path))


def features(model, images):
    """The model's own image feature, `pooler_output` (the class token after the final norm, or SigLIP's
    attention-pool head); for a SigLIP without head, which has none, the mean of its final tokens."""
    size = getattr(model.config, "image_size", None)
    resize = model.config.model_type in INTERPOLATE_ON_REQUEST and tuple(images.shape[-2:]) != (size, size)
    out = model(pixel_values=images, **(dict(interpolate_pos_encoding=True) if resize else {}))
    return out.last_hidden_state.mean(1) if out.pooler_output is None else out.pooler_output


def num_features(model):
    return model.config.hidden_size


def strip_head(model):
    """Nothing to strip: the vision models have no classifier head."""


def set_grad_checkpointing(model, enable):
    """transformers' own switch: activation_checkpointing_enable where it exists (gradient_checkpointing_enable,
    its older name, is deprecated there)."""
    verb = "enable" if enable else "disable"
    switch = getattr(model, f"activation_checkpointing_{verb}", None)
    (switch or getattr(model, f"gradient_checkpointing_{verb}"))()


def check(model):
    """Nothing to check: every supported model runs its blocks on (batch, tokens, channels)."""


def check_features(model):
    """Every supported model has an image feature."""


def check_image_size(model, size):
    """Any size: CLIP and SigLIP are asked to interpolate their position embeddings, the others always do."""
