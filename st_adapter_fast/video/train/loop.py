"""The training run: `train(config)` (data, model, optimizer, resume, steps, periodic evals and checkpoints, the
adapter-only result and final eval), one optimizer step (`train_step`) and one micro-batch (`forward_backward`),
the files a run writes to output_dir, and where its time goes (`DataWait`: waiting for data against the steps)."""
import contextlib
import json
import math
import os
import random
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ...compiling import compile_model
from ...files import check_regular_file, check_writable_folder, write_files
from ...measure import compute_dtype_name, linear_compute_dtypes
from ..data import SkipCounter, read_video_list
from ..store import is_store
from ..transforms import normalize_clip
from .checkpoints import CHECKPOINT_NAME, checkpoint_step, load_checkpoint, save_checkpoint
from .config import ADAPTERS_NAME, TRAIN_CONFIG_NAME, absolute_paths, config_key, resolve_schedule
from .distributed import all_reduce_sum, check_device, setup_distributed
from .evaluation import evaluate, format_metrics
from .loader import iterate_batches, make_train_loader
from .model import autocast, build_model, build_optimizer, check_model_runs

LOG_NAME, METRICS_NAME = "log.jsonl", "metrics.json"
RUN_FILES = (CHECKPOINT_NAME, LOG_NAME, METRICS_NAME, ADAPTERS_NAME)   # what a run writes to output_dir
# a logging interval (after the first, which includes the loader's start) that waits for data more than this
# fraction of its time on an accelerator gets a warning: the device starves
DATA_WAIT_WARNING = 0.2


def forward_backward(model, batch, config, scaler, device, loss_scale):
    """Loss of one micro-batch times `loss_scale`, backpropagated. Returns (loss, correct, clips).
    A micro-batch whose videos were all unreadable still runs (on zeros, with zero loss) so that every
    DDP rank takes part in the gradient all-reduce."""
    if batch["clip"] is None:
        size = config.input_size
        clips = torch.zeros(1, 3, config.num_frames, size, size, device=device)
        labels, weight = torch.zeros(1, dtype=torch.long, device=device), 0.0
    else:   # uint8 clips from the loader (a quarter of the bytes to move) are normalised on the device
        clips = normalize_clip(batch["clip"].to(device, non_blocking=True))
        labels, weight = batch["label"].to(device, non_blocking=True), 1.0
    with autocast(config, device):
        logits = model(clips)
    loss = F.cross_entropy(logits.float(), labels) * weight
    scaler.scale(loss * loss_scale).backward()
    correct = (logits.argmax(-1) == labels).sum().item() if weight else 0
    return loss.item(), correct, len(labels) if weight else 0


def train_step(model, batches, optimizer, scheduler, scaler, config, device, skips):
    """One optimizer step over `accum_steps` micro-batches; gradients are all-reduced on the last only.
    Returns (mean loss, correct, clips). A step whose loss (on any rank) or, without fp16's GradScaler, whose
    gradients are not finite is not applied (as GradScaler skips one with inf gradients): its loss is
    returned as nan, and the schedule still advances."""
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
    if _finite_step(losses, model, scaler, device):
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.zero_grad(set_to_none=True)
        losses = [math.nan]
    with warnings.catch_warnings():   # after a skipped step too, on purpose: torch's warning is not the user's concern
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        scheduler.step()
    return sum(losses) / len(losses), correct, clips


def _finite_step(losses, model, scaler, device):
    """Whether every rank's losses and (unless the GradScaler checks them) gradients are finite."""
    import torch.distributed as dist
    finite = all(math.isfinite(loss) for loss in losses) and (
        scaler.is_enabled() or _all_finite(p.grad for p in model.parameters() if p.grad is not None))
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return finite
    return all_reduce_sum([0.0 if finite else 1.0], device, dist.get_world_size())[0] == 0


