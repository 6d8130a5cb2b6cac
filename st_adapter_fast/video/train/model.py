"""The run's model and optimizer: the VideoClassifier of a config, AdamW with its warmup + cosine schedule,
and the config's autocast."""
import json
import math
import os

import torch

from ...console import renamed_error
from ...integrations.backbones import absolute_spec
from ...integrations.checkpointing import set_checkpointing
from .config import config_key, field_key


AMP_DTYPES = dict(bf16=torch.bfloat16, fp16=torch.float16)
# build_video_classifier's arguments whose TrainConfig field has another name (classifier_arguments)
_ARGUMENT_FIELDS = dict(model_name="model", checkpoint_path="backbone_checkpoint", layers="adapter_layers")


def classifier_arguments(config):
    """The build_video_classifier arguments of `config` (the model part of a run). Under `amp` the frozen
    backbone's weights are kept in the amp dtype unless `backbone_fp32`; init draws from `config.seed`."""
    return dict(model_name=absolute_spec(config.model), num_classes=config.num_classes, num_frames=config.num_frames,
                checkpoint_path=config.backbone_checkpoint, dropout=config.dropout,
                backbone_dtype=None if config.backbone_fp32 else AMP_DTYPES.get(config.amp), pooling=config.pooling,
                model_kwargs=dict(dict(img_size=config.input_size), **config.model_kwargs), seed=config.seed,
                adapter_channels=config.adapter_channels, kernel_size=tuple(config.kernel_size),
                placement=tuple(config.placement), layers=config.adapter_layers,
                activation=None if config.activation == "none" else config.activation, backend=config.backend)


def train_folder_arguments(folder):
    """build_video_classifier's arguments of the run whose adapters/ folder is `folder`, from its
    train_config.json; None if it has none (how from_pretrained reads an older run's folder, whose
    adapter_config.json records no build arguments)."""
    from .config import TRAIN_CONFIG_NAME, TrainConfig, load_config_file
    path = os.path.join(folder, TRAIN_CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    return model_record(TrainConfig.from_dict(load_config_file(path), source=path))


def model_record(config):
    """What a run of `config` records about its model (adapter_config.json's build arguments): the
    build_video_classifier arguments and the authors' checkpoint its weights started from."""
    authors = config.authors_checkpoint
    return dict(classifier_arguments(config), authors_checkpoint=authors and os.path.abspath(authors))


def run_model_record(folder, config):
    """The record of the model in a run's adapters/ folder (adapter_config.json's build arguments, what
    from_pretrained and load_adapters read), checked against the run's train_config.json (`config`): the one
    record is the model's, and train_config.json, which records the run (data, optimisation, evaluation),
    must not say otherwise. ValueError naming both files and the keys where they differ."""
    from ...integrations.pretrained import recorded_arguments
    record = recorded_arguments(folder)
    as_json = lambda values: json.loads(json.dumps(values, default=lambda v: str(v).replace("torch.", "")))
    ours, theirs = as_json(record), as_json(model_record(config))
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        raise ValueError(f"{folder}: adapter_config.json and train_config.json disagree on the model: "
                         + "; ".join(f"{k}: {ours.get(k)!r} against {theirs.get(k)!r}" for k in differ)
                         + " (adapter_config.json records the model, and from_pretrained and load_adapters read it; "
                         "train_config.json records the run and must not contradict it: undo the edit)")
    return record


def build_model(config):
    """The VideoClassifier of `config`, initialised from `config.seed` (the same on every rank), with the
    authors' checkpoint loaded if there is one and its blocks checkpointed as `config.grad_checkpointing` says
    (not compiled: `train` compiles what it trains)."""
    from ...integrations.authors import load_authors_checkpoint
    from ...integrations.classifier import build_video_classifier
    try:
        model = build_video_classifier(**classifier_arguments(config))
    except (ValueError, TypeError) as error:   # the API names its argument ("layers=[99]: ..."): name the flag
        raise renamed_error(error, lambda name: field_key(_ARGUMENT_FIELDS.get(name, name))) from None
    if config.authors_checkpoint:
        load_authors_checkpoint(model, config.authors_checkpoint)
        model.build_arguments["authors_checkpoint"] = os.path.abspath(config.authors_checkpoint)
    if config.grad_checkpointing != "none":
        set_checkpointing(model, config.grad_checkpointing)
    if config.linear_probe:
        for name, p in model.named_parameters():
            if ".st_adapter_" in name:
                p.requires_grad_(False)
    return model


def build_optimizer(model, config):
    """AdamW over the trainable parameters (no weight decay on biases and other 1-D tensors) and a
    per-step schedule: linear warmup from lr/warmup_steps to lr, then cosine decay to 0 at `steps`."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [dict(params=[p for p in params if p.ndim > 1], weight_decay=config.weight_decay),
              dict(params=[p for p in params if p.ndim <= 1], weight_decay=0.0)]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    warmup, total = config.warmup_steps, config.steps

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(config, device):
    """The autocast context of `config.amp` on `device` (disabled for amp none)."""
    dtype = AMP_DTYPES.get(config.amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def check_model_runs(model, config, device):
    """One clip of zeros through `model` as `config` runs it (autocast), in eval mode without gradients (no
    dropout: the RNG streams stay those of a run without it), before a run or an eval writes or reads anything:
    a model that cannot take the config's clips (an input_size below its patch size, a backend this device
    lacks) is refused naming the fields and flags. Returns what the backbone's Linear layers computed in."""
    from ...measure import compute_dtype_name, linear_compute_dtypes
    was_training = model.training
    model.eval()
    size = config.input_size
    try:
        with torch.no_grad(), autocast(config, device), linear_compute_dtypes(model.backbone) as seen:
            model(torch.zeros(1, 3, config.num_frames, size, size, device=device))
    except torch.cuda.OutOfMemoryError:   # (torch.OutOfMemoryError from torch 2.5 on: the same class)
        raise
    except (ValueError, TypeError) as error:   # the adapters' checks name their argument ("backend='cuda' ...")
        raise renamed_error(error, field_key) from None
    except RuntimeError as error:   # from inside the backbone
        raise ValueError(f"one clip of {config_key('num_frames')} {config.num_frames} frames at "
                         f"{config_key('input_size')} {size} cannot run through {config_key('model')} {config.model} "
                         f"on {device}: {' '.join(str(error).split())}") from None
    finally:
        model.train(was_training)
    return compute_dtype_name(seen)
