"""The authors' released video ViT: OpenAI CLIP's visual transformer (`conv1`, `class_embedding`,
`positional_embedding`, `ln_pre`, `transformer.resblocks.{i}.{ln_1, attn, ln_2, mlp, adapter_pre_attn,
adapter_pre_mlp}`, `ln_post`), the class token averaged over time before `ln_post`, dropout and a head `fc`.
Their checkpoints load into a VideoClassifier built on timm's QuickGELU CLIP ViT or open_clip's ViT (whose keys
are OpenAI CLIP's own)."""
import os
import warnings
from collections.abc import Mapping

from .adapters import adapter_config
from .backbones import backbone_blocks, backbone_type
from .classifier import AUTHORS_POOLING, VideoClassifier
from .libraries import open_clip, timm
from .state import check_state_dict, read_state_dict

_AUTHORS_ADAPTER_NAMES = {"adapter_pre_attn": "st_adapter_attn", "adapter_pre_mlp": "st_adapter_mlp"}
LAYOUTS = ("timm", "open_clip")
_MLP_ACTIVATION = {"timm": "mlp.act", "open_clip": "mlp.gelu"}   # where a block's MLP keeps its activation


def convert_authors_state_dict(state_dict, prefix="", layout="timm"):
    """Keys of the authors' video ViT (under `prefix`) mapped onto a VideoClassifier (`backbone.*`, `head.*`)
    whose backbone is a timm CLIP ViT (`layout="timm"`) or an open_clip ViT (`layout="open_clip"`). The CLIP
    image-text projection `proj`, if present, has no place in the classifier and is dropped."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    head = {f"head.{k[3:]}": v for k, v in state_dict.items() if k.startswith("fc.")}
    backbone = {k: v for k, v in state_dict.items() if not k.startswith("fc.") and k != "proj"}
    if layout == "timm":
        backbone = _timm_clip_keys(backbone)
    out = dict(head)
    for k, v in backbone.items():
        for theirs, ours in _AUTHORS_ADAPTER_NAMES.items():
            k = k.replace(f".{theirs}.", f".{ours}.")
        out[f"backbone.{k}"] = v
    return out


def _timm_clip_keys(state_dict):
    from timm.models import vision_transformer
    convert_clip = getattr(vision_transformer, "_convert_openai_clip", None)
    if convert_clip is None:
        raise RuntimeError("this timm version has no OpenAI-CLIP key converter; map the backbone keys yourself")
    return convert_clip(state_dict, None, prefix="")


def _layout(classifier):
    """The key layout of the classifier's backbone; TypeError if their model cannot be loaded into it."""
    if not isinstance(classifier, VideoClassifier):
        raise TypeError(f"load_authors_checkpoint needs a VideoClassifier (build_video_classifier), got "
                        f"{type(classifier).__name__}")
    library = backbone_type(classifier.backbone).library
    if library not in (timm, open_clip):
        raise TypeError("the authors' model is OpenAI CLIP's ViT: build the classifier from timm's "
                        "vit_base_patch16_clip_quickgelu_224 or open_clip:ViT-B-16-quickgelu")
    return "timm" if library is timm else "open_clip"


def _architecture_problems(classifier, layout):
    """What differs between `classifier` and the authors' video ViT that their weights were trained in."""
    backbone = classifier.backbone
    problems = []
    acts = [_module_at(block, _MLP_ACTIVATION[layout]) for block in backbone_blocks(backbone)]
    if not all(type(act).__name__ == "QuickGELU" for act in acts):
        problems.append(f"the backbone's MLPs use {sorted({type(act).__name__ for act in acts})}, OpenAI CLIP's use "
                        "QuickGELU (build it from vit_base_patch16_clip_quickgelu_224 or open_clip:ViT-B-16-quickgelu)")
    token_pooling = (backbone.global_pool == "token" if layout == "timm"
                     else backbone.pool_type == "tok" and backbone.attn_pool is None)
    if not token_pooling:
        problems.append("the backbone does not pool the class token, as CLIP does")
    activation = adapter_config(classifier)["activation"]
    if activation is not None:
        problems.append(f"the adapters use activation={activation!r}, the authors' release uses none "
                        "(activation=None)")
    return problems


def _module_at(block, path):
    for name in path.split("."):
        block = getattr(block, name, None)
    return block


def load_authors_checkpoint(classifier, state_dict, prefix="", strict_architecture=True):
    """Load the authors' released video ViT (a state dict, or the path of a local checkpoint file, see
    `read_state_dict`) into `classifier`, strictly: a VideoClassifier whose backbone is a timm CLIP ViT or an
    open_clip ViT with QuickGELU MLPs and the same adapters, `activation=None`.

    Everything is checked before the first tensor is copied (the architecture, then every key, shape and dtype
    and that the values are finite): on an error the classifier is unchanged. Their model averages the class
    token over time before the final norm, so `classifier.pooling` is set to "mean_then_norm" (with a warning
    if it was not). A GELU backbone or adapters with an activation compute a different function from the one
    their accuracy was published for: ValueError, or only a warning with `strict_architecture=False`."""
    layout = _layout(classifier)
    source = "the authors' checkpoint"
    if isinstance(state_dict, (str, os.PathLike)):
        source = os.fspath(state_dict)
        state_dict = read_state_dict(state_dict)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a state dict or the path of a checkpoint file, got "
                        f"{type(state_dict).__name__}")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {prefix!r}")
    if not isinstance(strict_architecture, bool):
        raise TypeError(f"strict_architecture must be True or False, got {strict_architecture!r}")
    bad = next((k for k in state_dict if not isinstance(k, str)), None)
    if bad is not None:
        raise TypeError(f"{source}: state dict keys must be str, got {type(bad).__name__} {bad!r}")
    problems = _architecture_problems(classifier, layout)
    if problems:
        message = "this classifier is not the authors' model: " + "; ".join(problems)
        if strict_architecture:
            raise ValueError(message + " (strict_architecture=False loads anyway)")
        warnings.warn(message, stacklevel=2)
    converted = convert_authors_state_dict(dict(state_dict), prefix, layout)
    check_state_dict(classifier.state_dict(), converted, source)
    classifier.load_state_dict(converted, strict=True)
    if classifier.pooling != AUTHORS_POOLING:
        warnings.warn(f"load_authors_checkpoint: pooling set to {AUTHORS_POOLING!r} (was {classifier.pooling!r}), "
                      "the authors' order", stacklevel=2)
        classifier.pooling = AUTHORS_POOLING
    return classifier
