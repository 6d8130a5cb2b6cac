"""The image backbones ST-Adapters go into: one table of model types, and model specs.

Per model type: where its blocks are (their hook points: blocks.py), its patch embedding's conv (whose output's
H x W is the patch grid of each input), its final norm (where VideoClassifier averages over time for the
authors' pooling order) and how many prefix tokens (class, registers) precede the patches; and its library
(libraries/), which knows the model's own image feature, head, checkpointing switch and checkpoint files.

A model spec names a backbone to create: a timm model name ("vit_base_patch16_clip_224", or "timm:..."),
"hf:<model type or local config folder>" (e.g. "hf:dinov2", "hf:clip"), or "open_clip:<model name or local
model-config .json>" (e.g. "open_clip:ViT-B-16-quickgelu"). Nothing is downloaded.
"""
import dataclasses
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from .blocks import qualified_name
from .libraries import hf, open_clip, timm
from .state import load_checked

LIBRARIES = {"timm": timm, "hf": hf, "open_clip": open_clip}


@dataclass(frozen=True)
class BackboneType:
    library: ModuleType             # integrations/libraries/<library>.py
    blocks: Callable                # model -> its blocks (a sequence)
    patch_conv: Callable            # model -> the patch embedding's Conv2d
    final_norm: Callable            # model -> the first norm after the blocks
    num_prefix_tokens: Callable     # model -> class and register tokens before the patch tokens


def _at(path):
    """A getter of the attribute `path` ("a.b.c") of a model (a plain function rather than operator.attrgetter:
    torch.compile traces it)."""
    names = path.split(".")

    def get(model):
        for name in names:
            model = getattr(model, name)
        return model
    return get


def _one(model):
    return 1


def _none(model):
    return 0


def _with_registers(model):
    return 1 + model.config.num_register_tokens


_TIMM = BackboneType(timm, _at("blocks"), _at("patch_embed.proj"), timm.final_norm, timm.num_prefix_tokens)
_HF_CLIP = BackboneType(hf, _at("encoder.layers"), _at("embeddings.patch_embedding"), _at("post_layernorm"), _one)
_HF_DINO = BackboneType(hf, _at("encoder.layer"), _at("embeddings.patch_embeddings.projection"), _at("layernorm"),
                        _one)

# Keyed by the class's module and name (nothing here imports a library), matched along a model's MRO.
BACKBONE_TYPES = {
    "timm.models.vision_transformer.VisionTransformer": _TIMM,
    "timm.models.eva.Eva": _TIMM,
    "transformers.models.clip.modeling_clip.CLIPVisionModel": _HF_CLIP,
    "transformers.models.siglip.modeling_siglip.SiglipVisionModel": BackboneType(
        hf, _at("encoder.layers"), _at("embeddings.patch_embedding"), _at("post_layernorm"), _none),
    "transformers.models.dinov2.modeling_dinov2.Dinov2Model": _HF_DINO,
    "transformers.models.dinov2_with_registers.modeling_dinov2_with_registers.Dinov2WithRegistersModel":
        dataclasses.replace(_HF_DINO, num_prefix_tokens=_with_registers),
    "transformers.models.dinov3_vit.modeling_dinov3_vit.DINOv3ViTModel": BackboneType(
        hf, _at("model.layer"), _at("embeddings.patch_embeddings"), _at("norm"), _with_registers),
    "open_clip.transformer.VisionTransformer": BackboneType(
        open_clip, _at("transformer.resblocks"), _at("conv1"), _at("ln_post"), _one),
}

SUPPORTED = ("timm VisionTransformer and Eva models; transformers CLIPVisionModel, SiglipVisionModel, Dinov2Model, "
             "Dinov2WithRegistersModel, DINOv3ViTModel; open_clip VisionTransformer (an open_clip CLIP's .visual)")


def backbone_key(model):
    """The BACKBONE_TYPES key of `model` (its class or the nearest base class in the table); TypeError naming
    the supported models if there is none."""
    for cls in type(model).__mro__:
        if qualified_name(cls) in BACKBONE_TYPES:
            return qualified_name(cls)
    hint = " (add adapters to its backbone: VideoClassifier.backbone)" if hasattr(model, "backbone") else ""
    raise TypeError(f"{type(model).__name__} is not a supported image backbone{hint}; supported: {SUPPORTED}")


def backbone_type(model):
    """The BackboneType of `model`, after its library's checks (TypeError if it is not supported)."""
    kind = BACKBONE_TYPES[backbone_key(model)]
    kind.library.check(model)
    return kind


def backbone_blocks(model):
    """The transformer blocks of a supported backbone, in order (where the adapters go)."""
    return list(backbone_type(model).blocks(model))


def set_grad_checkpointing(model, enable=True):
    """Turn activation checkpointing of every block on (or off) with the backbone's own library switch: timm's
    and open_clip's `set_grad_checkpointing`, transformers' `activation_checkpointing_enable`. `model` is the
    backbone or a VideoClassifier."""
    backbone = getattr(model, "backbone", model)
    backbone_type(backbone).library.set_grad_checkpointing(backbone, enable)


def split_spec(spec):
    """(library module, name) of a model spec: "hf:NAME", "open_clip:NAME", "timm:NAME" or a timm name."""
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"model_name must be a non-empty str (a timm name, 'hf:...' or 'open_clip:...'), got {spec!r}")
    prefix, colon, name = spec.partition(":")
    if colon and prefix in LIBRARIES:
        if not name:
            raise ValueError(f"model_name {spec!r} names no model after {prefix + ':'!r}")
        return LIBRARIES[prefix], name
    return timm, spec


def check_model_name(spec):
    """ValueError unless `spec` names a backbone that can be created (ImportError naming the extra if its
    library is not installed)."""
    library, name = split_spec(spec)
    library.check_name(name)


def absolute_spec(spec):
    """`spec` in one spelling per model, as recorded: a local config path made absolute, so that a recorded spec
    works from any directory, and timm's names without the optional `timm:` prefix."""
    library, name = split_spec(spec)
    if library is timm:
        return name
    if not os.path.exists(name):
        return spec
    prefix = next(p for p, lib in LIBRARIES.items() if lib is library)
    return f"{prefix}:{os.path.abspath(name)}"


def create_backbone(spec, **kwargs):
    """The backbone that `spec` names, with random weights and no classifier head; `kwargs` go to the
    library (timm.create_model's arguments, a transformers config's fields, an open_clip vision_cfg's fields;
    `img_size` works for all three). TypeError if it is not a supported backbone (an open_clip ResNet, say)."""
    library, name = split_spec(spec)
    try:
        model = library.create(name, **kwargs)
    except (TypeError, ValueError, ImportError):   # the libraries' checks name what is wrong
        raise
    except Exception as error:   # a value the library fails on deep inside (patch_size=0: ZeroDivisionError, ...)
        raise ValueError(f"{spec} cannot be created with {kwargs}: {type(error).__name__}: {error or 'no message'} "
                         "(check model_kwargs)") from None
    backbone_type(model)
    return model


def load_backbone_checkpoint(model, path):
    """The weights of a local checkpoint file into the backbone, strictly (every tensor checked first)."""
    load_checked(model, backbone_type(model).library.checkpoint_state(model, path), f"checkpoint {path}")
