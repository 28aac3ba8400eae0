"""Data loaders whose order and augmentations depend only on (seed, epoch, sample), never on workers.

That property is what makes a resume bit-identical, even from the middle of an
epoch: the sampler is torch's ``DistributedSampler`` (a permutation seeded by
``seed + epoch``, sharded over processes) started at the first unseen sample, and
each sample's augmentation draws come from a Python RNG seeded by
(seed, epoch, index), whichever worker or process loads it.
"""

from __future__ import annotations

import itertools
import random
from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from semseg.augmentations import eval_transforms, train_transforms
from semseg.config import Config
from semseg.distributed import DistContext
from semseg.loaders import SegmentationDataset, build_dataset


class EpochSeeded(Dataset):
    """Runs ``dataset[i]`` with Python's ``random`` seeded by (seed, epoch, i), restoring its state after."""

    def __init__(self, dataset: SegmentationDataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        state = random.getstate()
        random.seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
        try:
            return self.dataset[index]
        finally:
            random.setstate(state)


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start part-way through an epoch (after ``start`` samples of this rank)."""

    def __init__(self, dataset: Dataset, ctx: DistContext, seed: int) -> None:
        super().__init__(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: each image scored exactly once across processes.

    (``DistributedSampler`` pads with repeats, which would count some images twice
    and make the distributed mIoU differ from the single-process one.)
    """

    def __init__(self, length: int, ctx: DistContext) -> None:
        self.indices = range(ctx.rank, length, ctx.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loaders(
    cfg: Config, device: torch.device, ctx: Optional[DistContext] = None, workers: int = 0
) -> tuple[SegmentationDataset, DataLoader, DataLoader]:
    """(the training split without transforms, for metadata and class statistics; train loader; val loader).

    ``data.batch_size`` is per process, as in torchvision's references; ``workers`` is the resolved
    ``data.num_workers`` (:func:`semseg.threads.apply_budget`).
    """
    ctx = ctx or DistContext()
    probe = build_dataset(cfg.data, cfg.data.train_split)
    train_set = EpochSeeded(build_dataset(cfg.data, cfg.data.train_split, train_transforms(cfg.augment, probe.IGNORE_INDEX)), cfg.train.seed)
    val_set = build_dataset(cfg.data, cfg.data.val_split, eval_transforms(cfg.augment))
    common = dict(num_workers=workers, pin_memory=device.type == "cuda")
    train_loader = DataLoader(
        train_set, cfg.data.batch_size, sampler=ResumableSampler(train_set, ctx, cfg.train.seed),
        drop_last=len(train_set) // ctx.world_size > cfg.data.batch_size, generator=torch.Generator(), **common,
    )  # fmt: skip
    val_loader = DataLoader(val_set, cfg.data.val_batch_size, sampler=ShardSampler(len(val_set), ctx), **common)
    return probe, train_loader, val_loader


def set_epoch(loader: DataLoader, epoch: int, start: int = 0) -> None:
    """Point the training loader at ``epoch``, skipping the first ``start`` samples (mid-epoch resume)."""
    loader.sampler.set_epoch(epoch)
    loader.sampler.start = start
    loader.dataset.epoch = epoch
    loader.generator.manual_seed(epoch)  # worker base seeds: a function of the epoch only
