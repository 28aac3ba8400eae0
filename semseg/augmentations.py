"""Joint (image, mask) transforms and the train/eval presets built from config.

Every transform is a small class with ``__call__(image, mask) -> (image, mask)``
so geometry is applied to both identically. Masks are sacred: resized with
NEAREST only, padded with the ignore index, never normalised or colour-jittered
(torchvision ``references/segmentation/transforms.py`` does the same).
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from semseg.config import AugmentConfig

Pair = tuple[Any, Any]


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Any, Any], Pair]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, mask: Any) -> Pair:
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"Compose({', '.join(type(t).__name__ for t in self.transforms)})"


class RandomScale:
    """Resize both by a factor drawn uniformly from ``[low, high]`` (the image bilinear, the mask nearest)."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def __call__(self, image: Image.Image, mask: Image.Image) -> Pair:
        factor = random.uniform(self.low, self.high)
        size = (max(1, round(image.height * factor)), max(1, round(image.width * factor)))
        return (
            TF.resize(image, list(size), TF.InterpolationMode.BILINEAR, antialias=True),
            TF.resize(mask, list(size), TF.InterpolationMode.NEAREST),
        )


class Resize:
    """Resize both to a fixed (H, W)."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = list(size)

    def __call__(self, image: Image.Image, mask: Image.Image) -> Pair:
        return (
            TF.resize(image, self.size, TF.InterpolationMode.BILINEAR, antialias=True),
            TF.resize(mask, self.size, TF.InterpolationMode.NEAREST),
        )


class RandomCrop:
    """Crop (H, W) at a random position; pad first where the image is smaller.

    Padding is 0 for the image and ``ignore_index`` for the mask, so padded
    pixels never count in the loss or the metrics.
    """

    def __init__(self, size: tuple[int, int], ignore_index: int) -> None:
        self.size = size
        self.ignore_index = ignore_index

    def __call__(self, image: Image.Image, mask: Image.Image) -> Pair:
        ch, cw = self.size
        pad_h, pad_w = max(0, ch - image.height), max(0, cw - image.width)
        if pad_h or pad_w:
            padding = [0, 0, pad_w, pad_h]  # left, top, right, bottom
            image = TF.pad(image, padding, fill=0)
            mask = TF.pad(mask, padding, fill=self.ignore_index)
        top = random.randint(0, image.height - ch)
        left = random.randint(0, image.width - cw)
        return TF.crop(image, top, left, ch, cw), TF.crop(mask, top, left, ch, cw)


class RandomHorizontalFlip:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, image: Image.Image, mask: Image.Image) -> Pair:
        if random.random() < self.p:
            return TF.hflip(image), TF.hflip(mask)
        return image, mask


class ColorJitter:
    """Photometric jitter of brightness, contrast and saturation; the mask is untouched."""

    def __init__(self, strength: float) -> None:
        self.strength = strength

    def __call__(self, image: Image.Image, mask: Image.Image) -> Pair:
        s = self.strength
        image = TF.adjust_brightness(image, random.uniform(1 - s, 1 + s))
        image = TF.adjust_contrast(image, random.uniform(1 - s, 1 + s))
        image = TF.adjust_saturation(image, random.uniform(1 - s, 1 + s))
        return image, mask


class ToTensorNormalize:
    """PIL pair → (float 3×H×W normalised image, int64 H×W mask of class ids)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        tensor = TF.normalize(TF.to_tensor(image), self.mean, self.std)
        return tensor, torch.from_numpy(np.array(mask, dtype=np.int64))


def train_transforms(cfg: AugmentConfig, ignore_index: int) -> Compose:
    """Scale → crop → flip → jitter → normalise, each only when configured."""
    steps: list[Callable[[Any, Any], Pair]] = []
    if cfg.scale != (1.0, 1.0):
        steps.append(RandomScale(*cfg.scale))
    if cfg.crop is not None:
        steps.append(RandomCrop(cfg.crop, ignore_index))
    if cfg.hflip > 0:
        steps.append(RandomHorizontalFlip(cfg.hflip))
    if cfg.jitter > 0:
        steps.append(ColorJitter(cfg.jitter))
    steps.append(ToTensorNormalize(cfg.mean, cfg.std))
    return Compose(steps)


def eval_transforms(cfg: AugmentConfig) -> Compose:
    """Deterministic: optional resize, then normalise. Metrics are taken at this size."""
    steps: list[Callable[[Any, Any], Pair]] = []
    if cfg.eval_size is not None:
        steps.append(Resize(cfg.eval_size))
    steps.append(ToTensorNormalize(cfg.mean, cfg.std))
    return Compose(steps)
