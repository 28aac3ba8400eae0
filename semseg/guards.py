"""Start-up checks that need the data or the model, so a run fails before its first epoch, not after it.

The schema (semseg/config.py) checks every value on its own; what it cannot see is how the values
meet the data and the model: images of different sizes in one batch, a BatchNorm layer left with
one value per channel by a batch of one sample, a validation setting that only fails on a real
image. Each check here costs at most one forward pass, and each failure is one line naming the
key to change. :func:`non_finite` is the last guard before a checkpoint is written.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Optional

import torch
from torch import nn

from semseg.errors import ConfigError, DataError, SemsegError
from semseg.loaders import SegmentationDataset

_BN_ONE_VALUE = "Expected more than 1 value per channel when training"


def check_batchable(dataset: SegmentationDataset, batch: int, resized: bool, key: str, fix: str) -> None:
    """Images of different sizes cannot share a batch: with ``batch`` > 1 and no fixed output size
    (``resized`` False), every image of the split must have the first one's size (file headers only)."""
    if batch <= 1 or resized or len(dataset) < 2:
        return
    first = None
    for i in range(len(dataset)):
        try:
            size = dataset.image_size(i)
        except DataError:
            if dataset.on_error == "skip":  # training will log, count and replace it, as for any unreadable sample
                continue
            raise
        if first is None:
            first, first_index = size, i
        elif size != first:
            raise ConfigError(
                f"{key}: {batch} images per batch, but split '{dataset.split}' mixes sizes "
                f"({dataset.samples[first_index].image.name} is {first[0]}×{first[1]}, {dataset.samples[i].image.name} "
                f"{size[0]}×{size[1]}); set {fix} or {key}=1"
            )


def check_batch_norm(model: nn.Module, sample: torch.Tensor, smallest_batch: int, device: torch.device) -> None:
    """A training batch of one sample fails in any BatchNorm that then sees one value per channel
    (PSPNet's 1×1 pyramid pooling): found with one forward of a real sample, weights and RNG untouched."""
    if smallest_batch > 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            model.train()(sample[None].to(device))
    except ValueError as exc:
        if _BN_ONE_VALUE not in str(exc):
            raise
        raise ConfigError(
            "data.batch_size: training batches would hold 1 sample, and a BatchNorm layer of the model then sees "
            "1 value per channel; use data.batch_size >= 2 with a training split of at least 2 images per process"
        ) from None
    finally:
        model.load_state_dict(buffers)


def smallest_train_batch(train_images: int, batch_size: int, world_size: int) -> int:
    """The fewest samples a training batch can hold (train.py drops the last partial batch when there is a full one)."""
    return min(batch_size, train_images // max(1, world_size))


def first_batches(loader: Iterable, n: int = 1) -> list[Any]:
    """The first ``n`` batches of ``loader`` (the start-up validation probe's input)."""
    return list(itertools.islice(loader, n))


def non_finite(checkpoint: dict[str, Any], keys: tuple[str, ...] = ("model", "ema", "optimizer")) -> Optional[str]:
    """The first tensor name under ``keys`` holding NaN or infinity (``model: conv1.weight``), or None."""

    def walk(value: Any, name: str) -> Optional[str]:
        if isinstance(value, torch.Tensor):
            return name if value.is_floating_point() and not bool(torch.isfinite(value).all()) else None
        if isinstance(value, dict):
            return next((bad for k, v in value.items() if (bad := walk(v, f"{name}.{k}" if name else str(k)))), None)
        if isinstance(value, (list, tuple)):
            return next((bad for i, v in enumerate(value) if (bad := walk(v, f"{name}[{i}]"))), None)
        return None

    for key in keys:
        bad = walk(checkpoint.get(key), "")
        if bad is not None:
            return f"{key}: {bad}"
    return None


def refuse_non_finite(checkpoint: dict[str, Any], iteration: int) -> None:
    """Stop, with the last good checkpoint left as it is, rather than save NaN or infinite weights."""
    bad = non_finite(checkpoint)
    if bad is not None:
        raise SemsegError(
            f"parameters became non-finite by iteration {iteration} ({bad}); not saved, the last good checkpoint is "
            "kept; lower optim.lr or set train.clip_grad"
        )
