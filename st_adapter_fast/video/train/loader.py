"""The data of a run: the datasets of its lists (uint8 clips, normalised on the device) and the training
DataLoader over this rank's share of the list, resumable mid-epoch."""
import torch

from ..data import ResumableSampler, VideoDataset, collate_clips


def make_dataset(config, train=True):
    """The VideoDataset of `config`'s training list (`train`) or validation list (eval views and crops), giving
    uint8 clips: the loop normalises them on the device (transforms.normalize_clip)."""
    augmentation = dict(flip=config.flip, crop=config.train_crop, crop_scale=config.crop_scale,
                        scale_jitter=config.scale_jitter, rand_augment=config.rand_augment)
    return VideoDataset(config.train_list if train else config.val_list, config.data_root,
                        num_frames=config.num_frames, sampling_rate=config.sampling_rate, size=config.input_size,
                        train=train, num_views=config.eval_views, num_crops=config.eval_crops,
                        num_classes=config.num_classes, seed=config.seed, interpolation=config.interpolation,
                        normalize=False, **(augmentation if train else {}))


def make_train_loader(config, rank=0, world_size=1, device=torch.device("cpu")):
    """(DataLoader, ResumableSampler) over this rank's share of the training list."""
    dataset = make_dataset(config, train=True)
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
