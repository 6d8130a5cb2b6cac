"""The training run's configuration: `TrainConfig` (every field a flag and a config-file key, each value
checked), its conversion from YAML/JSON files and command-line flags, and what may differ on resume."""
import dataclasses
import functools
import json
import math
import os
import typing
from dataclasses import dataclass, field

from ...compiling import COMPILE_MODES
from ...console import renamed_error
from ...files import read_text
from ...integrations.adapters import PLACEMENTS
from ...integrations.backbones import check_model_name
from ...integrations.checkpointing import CHECKPOINTING
from ...integrations.classifier import AUTHORS_POOLING, POOLINGS, check_model_kwargs
from ...ops import BACKENDS
from ...validation import check_kernel_size
from ..recipes import RECIPES, with_recipe
from ..transforms import DEFAULT_SCALE_JITTER, INTERPOLATIONS, TRAIN_CROPS, check_augmentation


def default_num_workers():
    """DataLoader workers per process by default: the CPU cores this process may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        cores = os.cpu_count() or 1
    return min(4, cores)


FLOAT32_MAX = 3.4028234663852886e38   # a larger float value (--lr 1e300) overflows in the optimizer step
MAX_SEED = 2 ** 31 - 1   # numpy's global seed (seed + rank) must stay below 2 ** 32


def _option(help, default_text=None, **checks):
    """Field metadata: its help, how --help shows its default (when not the value itself) and the checks
    that TrainConfig applies to it wherever it came from (choices, minimum, maximum, below). A float must
    also be finite."""
    return dict(help=help, default_text=default_text, **checks)


@dataclass
class TrainConfig:
    """Everything a run depends on; every field is also a command-line flag (`--field-name`) and a key of
    a YAML/JSON config file. Values are checked on construction: a ValueError names the field. A `recipe`
    fills the fields not given with its preset (recipes.py)."""

    recipe: str = field(default=None, metadata=_option(
        "a preset of the authors' training recipe: data sampling, augmentation, optimisation, schedule and "
        "eval views (authors-k400, authors-ssv2: see the README); every flag given overrides it", "none",
        choices=tuple(RECIPES)))
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
    train_crop: str = field(default="random-square", metadata=_option(
        "training crop: random-square (a random square of --crop-scale of the shorter side's square, resized), "
        "short-side-jitter (the shorter side resized to --input-size x U(--scale-jitter), then a random crop), "
        "random-resized (torchvision's RandomResizedCrop: --crop-scale of the area, aspect 3/4-4/3)",
        choices=TRAIN_CROPS))
    crop_scale: typing.List[float] = field(default=None, metadata=_option(
        "fraction of the area a random-square or random-resized crop covers: low high",
        "0.5 1 for random-square, 0.08 1 for random-resized"))
    scale_jitter: typing.List[float] = field(default_factory=lambda: list(DEFAULT_SCALE_JITTER), metadata=_option(
        "short-side-jitter: the range of the shorter side, in multiples of --input-size: low high (>= 1)"))
    rand_augment: str = field(default=None, metadata=_option(
        "timm RandAugment string applied to training frames before the crop, the same on every frame of a "
        "clip, e.g. rand-m7-n4-mstd0.5-inc1", "none"))
    interpolation: str = field(default="bilinear", metadata=_option(
        "how frames are resized (and RandAugment interpolates)", choices=INTERPOLATIONS))
    eval_views: int = field(default=1, metadata=_option("temporal views per video in eval", minimum=1))
    eval_crops: int = field(default=1, metadata=_option("spatial crops per view in eval", choices=(1, 3)))
    num_workers: int = field(default_factory=default_num_workers, metadata=_option(
        "DataLoader worker processes per rank", f"the cores available, at most 4: {default_num_workers()} here",
        minimum=0))
    # model
    model: str = field(default="vit_base_patch16_clip_224", metadata=_option(
        "the backbone: a timm model name (a VisionTransformer or Eva), hf:<model type or local config folder> "
        "(e.g. hf:dinov2; [hf] extra) or open_clip:<model name or model-config .json> (e.g. "
        "open_clip:ViT-B-16-quickgelu; [open_clip] extra)"))
    model_kwargs: dict = field(default_factory=dict, metadata=_option(
        "JSON dict of extra model arguments (timm.create_model's, a transformers config's or an open_clip "
        "vision_cfg's fields), e.g. '{\"depth\": 4}'"))
    backbone_checkpoint: str = field(default=None, metadata=_option(
        "local file with the backbone's pretrained weights", "random init"))
    adapter_channels: int = field(default=384, metadata=_option("adapter bottleneck width Ca", minimum=1))
    kernel_size: typing.List[int] = field(default_factory=lambda: [3, 1, 1], metadata=_option(
        "adapter conv kernel kt kh kw (odd)"))
    placement: typing.List[str] = field(default_factory=lambda: ["mlp"], metadata=_option(
        "adapter places in a block: attn and/or mlp ('mlp' needs timm's ViT Block: use attn for EVA / RoPE ViTs)",
        choices=PLACEMENTS))
    adapter_layers: typing.List[int] = field(default=None, metadata=_option(
        "block indices that get adapters (0 is the first block)", "every block", minimum=0))
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
    dropout: float = field(default=0.5, metadata=_option("dropout before the head", minimum=0.0, below=1.0))
    # optimisation
    batch_size: int = field(default=8, metadata=_option("clips per process and micro-step", minimum=1))
    accum_steps: int = field(default=1, metadata=_option("micro-steps per optimizer step", minimum=1))
    steps: int = field(default=1000, metadata=_option(
        "optimizer steps (--epochs, when given, sets them)", minimum=1))
    warmup_steps: int = field(default=100, metadata=_option(
        "linear warmup steps before the cosine decay (--warmup-epochs, when given, sets them)", minimum=0))
    epochs: int = field(default=None, metadata=_option(
        "passes over the training list; when given, sets --steps (the schedule then spans these epochs)",
        "none: --steps", minimum=1))
    warmup_epochs: int = field(default=None, metadata=_option(
        "epochs of linear warmup; when given, sets --warmup-steps", "none: --warmup-steps", minimum=0))
    lr: float = field(default=3e-4, metadata=_option("peak learning rate (--blr, when given, sets it)", minimum=0.0))
    blr: float = field(default=None, metadata=_option(
        "base learning rate per 256 clips: the peak learning rate is blr x clips per optimizer step (batch size x "
        "accumulation steps x processes) / 256", "none: --lr", minimum=0.0))
    weight_decay: float = field(default=0.05, metadata=_option("AdamW weight decay (not on biases)", minimum=0.0))
    amp: str = field(default="none", metadata=_option("autocast dtype", choices=("none", "bf16", "fp16")))
    backbone_fp32: bool = field(default=False, metadata=_option(
        "keep the frozen backbone's weights in fp32 under --amp, not in the amp dtype (as the authors keep "
        "theirs in fp16)"))
    grad_checkpointing: str = field(default="none", metadata=_option(
        "activation checkpointing of every backbone block: full (keep each block's input, recompute the block in "
        "backward: least memory, most time), selective (keep attention and widening matmul outputs, recompute the "
        "elementwise ops, norms and adapters) or none; the flag alone means full", choices=CHECKPOINTING,
        aliases={True: "full", False: "none"}))
    compile: bool = field(default=False, metadata=_option(
        "torch.compile the whole classifier (one graph; the first steps compile, for minutes)"))
    compile_mode: str = field(default="default", metadata=_option(
        "with --compile: default, reduce-overhead (CUDA graphs of the step: no host time, for fixed shapes on a "
        "GPU) or max-autotune (longer compilation, autotuned kernels)", choices=COMPILE_MODES))
    seed: int = field(default=0, metadata=_option("seed of init, data order and augmentation", minimum=0,
                                                  maximum=MAX_SEED))
    device: str = field(default=None, metadata=_option("cpu, cuda or cuda:N", "cuda if available"))
    skip_nonfinite_steps: bool = field(default=False, metadata=_option(
        "skip an optimizer step whose loss or gradients are not finite (nan / inf), as GradScaler does for fp16, "
        "instead of stopping the run"))
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
            raise ValueError(f"{config_key('placement')} needs at least one of {PLACEMENTS}")
        for name in ("placement", "adapter_layers"):
            repeated = sorted({item for item in getattr(self, name) or () if getattr(self, name).count(item) > 1})
            if repeated:
                raise ValueError(f"{config_key(name)} names {', '.join(map(str, repeated))} more than once")
        try:
            check_kernel_size(self.kernel_size)
        except ValueError as error:
            raise ValueError(f"{config_key('kernel_size')}: {error}") from None
        try:
            check_model_name(self.model)
        except ValueError as error:
            raise ValueError(f"{config_key('model')}: {error}") from None
        self._check_augmentation()
        _check_device(self.device)
        check_model_kwargs(self.model_kwargs, config_key("model_kwargs"))
        if self.model_kwargs.get("img_size", self.input_size) != self.input_size:
            raise ValueError(f"{config_key('model_kwargs')} img_size {self.model_kwargs['img_size']!r} differs from "
                             f"{config_key('input_size')} {self.input_size}: the frames would not fit the model "
                             "(set the size with --input-size alone)")
        if self.authors_checkpoint and self.pooling != AUTHORS_POOLING:
            raise ValueError(f"{config_key('authors_checkpoint')} needs pooling {AUTHORS_POOLING!r} (the authors' "
                             f"order), got {self.pooling!r}")

    def _check_augmentation(self):
        try:
            check_augmentation(self.train_crop, self.crop_scale, self.scale_jitter, self.rand_augment,
                               self.interpolation)
        except ValueError as error:   # its message starts with the argument's name: the field's
            raise renamed_error(error, field_key) from None

    @classmethod
    def from_dict(cls, values, source="config"):
        """A config from a dict of field values (e.g. a YAML/JSON file's), each converted to its field's type
        where that is safe (`lr: 3e-3`, a string to YAML, becomes a float; a single `placement: mlp`
        a list); an unknown key or a value that does not convert raises ValueError naming `source` and
        the key."""
        return cls(**coerce_config_values(values, source))


_init_fields = TrainConfig.__init__


@functools.wraps(_init_fields)
def _init_with_recipe(self, *args, **values):
    """TrainConfig(...): the fields given, completed by the preset of `recipe` if one is named."""
    values.update(zip((f.name for f in dataclasses.fields(TrainConfig)), args))
    _init_fields(self, **with_recipe(values))


TrainConfig.__init__ = _init_with_recipe


def resolve_schedule(config, num_videos, world_size=1):
    """`config` with the values its run derives made concrete: steps and warmup_steps from epochs and
    warmup_epochs (optimizer steps per epoch: this rank's share of `num_videos`, in whole batches, over
    accum_steps), lr from blr (blr x clips per optimizer step / 256). Unchanged where those are not set."""
    changes = {}
    batches = math.ceil(num_videos / world_size) // config.batch_size
    for name, epochs in (("steps", config.epochs), ("warmup_steps", config.warmup_epochs)):
        if epochs is not None:
            changes[name] = max(round(epochs * batches / config.accum_steps), 1 if name == "steps" else 0)
    if config.blr is not None:
        changes["lr"] = config.blr * config.batch_size * config.accum_steps * world_size / 256
    return dataclasses.replace(config, **changes) if changes else config


def config_key(name):
    """How errors name a field: the config key and its flag."""
    return f"{name} (--{name.replace('_', '-')})"


def field_key(name):
    """config_key(name) if `name` is a TrainConfig field, else None (for console.renamed_error)."""
    return config_key(name) if name in {f.name for f in dataclasses.fields(TrainConfig)} else None


def _check_value(f, value):
    checks = f.metadata
    if isinstance(value, float) and not abs(value) <= FLOAT32_MAX:   # nan too
        raise ValueError(f"{config_key(f.name)} must be a finite number (of float32, the weights' type), got {value!r}")
    if checks.get("choices") is not None and value not in checks["choices"]:
        raise ValueError(f"{config_key(f.name)} must be one of {', '.join(map(str, checks['choices']))}, got {value!r}")
    if checks.get("minimum") is not None and value < checks["minimum"]:
        raise ValueError(f"{config_key(f.name)} must be >= {checks['minimum']}, got {value!r}")
    if checks.get("maximum") is not None and value > checks["maximum"]:
        raise ValueError(f"{config_key(f.name)} must be <= {checks['maximum']}, got {value!r}")
    if checks.get("below") is not None and value >= checks["below"]:
        raise ValueError(f"{config_key(f.name)} must be < {checks['below']}, got {value!r}")


def _check_device(device):
    """ValueError naming --device unless `device` is None, cpu, cuda or cuda:N (whether this machine has that
    device is checked before a run or an eval starts, distributed.check_device: a config may be read where it
    has not, e.g. a run's train_config.json evaluated elsewhere)."""
    import torch
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"{config_key('device')} must be cpu, cuda or cuda:N, got {device!r}")


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


def _alias(f, value):
    """A field's value for a former spelling of it (`aliases` in its metadata: grad_checkpointing's true / false,
    from when it was a bool), else `value`."""
    aliases = f.metadata.get("aliases")
    try:
        return aliases[_convert(bool, value)] if aliases else value
    except ValueError:   # not a bool
        return value


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
        value = _alias(fields[name], value)
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
    if config.epochs is None and config.warmup_epochs is None and config.steps <= config.warmup_steps:
        messages.append(f"--steps {config.steps} <= --warmup-steps {config.warmup_steps}: the learning rate never "
                        f"leaves its linear warm-up (it reaches {config.steps}/{config.warmup_steps} of "
                        f"--lr {config.lr:g})")
    if config.epochs is not None and config.warmup_epochs is not None and config.epochs <= config.warmup_epochs:
        messages.append(f"--epochs {config.epochs} <= --warmup-epochs {config.warmup_epochs}: the learning rate "
                        "never leaves its linear warm-up")
    return messages


# Fields that do not change what a run computes: they may differ when resuming.
BOOKKEEPING_FIELDS = {"num_workers", "output_dir", "save_every", "eval_every", "log_every", "resume", "stop_at",
                "progress", "val_list", "eval_views", "eval_crops", "recipe", "skip_nonfinite_steps",
                "grad_checkpointing", "compile", "compile_mode"}   # how a step runs, not what it computes
# What `eval` uses of a config besides the run's own (its flags).
EVAL_FIELDS = ("val_list", "data_root", "eval_views", "eval_crops", "batch_size", "num_workers", "amp", "backend",
               "device", "progress")
ADAPTERS_NAME = "adapters"   # the folder of a run's output_dir with its adapters (save_adapters)
TRAIN_CONFIG_NAME = "train_config.json"   # a run's config, written beside its adapters (adapters/)
# Paths that train_config.json stores absolute, so that eval works from any directory.
_PATH_FIELDS = ("train_list", "val_list", "data_root", "backbone_checkpoint", "authors_checkpoint", "output_dir")


def load_config_file(path):
    """The values of a YAML (.yaml/.yml) or JSON config file (a regular file: not a FIFO; UTF-8, or another
    Unicode encoding with a byte-order mark), each converted to its field's type (see TrainConfig.from_dict);
    errors name the file."""
    text = read_text(path, "config file")
    if path.endswith((".yaml", ".yml")):
        import yaml
        load, errors = (lambda text: yaml.load(text, _yaml_loader()) or {}), (ValueError, yaml.YAMLError)
    else:   # JSON (train_config.json too: from_pretrained reads it without the [video] extra's PyYAML)
        load, errors = functools.partial(json.loads, object_pairs_hook=_unique_keys), ValueError
    try:
        values = load(text)
    except errors as error:
        raise ValueError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} "
                         f"({' '.join(str(error).split())})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    return coerce_config_values(values, path)


def _unique_keys(pairs):
    """A mapping's (key, value) pairs as a dict; ValueError if a key is given twice (the last would win unseen)."""
    keys = [key for key, _ in pairs]
    repeated = sorted({str(key) for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"the key {repeated[0]} is given more than once")
    return dict(pairs)


@functools.lru_cache(maxsize=1)
def _yaml_loader():
    """PyYAML's safe loader, refusing a mapping that gives a key twice (as _unique_keys)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node):
        loader.flatten_mapping(node)
        return _unique_keys([(loader.construct_object(key, deep=True), loader.construct_object(value, deep=True))
                             for key, value in node.value])
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


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
        flag = "--" + f.name.replace("_", "-")
        if f.metadata.get("aliases"):   # a former bool flag: alone it means True's alias, --no-x False's
            options.update(nargs="?", const=f.metadata["aliases"][True])
            parser.add_argument("--no-" + flag[2:], dest=f.name, action="store_const",
                                const=f.metadata["aliases"][False], default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        parser.add_argument(flag, **options)


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
