"""The training data of a run: a DataLoader over this rank's share of the list, resumable mid-epoch."""
import torch

from ..data import ResumableSampler, VideoDataset, collate_clips


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


def iterate_batches(loader, sampler, position):
    """Batches from `position` (epoch, batch within the epoch) on, forever; keeps `position` current
    with what has been consumed."""
    while True:
        sampler.set_position(position["epoch"], position["batch"] * loader.batch_size)
        for batch in loader:
            position["batch"] += 1
            yield batch
        position["epoch"], position["batch"] = position["epoch"] + 1, 0
