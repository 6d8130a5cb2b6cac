"""Fine-tune a frozen timm ViT with ST-Adapters on a video list, and evaluate it.

`train(config)` runs on one process or under `torchrun` (DDP: gloo on CPU, nccl on GPU): AdamW with
linear warmup and cosine decay per optimizer step, autocast (bf16, or fp16 with a GradScaler), gradient
accumulation, checkpoints every `save_every` steps that resume bit for bit (trainable weights, optimizer,
schedule, scaler, RNG states of every rank, data position), an adapter-only result (`save_adapters`) and
top-1/top-5 on the validation list. `evaluate_adapters` scores a saved result.

Files under `output_dir`: checkpoint.pt (latest, for resume), log.jsonl (one line per logged step or
eval; training loss, accuracy and clips/s are rank 0's, evals cover all ranks), adapters/ (adapters +
head, with what `from_pretrained` needs, and train_config.json, with absolute paths, which `eval` reads),
metrics.json (final eval). `--no-resume` deletes these first.
"""
import contextlib
import dataclasses
import json
import math
import os
import random
import time
import typing
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ...checkpoint import TRAIN_CONFIG_NAME, _trainable
from ..data import ResumableSampler, SkipCounter, VideoDataset, collate_clips, read_video_list
from ...integrations.timm import AUTHORS_POOLING, PLACEMENTS, POOLINGS, check_timm_model_name
from ...measure import compute_dtype_name, linear_compute_dtypes
from ...ops import BACKENDS
from ...validation import check_kernel_size

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
LOG_NAME, METRICS_NAME, ADAPTERS_NAME = "log.jsonl", "metrics.json", "adapters"
RUN_FILES = (CHECKPOINT_NAME, LOG_NAME, METRICS_NAME, ADAPTERS_NAME)   # what a run writes to output_dir