def _all_finite(tensors):
    """Whether every element of every tensor is finite: one pass over each (min and max propagate a nan and
    show an inf; isfinite().all() writes a whole bool tensor first, 7x slower on the CPU), one synchronisation."""
    extremes = [value.float() for t in tensors if t.numel() for value in torch.aminmax(t.detach())]
    return not extremes or bool(torch.stack(extremes).isfinite().all())


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_can_train(config):
    """ValueError naming what a training run needs and `config` lacks (train_list, num_classes), a weights file
    it names that is missing or not a regular file, a device this machine does not have, or a compile_mode
    without compile (which would be ignored)."""
    missing = [config_key(name) for name in ("train_list", "num_classes") if getattr(config, name) is None]
    if missing:
        raise ValueError(f"train needs {' and '.join(missing)}")
    for name in ("backbone_checkpoint", "authors_checkpoint"):
        if getattr(config, name):
            check_regular_file(getattr(config, name), config_key(name))
    check_device(config.device)
    if config.compile_mode != "default" and not config.compile:
        raise ValueError(f"{config_key('compile_mode')} {config.compile_mode} needs --compile (compile: true): "
                         "without it nothing is compiled")


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
    config = resolve_schedule(config, len(loader.dataset), world_size)
    _say_schedule(rank, config, len(loader.dataset))
    if config.val_list:
        read_video_list(config.val_list, config.data_root, config.num_classes)
    model = build_model(config).to(device)
    probed_dtype = check_model_runs(model, config, device)
    _check_output_folders(config)   # only now: a run refused above leaves output_dir as it was
    _seed_everything(config.seed + rank)   # dropout differs between ranks, as with independent samples
    trained = compile_model(model, config.compile_mode) if config.compile else model
    if world_size > 1:   # DDP around the compiled model: dynamo cannot trace DDP's own forward as one graph
        trained = DistributedDataParallel(trained)
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
    batches = DataWait(iterate_batches(loader, sampler, position))
    guard = _Guard(config, model, position["step"], len(loader.dataset), world_size, device)
    log = _Log(os.path.join(config.output_dir, LOG_NAME), enabled=rank == 0)
    skips, window = SkipCounter(), _new_window(batches)
    starving = StarvationCheck(config, device, enabled=rank == 0)
    last = min(config.steps, config.stop_at or config.steps)
    bar = tqdm(total=config.steps, initial=position["step"], desc="train", unit="step",
               disable=rank != 0 or not config.progress)
    backbone_dtype = None   # what the backbone's Linear layers computed in, seen by hooks on the first step
    if config.compile:   # hooks would be traced into the compiled graph, and removing them would recompile it
        backbone_dtype = log.backbone_compute_dtype = probed_dtype
    while position["step"] < last:
        with linear_compute_dtypes(model.backbone) if backbone_dtype is None else contextlib.nullcontext() as seen:
            loss, correct, clips = train_step(trained, batches, optimizer, scheduler, scaler, config, device, skips)
        if backbone_dtype is None:
            backbone_dtype = log.backbone_compute_dtype = compute_dtype_name(seen)
        position["step"] += 1
        step = position["step"]
        guard.check(step, loss, clips, skips, rank)
        finite = math.isfinite(loss)
        window.update(loss=window["loss"] + (loss if finite else 0.0), correct=window["correct"] + correct,
                      clips=window["clips"] + clips, steps=window["steps"] + finite)
        bar.update()
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                        data=f"{_wait_fraction(window, batches):.0%}")
        if step % config.log_every == 0 or step == last:
            record = log.write_train(step, window, scheduler.get_last_lr()[0], len(skips), batches.seconds,
                                     guard.skipped_steps)
            starving.check(step, window["steps"], record)
            window = _new_window(batches)
        if (config.save_every and step % config.save_every == 0) or step == last:
            save_checkpoint(checkpoint, model, optimizer, scheduler, scaler, position, config, rank, world_size)
        if config.val_list and config.eval_every and step % config.eval_every == 0 and step < config.steps:
            metrics = evaluate(model, config, device, rank, world_size)
            log.write(dict(step=step, **metrics))
            _say(rank, f"step {step}: {format_metrics(metrics)}")
    bar.close()
    result = dict(history=log.history, metrics=None, parameters=parameter_report(model), model=model,
                  skipped_train_videos=len(skips), backbone_compute_dtype=backbone_dtype, steps_done=position["step"],
                  config=config, skipped_steps=guard.skipped_steps)
    if position["step"] == config.steps:
        result["metrics"] = _finish(model, config, device, rank, world_size, log, save_adapters)
    result["wall_time_s"] = time.perf_counter() - started
    return result


