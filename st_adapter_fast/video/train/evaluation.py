"""Evaluation: top-1/top-5 over views and crops on a validation list, and of a saved run's adapters."""
import os

import torch

from ..data import SkipCounter, collate_clips
from ..transforms import normalize_clip
from .config import ADAPTERS_NAME, TRAIN_CONFIG_NAME, TrainConfig, config_key, load_config_file
from .distributed import all_reduce_sum, setup_distributed
from .loader import make_dataset
from .model import autocast, check_model_runs, classifier_arguments, run_model_record


@torch.no_grad()
def evaluate(model, config, device, rank=0, world_size=1):
    """Top-1/top-5 (%) on `config.val_list`, scores averaged over the views and crops of each video;
    each rank scores a disjoint share. Unreadable videos are counted in `skipped`, not in `videos`; if no
    video at all can be read, ValueError (a score of nothing would read as 0%)."""
    dataset = make_dataset(config, train=False)
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
        clips, labels = normalize_clip(batch["clip"].to(device, non_blocking=True)), batch["label"].to(device)
        with autocast(config, device):
            logits = model(clips.flatten(0, 1)).float()
        scores = logits.softmax(-1).view(len(labels), -1, logits.shape[-1]).mean(1)
        best = scores.topk(min(5, scores.shape[-1]), dim=-1).indices
        top1 += (best[:, 0] == labels).sum().item()
        top5 += (best == labels[:, None]).any(-1).sum().item()
        videos += len(labels)
    model.train(was_training)
    top1, top5, videos, skipped = all_reduce_sum([top1, top5, videos, len(skips)], device, world_size)
    if not videos:
        first = next(iter(skips.paths.items()), ("?", "?"))
        raise ValueError(f"no video of {config.val_list} could be read ({len(dataset)} listed; first unreadable: "
                         f"{first[0]}: {first[1]}): nothing to evaluate")
    return dict(top1=100.0 * top1 / max(videos, 1), top5=100.0 * top5 / max(videos, 1), videos=int(videos),
                skipped=int(skipped), listed=len(dataset))


def format_metrics(metrics):
    """One line for an evaluate() result."""
    return (f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}% on {metrics['videos']} of "
            f"{metrics['listed']} videos ({metrics['skipped']} unreadable, skipped)")


def evaluate_adapters(adapters_dir, overrides=None):
    """Evaluate the model of `adapters_dir` (a run's adapters/ folder) on `overrides["val_list"]` or the run's
    val_list. The model is the one adapter_config.json records, built and loaded as `from_pretrained` does
    (with the backbone weights the run started from); the data and eval settings are train_config.json's, with
    `overrides` (eval's flags) on top. train_config.json must agree with the record on the model."""
    from ...integrations.pretrained import from_pretrained
    config_path = os.path.join(adapters_dir, TRAIN_CONFIG_NAME)
    if not os.path.lexists(config_path):
        inside = os.path.join(adapters_dir, ADAPTERS_NAME)
        hint = (f"; {adapters_dir} is a run's output_dir: give {inside}" if os.path.isfile(os.path.join(
            inside, TRAIN_CONFIG_NAME)) else f" ({adapters_dir} is a file)" if os.path.isfile(adapters_dir) else "")
        raise FileNotFoundError(f"{config_path} not found: expected the adapters/ folder of a train run{hint}")
    values = load_config_file(config_path)
    record = run_model_record(adapters_dir, TrainConfig.from_dict(values, source=config_path))
    config = TrainConfig.from_dict(dict(values, **(overrides or {})), source=config_path)
    if not config.val_list:
        raise ValueError(f"eval needs {config_key('val_list')}: the run had none")
    rank, world_size, device = setup_distributed(config.device)
    model = from_pretrained(adapters_dir, checkpoint_path=record.get("checkpoint_path"),
                            authors_checkpoint=record.get("authors_checkpoint"), backend=config.backend,
                            backbone_dtype=classifier_arguments(config)["backbone_dtype"]).to(device)
    check_model_runs(model, config, device)
    return evaluate(model, config, device, rank, world_size)