def default_num_workers():
    """DataLoader workers per process by default: the CPU cores this process may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        cores = os.cpu_count() or 1
    return min(4, cores)


def _option(help, default_text=None, **checks):
    """Field metadata: its help, how --help shows its default (when not the value itself) and the checks
    that TrainConfig applies to it wherever it came from (choices, minimum, maximum)."""
    return dict(help=help, default_text=default_text, **checks)


@dataclass
class TrainConfig:
    """Everything a run depends on; every field is also a command-line flag (`--field-name`) and a key of
    a YAML/JSON config file. Values are checked on construction: a ValueError names the field."""

    # data
    train_list: str = field(default=None, metadata=_option("list file of training videos", "required"))
    val_list: str = field(default=None, metadata=_option("list file of validation videos", "none: no eval"))
    data_root: str = field(default=".", metadata=_option("directory the list files' paths are relative to"))
    num_classes: int = field(default=None, metadata=_option("number of classes", "required", minimum=1))
    num_frames: int = field(default=8, metadata=_option("frames per clip", minimum=1))
    sampling_rate: int = field(default=None, metadata=_option(
        "take every r-th frame", "frames evenly covering the whole video", minimum=1))
    input_size: int = field(default=224, metadata=_option("side of the square input frames", minimum=1))
    flip: bool = field(default=True, metadata=_option("random horizontal flips in training"))
    eval_views: int = field(default=1, metadata=_option("temporal views per video in eval", minimum=1))
    eval_crops: int = field(default=1, metadata=_option("spatial crops per view in eval", choices=(1, 3)))
    num_workers: int = field(default_factory=default_num_workers, metadata=_option(
        "DataLoader worker processes per rank", f"the cores available, at most 4: {default_num_workers()} here",
        minimum=0))
    # model
    model: str = field(default="vit_base_patch16_clip_224", metadata=_option(
        "timm model name (a VisionTransformer)"))
    model_kwargs: dict = field(default_factory=dict, metadata=_option(
        "JSON dict of extra timm.create_model arguments, e.g. '{\"depth\": 4}'"))
    backbone_checkpoint: str = field(default=None, metadata=_option(
        "local file with the backbone's pretrained weights", "random init"))
    adapter_channels: int = field(default=384, metadata=_option("adapter bottleneck width Ca", minimum=1))
    kernel_size: typing.List[int] = field(default_factory=lambda: [3, 1, 1], metadata=_option(
        "adapter conv kernel kt kh kw (odd)"))
    placement: typing.List[str] = field(default_factory=lambda: ["mlp"], metadata=_option(
        "adapter places in a block: attn and/or mlp ('mlp' needs timm's ViT Block: use attn for EVA / RoPE ViTs)",
        choices=PLACEMENTS))
    adapter_layers: typing.List[int] = field(default=None, metadata=_option(
        "block indices that get adapters", "every block"))
    activation: str = field(default="gelu", metadata=_option(
        "adapter activation (none: the authors' release)", choices=("gelu", "quick_gelu", "none")))
    pooling: str = field(default=AUTHORS_POOLING, metadata=_option(
        "mean_then_norm (the authors': pooled token averaged over time, then the final norm) or "
        "norm_then_mean (per-frame normed features averaged)", choices=POOLINGS))
    authors_checkpoint: str = field(default=None, metadata=_option(
        "local file of the authors' released video model (adapters, backbone, head) to start from; "
        "needs a QuickGELU CLIP model, activation none and pooling mean_then_norm"))
    backend: str = field(default="auto", metadata=_option(
        "adapter backend: auto (the compiled kernels of the tensors' device, else the Triton kernels on a GPU, "
        "else the reference with a one-time warning saying why), cpu / cuda (the compiled kernels), triton, "
        "reference (the authors' PyTorch computation)", choices=BACKENDS))
    linear_probe: bool = field(default=False, metadata=_option(
        "train the head only: adapters stay at their identity init (a plain frozen image model)"))
    dropout: float = field(default=0.5, metadata=_option("dropout before the head", minimum=0.0, maximum=1.0))
    # optimisation
    batch_size: int = field(default=8, metadata=_option("clips per process and micro-step", minimum=1))
    accum_steps: int = field(default=1, metadata=_option("micro-steps per optimizer step", minimum=1))
    steps: int = field(default=1000, metadata=_option("optimizer steps", minimum=1))
    warmup_steps: int = field(default=100, metadata=_option(
        "linear warmup steps before the cosine decay", minimum=0))
    lr: float = field(default=3e-4, metadata=_option("peak learning rate", minimum=0.0))
    weight_decay: float = field(default=0.05, metadata=_option("AdamW weight decay (not on biases)", minimum=0.0))
    amp: str = field(default="none", metadata=_option("autocast dtype", choices=("none", "bf16", "fp16")))
    backbone_fp32: bool = field(default=False, metadata=_option(
        "keep the frozen backbone's weights in fp32 under --amp, not in the amp dtype (as the authors keep "
        "theirs in fp16)"))
    grad_checkpointing: bool = field(default=False, metadata=_option(
        "recompute each backbone block in backward instead of keeping its activations (less memory, "
        "more time)"))
    seed: int = field(default=0, metadata=_option("seed of init, data order and augmentation"))
    device: str = field(default=None, metadata=_option("cpu, cuda or cuda:N", "cuda if available"))
    # bookkeeping
    output_dir: str = field(default="runs/st-adapter", metadata=_option("where checkpoints and results go"))
    save_every: int = field(default=0, metadata=_option(
        "checkpoint every N steps (0: only at the end)", minimum=0))
    eval_every: int = field(default=0, metadata=_option("evaluate every N steps (0: only at the end)", minimum=0))
    log_every: int = field(default=10, metadata=_option("log.jsonl line every N steps", minimum=1))
    resume: bool = field(default=True, metadata=_option(
        "continue from output_dir/checkpoint.pt if present; --no-resume starts over, deleting the previous "
        "run's checkpoint.pt, log.jsonl, metrics.json and adapters/ in output_dir"))
    stop_at: int = field(default=None, metadata=_option(
        "stop after this step with a checkpoint, as if preempted; the schedule still spans --steps",
        "run to --steps", minimum=1))
    progress: bool = field(default=True, metadata=_option("progress bars (rank 0)"))

    def __post_init__(self):
        values = coerce_config_values({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "config")
        for f in dataclasses.fields(self):
            value = values[f.name]
            setattr(self, f.name, value)
            for item in value if isinstance(value, list) else [] if value is None else [value]:
                _check_value(f, item)
        if not self.placement:
            raise ValueError(f"{_key('placement')} needs at least one of {PLACEMENTS}")
        try:
            check_kernel_size(self.kernel_size)
        except ValueError as error:
            raise ValueError(f"{_key('kernel_size')}: {error}") from None
        try:
            check_timm_model_name(self.model)
        except ValueError as error:
            raise ValueError(f"{_key('model')}: {error}") from None
        if self.authors_checkpoint and self.pooling != AUTHORS_POOLING:
            raise ValueError(f"{_key('authors_checkpoint')} needs pooling {AUTHORS_POOLING!r} (the authors' "
                             f"order), got {self.pooling!r}")

    @classmethod
    def from_dict(cls, values, source="config"):
        """A config from a dict of field values (e.g. a YAML/JSON file's), each converted to its field's type
        where that is safe (`lr: 3e-3`, a string to YAML, becomes a float; a single `placement: mlp`
        a list); an unknown key or a value that does not convert raises ValueError naming `source` and
        the key."""
        return cls(**coerce_config_values(values, source))


def _key(name):
    """How errors name a field: the config key and its flag."""
    return f"{name} (--{name.replace('_', '-')})"


def _check_value(f, value):
    checks = f.metadata
    if checks.get("choices") is not None and value not in checks["choices"]:
        raise ValueError(f"{_key(f.name)} must be one of {', '.join(map(str, checks['choices']))}, got {value!r}")
    if checks.get("minimum") is not None and value < checks["minimum"]:
        raise ValueError(f"{_key(f.name)} must be >= {checks['minimum']}, got {value!r}")
    if checks.get("maximum") is not None and value > checks["maximum"]:
        raise ValueError(f"{_key(f.name)} must be <= {checks['maximum']}, got {value!r}")


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               dict: "a mapping (JSON object)"}


def _convert(kind, value):
    """`value` as `kind` (bool, int, float, str or dict), converting only what means the same (the string
    "3e-3" to a float, 8.0 to an int, "true" to a bool, a JSON string to a dict); else ValueError."""
    if kind is bool and isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    if kind in (int, float) and isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            value = float(value)   # a ValueError here too: not a number
    if kind in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if kind is float:
            return float(value)
        if isinstance(value, int) or value.is_integer():
            return int(value)
    if kind is dict and isinstance(value, str):
        value = json.loads(value)   # json.JSONDecodeError is a ValueError
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ValueError(f"not a {kind.__name__}")


def coerce_config_values(values, source):
    """`values` with each converted to its TrainConfig field's type (see TrainConfig.from_dict)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown config keys {unknown}")
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for name, value in values.items():
        kind = hints[name]
        is_list = typing.get_origin(kind) is list
        item_kind = typing.get_args(kind)[0] if is_list else kind
        if value is None:
            if fields[name].default is not None:
                raise ValueError(f"{source}: {name}: must be given, got None")
            out[name] = None
            continue
        items = list(value) if is_list and isinstance(value, (list, tuple)) else [value]
        try:
            converted = [_convert(item_kind, item) for item in items]
        except ValueError:
            expected = ("a list of " if is_list else "") + _KIND_NAMES[item_kind]
            raise ValueError(f"{source}: {name}: expected {expected}, got {value!r}") from None
        out[name] = converted if is_list else converted[0]
    return out


def config_warnings(config):
    """What in `config` is legal but probably not what was meant (the CLI prints these)."""
    messages = []
    if not config.backbone_checkpoint and not config.authors_checkpoint:
        messages.append(f"the backbone {config.model} is randomly initialised (no --backbone-checkpoint or "
                        "--authors-checkpoint): fine to try the tool, not for real accuracy")
    if config.steps <= config.warmup_steps:
        messages.append(f"--steps {config.steps} <= --warmup-steps {config.warmup_steps}: the learning rate never "
                        f"leaves its linear warm-up (it reaches {config.steps}/{config.warmup_steps} of "
                        f"--lr {config.lr:g})")
    return messages


# Fields that do not change what a run computes: they may differ when resuming.
_BOOKKEEPING = {"num_workers", "output_dir", "save_every", "eval_every", "log_every", "resume", "stop_at",
                "progress", "val_list", "eval_views", "eval_crops"}
# What `eval` uses of a config besides the run's own (its flags).
EVAL_FIELDS = ("val_list", "data_root", "eval_views", "eval_crops", "batch_size", "num_workers", "amp", "backend",
               "device", "progress")
# Paths that train_config.json stores absolute, so that eval works from any directory.
_PATH_FIELDS = ("train_list", "val_list", "data_root", "backbone_checkpoint", "authors_checkpoint", "output_dir")


def load_config_file(path):
    """The values of a YAML (.yaml/.yml) or JSON config file, each converted to its field's type (see
    TrainConfig.from_dict); errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    import yaml
    with open(path) as f:
        try:
            values = (yaml.safe_load(f) or {}) if path.endswith((".yaml", ".yml")) else json.load(f)
        except (ValueError, yaml.YAMLError) as error:
            raise ValueError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} "
                             f"({' '.join(str(error).split())})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    return coerce_config_values(values, path)


def add_config_arguments(parser, only=None, default_text=None):
    """One `--field-name` flag per TrainConfig field (or per field in `only`; lists take several values,
    dicts a JSON string, bools --x/--no-x), with its default in the help (or `default_text` for every
    flag), plus `--config FILE` (YAML or JSON) unless `only` is given. Flags not given stay out of the
    namespace."""
    import argparse
    if only is None:
        parser.add_argument("--config", help="YAML or JSON file of config keys (flag names with underscores); "
                                             "flags override it")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        kind = hints[f.name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        shown = default_text or f.metadata.get("default_text") or (
            " ".join(map(str, default)) if isinstance(default, list)
            else json.dumps(default) if isinstance(default, dict) else "none" if default is None else default)
        options = dict(default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {shown})")
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            options["type"] = _json_object
            options["metavar"] = "JSON"
        elif typing.get_origin(kind) is list:
            options.update(nargs="+", type=typing.get_args(kind)[0])
        else:
            options["type"] = kind
        if f.metadata.get("choices") and kind is not bool:
            options["choices"] = f.metadata["choices"]
        parser.add_argument("--" + f.name.replace("_", "-"), **options)


def _json_object(text):
    import argparse
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error}): expected an object, e.g. '{{\"depth\": 4}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, e.g. '{{\"depth\": 4}}', got {text}")
    return value


def config_values_from_args(args):
    """The config keys of a namespace from `add_config_arguments`: the --config file's, then the flags'."""
    values = load_config_file(args.config) if getattr(args, "config", None) else {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return values


def absolute_paths(config):
    """`config` as a dict with its paths made absolute (train_config.json: eval then works from anywhere)."""
    values = dataclasses.asdict(config)
    values.update({name: os.path.abspath(values[name]) for name in _PATH_FIELDS if values[name]})
    return values


# ---------------------------------------------------------------------------------------- distributed


def setup_distributed(device=None):
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) joins the process group: nccl when
    the device is CUDA, gloo otherwise."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device (--device) {device!r}: no CUDA device is available here; use cpu")
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return rank, world_size, torch.device(device)


def _all_reduce_sum(values, device, world_size):
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


# ---------------------------------------------------------------------------------------- model, optimizer


_AMP_DTYPES = dict(bf16=torch.bfloat16, fp16=torch.float16)


def classifier_arguments(config):
    """The build_video_classifier arguments of `config` (the model part of a run). Under `amp` the frozen
    backbone's weights are kept in the amp dtype unless `backbone_fp32`; init draws from `config.seed`."""
    return dict(model_name=config.model, num_classes=config.num_classes, num_frames=config.num_frames,
                checkpoint_path=config.backbone_checkpoint, dropout=config.dropout,
                backbone_dtype=None if config.backbone_fp32 else _AMP_DTYPES.get(config.amp), pooling=config.pooling,
                model_kwargs=dict(dict(img_size=config.input_size), **config.model_kwargs), seed=config.seed,
                adapter_channels=config.adapter_channels, kernel_size=tuple(config.kernel_size),
                placement=tuple(config.placement), layers=config.adapter_layers,
                activation=None if config.activation == "none" else config.activation, backend=config.backend)


def build_model(config):
    """The VideoClassifier of `config`, initialised from `config.seed` (the same on every rank), with the
    authors' checkpoint loaded if there is one."""
    from ...integrations.timm import build_video_classifier, load_authors_checkpoint
    model = build_video_classifier(**classifier_arguments(config))
    if config.authors_checkpoint:
        load_authors_checkpoint(model, config.authors_checkpoint)
        model.build_arguments["authors_checkpoint"] = os.path.abspath(config.authors_checkpoint)
    if config.grad_checkpointing:
        model.backbone.set_grad_checkpointing(True)
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


def _autocast(config, device):
    dtype = _AMP_DTYPES.get(config.amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# ---------------------------------------------------------------------------------------- data


def make_train_loader(config, rank=0, world_size=1, device=torch.device("cpu")):
    """(DataLoader, ResumableSampler) over this rank's share of the training list."""
    dataset = VideoDataset(config.train_list, config.data_root, num_frames=config.num_frames,
                           sampling_rate=config.sampling_rate, size=config.input_size, train=True,
                           flip=config.flip, num_classes=config.num_classes, seed=config.seed)
    if len(dataset) < config.batch_size * world_size:
        raise ValueError(f"{config.train_list}: {len(dataset)} videos, fewer than one global batch "
                         f"({config.batch_size} x {world_size} processes)")
    sampler = ResumableSampler(len(dataset), shuffle=True, seed=config.seed, rank=rank, world_size=world_size)
    # The loader's own generator keeps it from drawing on the global torch RNG, whose state is part of
    # the checkpoint (dropout), whenever a new epoch's iterator starts.
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=collate_clips, drop_last=True,
        num_workers=config.num_workers, persistent_workers=config.num_workers > 0,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(config.seed))
    return loader, sampler


def _batches(loader, sampler, position):
    """Batches from `position` (epoch, batch within the epoch) on, forever; keeps `position` current
    with what has been consumed."""
    while True:
        sampler.set_position(position["epoch"], position["batch"] * loader.batch_size)
        for batch in loader:
            position["batch"] += 1
            yield batch
        position["epoch"], position["batch"] = position["epoch"] + 1, 0


# ---------------------------------------------------------------------------------------- steps


def forward_backward(model, batch, config, scaler, device, loss_scale):
    """Loss of one micro-batch times `loss_scale`, backpropagated. Returns (loss, correct, clips).
    A micro-batch whose videos were all unreadable still runs (on zeros, with zero loss) so that every
    DDP rank takes part in the gradient all-reduce."""
    if batch["clip"] is None:
        size = config.input_size
        clips = torch.zeros(1, 3, config.num_frames, size, size, device=device)
        labels, weight = torch.zeros(1, dtype=torch.long, device=device), 0.0
    else:
        clips = batch["clip"].to(device, non_blocking=True)
        labels, weight = batch["label"].to(device, non_blocking=True), 1.0
    with _autocast(config, device):
        logits = model(clips)
    loss = F.cross_entropy(logits.float(), labels) * weight
    scaler.scale(loss * loss_scale).backward()
    correct = (logits.argmax(-1) == labels).sum().item() if weight else 0
    return loss.item(), correct, len(labels) if weight else 0


def train_step(model, batches, optimizer, scheduler, scaler, config, device, skips):
    """One optimizer step over `accum_steps` micro-batches; gradients are all-reduced on the last only.
    Returns (mean loss, correct, clips)."""
    optimizer.zero_grad(set_to_none=True)
    losses, correct, clips = [], 0, 0
    for micro in range(config.accum_steps):
        batch = next(batches)
        skips.add(batch["skipped"])
        last = micro == config.accum_steps - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            loss, c, n = forward_backward(model, batch, config, scaler, device, 1.0 / config.accum_steps)
        losses.append(loss)
        correct, clips = correct + c, clips + n
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return sum(losses) / len(losses), correct, clips


@torch.no_grad()
def evaluate(model, config, device, rank=0, world_size=1):
    """Top-1/top-5 (%) on `config.val_list`, scores averaged over the views and crops of each video;
    each rank scores a disjoint share. Unreadable videos are counted in `skipped`, not in `videos`."""
    dataset = VideoDataset(config.val_list, config.data_root, num_frames=config.num_frames,
                           sampling_rate=config.sampling_rate, size=config.input_size, train=False,
                           num_views=config.eval_views, num_crops=config.eval_crops,
                           num_classes=config.num_classes)
    share = torch.utils.data.Subset(dataset, range(rank, len(dataset), world_size))
    loader = torch.utils.data.DataLoader(share, batch_size=config.batch_size, collate_fn=collate_clips,
                                         num_workers=config.num_workers, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    skips, top1, top5, videos = SkipCounter(), 0, 0, 0
    from tqdm import tqdm
    for batch in tqdm(loader, desc="eval", unit="batch", leave=False, disable=rank != 0 or not config.progress):
        skips.add(batch["skipped"])
        if batch["clip"] is None:
            continue
        clips, labels = batch["clip"].to(device), batch["label"].to(device)
        with _autocast(config, device):
            logits = model(clips.flatten(0, 1)).float()
        scores = logits.softmax(-1).view(len(labels), -1, logits.shape[-1]).mean(1)
        best = scores.topk(min(5, scores.shape[-1]), dim=-1).indices
        top1 += (best[:, 0] == labels).sum().item()
        top5 += (best == labels[:, None]).any(-1).sum().item()
        videos += len(labels)
    model.train(was_training)
    top1, top5, videos, skipped = _all_reduce_sum([top1, top5, videos, len(skips)], device, world_size)
    return dict(top1=100.0 * top1 / max(videos, 1), top5=100.0 * top5 / max(videos, 1), videos=int(videos),
                skipped=int(skipped), listed=len(dataset))


# ---------------------------------------------------------------------------------------- checkpoints


def _rng_state():
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    state = dict(torch=torch.get_rng_state(), numpy=numpy_state, python=random.getstate())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    numpy_state = dict(state["numpy"], state=dict(state["numpy"]["state"]))
    numpy_state["state"]["key"] = numpy_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state(numpy_state)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(path, model, optimizer, scheduler, scaler, position, config, rank, world_size):
    """Write everything a bit-for-bit resume needs to `path` (rank 0 writes; every rank must call)."""
    own = _rng_state()
    rng = [own] if world_size == 1 else [None] * world_size
    if world_size > 1:
        dist.all_gather_object(rng, own)
    if rank != 0:
        return
    state = dict(format=CHECKPOINT_FORMAT, config=dataclasses.asdict(config), position=dict(position),
                 world_size=world_size, rng=rng, optimizer=optimizer.state_dict(),
                 scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                 trainable={n: p.detach().cpu() for n, p in _trainable(model).items()})
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)   # a run killed while saving leaves the previous checkpoint intact


def load_checkpoint(path, model, optimizer, scheduler, scaler, config, rank, world_size):
    """Restore what save_checkpoint wrote; returns the data position. Raises ValueError if the
    checkpoint was made by a run that computes something else (other config or world size)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {state.get('format')!r}")
    ours = json.loads(json.dumps(dataclasses.asdict(config)))
    differ = sorted(k for k in set(ours) | set(state["config"])
                    if k not in _BOOKKEEPING and ours.get(k) != state["config"].get(k))
    if differ:
        raise ValueError(f"{path}: made with a different config ({', '.join(differ)}); use another "
                         f"output_dir or --no-resume")
    if state["world_size"] != world_size:
        raise ValueError(f"{path}: made with {state['world_size']} processes, this run has {world_size}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"][rank])
    return state["position"]


# ---------------------------------------------------------------------------------------- the run


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_can_train(config):
    """ValueError naming what a training run needs and `config` lacks (train_list, num_classes)."""
    missing = [_key(name) for name in ("train_list", "num_classes") if getattr(config, name) is None]
    if missing:
        raise ValueError(f"train needs {' and '.join(missing)}")


def train(config):
    """Train as `config` says (under torchrun: one process per rank). Returns a dict with `history`
    (logged steps and evals of this process's run), `metrics` (final eval, if there is a val_list),
    `parameters` (a ParameterReport), `steps_done`, `wall_time_s` and `model` (the trained VideoClassifier).

    Prints (rank 0) when it resumes, each periodic eval and, with `resume=False`, what it deleted."""
    from torch.nn.parallel import DistributedDataParallel
    from tqdm import tqdm

    from ...checkpoint import save_adapters
    from ...report import parameter_report
    check_can_train(config)
    started = time.perf_counter()
    rank, world_size, device = setup_distributed(config.device)
    # the data first: a wrong list or root fails in seconds, before a model is built or a step is run
    loader, sampler = make_train_loader(config, rank, world_size, device)
    if config.val_list:
        read_video_list(config.val_list, config.data_root, config.num_classes)
    model = build_model(config).to(device)
    _seed_everything(config.seed + rank)   # dropout differs between ranks, as with independent samples
    trained = DistributedDataParallel(model) if world_size > 1 else model
    optimizer, scheduler = build_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    position = dict(step=0, epoch=0, batch=0)
    os.makedirs(config.output_dir, exist_ok=True)
    checkpoint = os.path.join(config.output_dir, CHECKPOINT_NAME)
    if not config.resume and rank == 0:
        _remove_previous_run(config.output_dir)
    if config.resume and os.path.exists(checkpoint):
        position = load_checkpoint(checkpoint, model, optimizer, scheduler, scaler, config, rank, world_size)
        _say(rank, f"resumed from step {position['step']} of {config.steps} ({checkpoint})")
    batches = _batches(loader, sampler, position)
    log = _Log(os.path.join(config.output_dir, LOG_NAME), enabled=rank == 0)
    skips, window = SkipCounter(), dict(loss=0.0, correct=0, clips=0, steps=0, time=time.perf_counter())
    last = min(config.steps, config.stop_at or config.steps)
    bar = tqdm(total=config.steps, initial=position["step"], desc="train", unit="step",
               disable=rank != 0 or not config.progress)
    backbone_dtype = None   # what the backbone's Linear layers computed in, seen by hooks on the first step
    while position["step"] < last:
        with linear_compute_dtypes(model.backbone) if backbone_dtype is None else contextlib.nullcontext() as seen:
            loss, correct, clips = train_step(trained, batches, optimizer, scheduler, scaler, config, device, skips)
        if backbone_dtype is None:
            backbone_dtype = log.backbone_compute_dtype = compute_dtype_name(seen)
        position["step"] += 1
        step = position["step"]
        window.update(loss=window["loss"] + loss, correct=window["correct"] + correct,
                      clips=window["clips"] + clips, steps=window["steps"] + 1)
        bar.update()
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if step % config.log_every == 0 or step == last:
            log.write_train(step, window, scheduler.get_last_lr()[0], len(skips))
            window = dict(loss=0.0, correct=0, clips=0, steps=0, time=time.perf_counter())
        if (config.save_every and step % config.save_every == 0) or step == last:
            save_checkpoint(checkpoint, model, optimizer, scheduler, scaler, position, config, rank, world_size)
        if config.val_list and config.eval_every and step % config.eval_every == 0 and step < config.steps:
            metrics = evaluate(model, config, device, rank, world_size)
            log.write(dict(step=step, **metrics))
            _say(rank, f"step {step}: {format_metrics(metrics)}")
    bar.close()
    result = dict(history=log.history, metrics=None, parameters=parameter_report(model), model=model,
                  skipped_train_videos=len(skips), backbone_compute_dtype=backbone_dtype, steps_done=position["step"])
    if position["step"] == config.steps:
        result["metrics"] = _finish(model, config, device, rank, world_size, log, save_adapters)
    result["wall_time_s"] = time.perf_counter() - started
    return result


def _say(rank, message):
    """A line for the user on rank 0 (through tqdm, so that a progress bar stays whole)."""
    if rank == 0:
        from tqdm import tqdm
        tqdm.write(message)


def format_metrics(metrics):
    """One line for an evaluate() result."""
    return (f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}% on {metrics['videos']} of "
            f"{metrics['listed']} videos ({metrics['skipped']} unreadable, skipped)")


def _remove_previous_run(output_dir):
    """--no-resume: delete what an earlier run wrote to output_dir (our files only), saying what."""
    import shutil
    removed = []
    for name in RUN_FILES:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
            name += "/"
        elif os.path.exists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    if removed:
        _say(0, f"--no-resume: deleted the previous run's {', '.join(removed)} in {output_dir}")


def checkpoint_step(output_dir):
    """The step of output_dir's checkpoint, or None if there is none."""
    path = os.path.join(output_dir, CHECKPOINT_NAME)
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True)["position"]["step"]


def _finish(model, config, device, rank, world_size, log, save_adapters):
    """Adapter-only result and final eval of a completed run."""
    metrics = None
    if rank == 0:
        path = save_adapters(model, os.path.join(config.output_dir, ADAPTERS_NAME))
        with open(os.path.join(path, TRAIN_CONFIG_NAME), "w") as f:
            json.dump(absolute_paths(config), f, indent=1)
    if config.val_list:
        metrics = evaluate(model, config, device, rank, world_size)
        log.write(dict(step=config.steps, **metrics))
        if rank == 0:
            with open(os.path.join(config.output_dir, METRICS_NAME), "w") as f:
                json.dump(metrics, f, indent=1)
    return metrics


class _Log:
    """log.jsonl lines (rank 0) and the same records in memory."""

    def __init__(self, path, enabled):
        self.path, self.enabled, self.history = path, enabled, []
        self.backbone_compute_dtype = None   # reported once, in the next training record

    def write(self, record):
        if not self.enabled:
            return
        self.history.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_train(self, step, window, lr, skipped):
        seconds = time.perf_counter() - window["time"]
        record = dict(step=step, loss=window["loss"] / window["steps"], lr=lr,
                      train_acc=100.0 * window["correct"] / max(window["clips"], 1),
                      clips_per_s=window["clips"] / max(seconds, 1e-9), skipped_videos=skipped)
        if self.backbone_compute_dtype is not None:
            record["backbone_compute_dtype"], self.backbone_compute_dtype = self.backbone_compute_dtype, None
        self.write(record)


def evaluate_adapters(adapters_dir, overrides=None):
    """Build the model that `adapters_dir` (a run's adapters/ folder with train_config.json) was trained
    as, load its adapters and head, and evaluate on `overrides["val_list"]` or the run's val_list."""
    from ...checkpoint import load_adapters
    config_path = os.path.join(adapters_dir, TRAIN_CONFIG_NAME)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: expected the adapters/ folder of a train run")
    values = dict(load_config_file(config_path), **(overrides or {}))
    config = TrainConfig.from_dict(values, source=config_path)
    if not config.val_list:
        raise ValueError(f"eval needs {_key('val_list')}: the run had none")
    rank, world_size, device = setup_distributed(config.device)
    model = load_adapters(build_model(config), adapters_dir).to(device)
    return evaluate(model, config, device, rank, world_size)