class DataWait:
    """An iterator of batches that adds up, in `seconds`, the time its consumer waited for them."""

    def __init__(self, batches):
        self.batches, self.seconds = batches, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self.batches)
        finally:
            self.seconds += time.perf_counter() - start


def _new_window(batches):
    """The running sums of a logging interval, from now."""
    return dict(loss=0.0, correct=0, clips=0, steps=0, time=time.perf_counter(), waited=batches.seconds)


def _wait_fraction(window, batches):
    return (batches.seconds - window["waited"]) / max(time.perf_counter() - window["time"], 1e-9)


class StarvationCheck:
    """Warns once per run when a logging interval after the first waited for data more than
    DATA_WAIT_WARNING of its time on an accelerator, naming what would feed it faster."""

    def __init__(self, config, device, enabled):
        self.config, self.enabled, self.device, self.intervals = config, enabled and device.type != "cpu", device, 0

    def check(self, step, steps, record):
        self.intervals += 1
        if not self.enabled or self.intervals == 1 or record["data_wait_fraction"] <= DATA_WAIT_WARNING:
            return
        self.enabled = False
        remedy = (f"more --num-workers (now {self.config.num_workers}) would feed it faster" +
                  ("" if is_store(self.config.data_root) else
                   ", or a frame store: st-adapter-fast prepare, then --data-root STORE"))
        warnings.warn(f"steps {step - steps + 1}-{step} waited for data {record['data_wait_fraction']:.0%} of the "
                      f"time ({record['data_wait_s']:.1f} of {record['interval_s']:.1f} s): the {self.device.type} "
                      f"starves; {remedy}", stacklevel=2)


def _say_schedule(rank, config, num_videos):
    """Say what --epochs and --blr made of the run's steps and learning rate."""
    parts = []
    if config.epochs is not None:
        parts.append(f"{config.epochs} epochs of {num_videos} videos: {config.steps} optimizer steps")
    if config.warmup_epochs is not None:
        parts.append(f"{config.warmup_epochs} warm-up epochs: {config.warmup_steps} steps")
    if config.blr is not None:
        parts.append(f"lr {config.lr:.3g} (--blr {config.blr:g} x {config.lr * 256 / config.blr:.0f} clips per "
                     "optimizer step / 256)")
    if parts:
        _say(rank, "; ".join(parts))


def _say(rank, message):
    """A line for the user on rank 0 (through tqdm, so that a progress bar stays whole)."""
    if rank == 0:
        from tqdm import tqdm
        tqdm.write(message)


def _check_output_folders(config):
    """Before any training: output_dir is a folder this process can write in, what a run writes there is not
    in the way (adapters/ a folder, the others regular files: a FIFO would block), so that a long run cannot
    fail at its end, and a resumed run has a checkpoint to resume from if an earlier run's results are there
    (it would overwrite them)."""
    output_dir = config.output_dir
    check_writable_folder(output_dir, config_key("output_dir"))
    for name in RUN_FILES:
        path = os.path.join(output_dir, name)
        fits = os.path.isdir(path) if name == ADAPTERS_NAME else os.path.isfile(path)
        if os.path.lexists(path) and not fits:
            raise ValueError(f"{config_key('output_dir')}: {path} is in the way: it should be a "
                             f"{'folder' if name == ADAPTERS_NAME else 'file'} (move it, or use another output_dir)")
    adapters = os.path.join(output_dir, ADAPTERS_NAME)
    if os.path.isdir(adapters):
        check_writable_folder(adapters, config_key("output_dir"))
    results = [name + "/" * (name == ADAPTERS_NAME) for name in (ADAPTERS_NAME, METRICS_NAME)
               if os.path.lexists(os.path.join(output_dir, name))]
    if config.resume and results and not os.path.lexists(os.path.join(output_dir, CHECKPOINT_NAME)):
        raise ValueError(f"{config_key('output_dir')} {output_dir} holds an earlier run's {' and '.join(results)} but "
                         f"no {CHECKPOINT_NAME} to resume from: this run would overwrite them. Use another output_dir, "
                         "or --no-resume to delete them and start over")


