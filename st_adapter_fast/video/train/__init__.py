"""Fine-tune a frozen timm ViT with ST-Adapters on a video list, and evaluate it.

`train(config)` runs on one process or under `torchrun` (DDP: gloo on CPU, nccl on GPU): AdamW with
linear warmup and cosine decay per optimizer step, autocast (bf16, or fp16 with a GradScaler), gradient
accumulation, checkpoints every `save_every` steps that resume bit for bit (trainable weights, optimizer,
schedule, scaler, RNG states of every rank, data position), an adapter-only result (`save_adapters`) and
top-1/top-5 on the validation list. `evaluate_adapters` scores a saved result.

Files under `output_dir`: checkpoint.pt (latest, for resume), log.jsonl (one line per logged step or
eval; training loss, accuracy, clips/s and the time waiting for data are rank 0's, evals cover all ranks), adapters/ (adapters +
head, with what `from_pretrained` needs, and train_config.json, with absolute paths, which `eval` reads),
metrics.json (final eval). `--no-resume` deletes these first.

    config.py        TrainConfig: fields, checks, flags, YAML/JSON config files, recipes, resolve_schedule
    distributed.py   process group set-up under torchrun, all-reduce
    model.py         build_model (the VideoClassifier of a config), build_optimizer (AdamW + schedule), autocast
    loader.py        the datasets of a config (uint8 clips) and the training DataLoader, resumable mid-epoch
    loop.py          forward_backward, train_step, train (the run), the run's files, DataWait (time waiting for data)
    checkpoints.py   save_checkpoint / load_checkpoint (bit-for-bit resume), checkpoint_step
    evaluation.py    evaluate, evaluate_adapters, format_metrics
"""
from .checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_NAME, checkpoint_step, load_checkpoint, save_checkpoint
from .config import (BOOKKEEPING_FIELDS, EVAL_FIELDS, TrainConfig, absolute_paths, add_config_arguments,
                     coerce_config_values, config_key, config_values_from_args, config_warnings, default_num_workers,
                     load_config_file)
from .distributed import all_reduce_sum, setup_distributed
from .evaluation import evaluate, evaluate_adapters, format_metrics
from .loader import iterate_batches, make_train_loader
from .loop import ADAPTERS_NAME, LOG_NAME, METRICS_NAME, RUN_FILES, check_can_train, forward_backward, train, train_step
from .loop import NonFiniteLossError
from .model import AMP_DTYPES, autocast, build_model, build_optimizer, classifier_arguments

__all__ = ["ADAPTERS_NAME", "AMP_DTYPES", "BOOKKEEPING_FIELDS", "CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "EVAL_FIELDS",
           "LOG_NAME", "METRICS_NAME", "NonFiniteLossError", "RUN_FILES", "TrainConfig", "absolute_paths", "add_config_arguments",
           "all_reduce_sum", "autocast", "build_model", "build_optimizer", "check_can_train", "checkpoint_step",
           "classifier_arguments", "coerce_config_values", "config_key", "config_values_from_args", "config_warnings",
           "default_num_workers", "evaluate", "evaluate_adapters", "format_metrics", "forward_backward",
           "iterate_batches", "load_checkpoint", "load_config_file", "make_train_loader", "save_checkpoint",
           "setup_distributed", "train", "train_step"]