class _Guard:
    """What must stop a run rather than let it go on silently wrong, checked after each step and before its
    checkpoint: a step that was not finite (unless `skip_nonfinite_steps`: then it is counted and said),
    trainable weights that became non-finite in the optimizer step (that cannot be undone), and, after a whole
    epoch (or the whole run, if shorter), no video read at all."""

    def __init__(self, config, model, start_step, num_videos, world_size, device):
        self.config, self.world_size, self.device, self.skipped_steps = config, world_size, device, 0
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        per_rank = -(-num_videos // world_size) // config.batch_size          # batches per epoch and rank
        epoch_steps = -(-per_rank // config.accum_steps)
        last = min(config.steps, config.stop_at or config.steps)
        self.clips, self.check_at, self.num_videos = 0, start_step + min(epoch_steps, last - start_step), num_videos

    def check(self, step, loss, clips, skips, rank):
        self.clips += clips
        if step == self.check_at and all_reduce_sum([self.clips], self.device, self.world_size)[0] == 0:
            first = next(iter(skips.paths.items()), ("?", "?"))
            raise ValueError(f"no video of {self.config.train_list} could be read ({self.num_videos} listed; first "
                             f"unreadable: {first[0]}: {first[1]}): nothing was trained; stopped at step {step}")
        if math.isfinite(loss):
            if not _all_finite(self.trainable):
                raise NonFiniteLossError(_nonfinite_message(
                    step, self.config, "the optimizer step made trainable weights non-finite (nan or inf)"))
            return
        if not self.config.skip_nonfinite_steps:
            raise NonFiniteLossError(_nonfinite_message(
                step, self.config, "the training loss or its gradients are not finite (nan or inf); the run stopped "
                "without applying that step", skip_hint=True))
        self.skipped_steps += 1
        if rank == 0:
            warnings.warn(f"step {step}: the loss or its gradients are not finite (nan or inf): step skipped "
                          f"(--skip-nonfinite-steps; {self.skipped_steps} skipped so far)", stacklevel=2)


class NonFiniteLossError(RuntimeError):
    """A training step whose loss or gradients were not finite (in a run that does not skip such steps), or
    whose optimizer step made the weights non-finite."""


def _nonfinite_message(step, config, what, skip_hint=False):
    kept = checkpoint_step(config.output_dir)
    checkpoint = os.path.join(config.output_dir, CHECKPOINT_NAME)
    where = (f"the checkpoint of step {kept} is kept in {checkpoint}" if kept is not None else
             f"no checkpoint was written before it (--save-every {config.save_every})")
    return (f"step {step}: {what}; nothing of this step was saved, and {where}. Lower --lr (now {config.lr:g}) or "
            "check the data" + (", or pass --skip-nonfinite-steps to skip such steps and go on" if skip_hint else ""))


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


def _finish(model, config, device, rank, world_size, log, save_adapters):
    """Adapter-only result and final eval of a completed run."""
    metrics = None
    if rank == 0:
        path = save_adapters(model, os.path.join(config.output_dir, ADAPTERS_NAME))
        write_files({os.path.join(path, TRAIN_CONFIG_NAME): json.dumps(absolute_paths(config), indent=1)})
    if config.val_list:
        metrics = evaluate(model, config, device, rank, world_size)
        log.write(dict(step=config.steps, **metrics))
        if rank == 0:
            write_files({os.path.join(config.output_dir, METRICS_NAME): json.dumps(metrics, indent=1)})
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

    def write_train(self, step, window, lr, skipped, waited, skipped_steps=0):
        """Log a training interval (`waited`: the seconds of data wait so far); returns its record. The time
        waiting for data is measured against the interval's wall time (each step ends in a synchronising
        .item(), so a step's time is the device's)."""
        seconds = time.perf_counter() - window["time"]
        wait = waited - window["waited"]
        loss = window["loss"] / window["steps"] if window["steps"] else None   # None: every step skipped
        record = dict(step=step, loss=loss, lr=lr,
                      train_acc=100.0 * window["correct"] / max(window["clips"], 1),
                      clips_per_s=window["clips"] / max(seconds, 1e-9), skipped_videos=skipped,
                      data_wait_s=wait, interval_s=seconds, data_wait_fraction=wait / max(seconds, 1e-9))
        if skipped_steps:
            record["skipped_steps"] = skipped_steps
        if self.backbone_compute_dtype is not None:
            record["backbone_compute_dtype"], self.backbone_compute_dtype = self.backbone_compute_dtype, None
        self.write(record)
        return record
