"""Joint (image, mask) transforms on uint8 tensors, and the presets built from config.

Every transform is a small class with ``__call__(image, mask) -> (image, mask)``
so geometry is applied to both identically. Images are 3×H×W uint8 and masks
1×H×W uint8 until the final step; torchvision's v2 kernels on uint8 are as fast
as PIL or faster for resize and blur (bench/loader_throughput.py). Masks are
sacred: resized and rotated with NEAREST only, padded and rotated-in with the
ignore index, never normalised or colour-jittered (as torchvision's
``references/segmentation/transforms.py``).
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from semseg.config import AugmentConfig
from semseg.errors import ConfigError

Pair = tuple[torch.Tensor, torch.Tensor]
BILINEAR = F.InterpolationMode.BILINEAR
# Masks resize with NEAREST_EXACT: torch's plain "nearest" samples floor(dst·scale), up to one pixel
# away from where bilinear (half-pixel centres) puts the same edge; "nearest-exact" matches PIL's NEAREST.
NEAREST = F.InterpolationMode.NEAREST_EXACT


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Any, Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, mask: Any) -> Any:
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"Compose({', '.join(type(t).__name__ for t in self.transforms)})"


def image_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image → 3×H×W uint8 tensor (RGB)."""
    return F.pil_to_tensor(image.convert("RGB"))


class ToTensors:
    """PIL image and id mask → (3×H×W uint8, 1×H×W uint8) tensors."""

    def __call__(self, image: Image.Image, mask: Image.Image) -> Pair:
        return image_tensor(image), torch.from_numpy(np.array(mask, dtype=np.uint8))[None]


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear with antialiasing (a downscale averages, it does not alias), on the uint8 image."""
    return F.resize(image, list(size), BILINEAR, antialias=True)


def normalize_image(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """3×H×W uint8 → float, scaled to [0, 1], then (x - mean) / std per channel."""
    return F.normalize(image.float().div_(255), list(mean), list(std))


def _resize(image: torch.Tensor, mask: torch.Tensor, size: list[int]) -> Pair:
    return resize_image(image, size), F.resize(mask, size, NEAREST)


class RandomScale:
    """Resize both by a factor drawn uniformly from ``[low, high]``."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        factor = random.uniform(self.low, self.high)
        h, w = image.shape[-2:]
        return _resize(image, mask, [max(1, round(h * factor)), max(1, round(w * factor))])


class RandomCrop:
    """Crop (H, W) at a random position; pad first where the image is smaller.

    Padding is 0 for the image and ``ignore_index`` for the mask, so padded
    pixels never count in the loss or the metrics.
    """

    def __init__(self, size: tuple[int, int], ignore_index: int) -> None:
        self.size = size
        self.ignore_index = ignore_index

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        ch, cw = self.size
        h, w = image.shape[-2:]
        pad_h, pad_w = max(0, ch - h), max(0, cw - w)
        if pad_h or pad_w:
            padding = [0, 0, pad_w, pad_h]  # left, top, right, bottom
            image = F.pad(image, padding, fill=0)
            mask = F.pad(mask, padding, fill=self.ignore_index)
            h, w = h + pad_h, w + pad_w
        top, left = random.randint(0, h - ch), random.randint(0, w - cw)
        return F.crop(image, top, left, ch, cw), F.crop(mask, top, left, ch, cw)


class RandomResizedCrop:
    """A crop of random area share and aspect ratio, resized to (H, W) (Inception-style; Szegedy et al. 2015)."""

    def __init__(self, size: tuple[int, int], area: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.size, self.area = list(size), area
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        h, w = image.shape[-2:]
        for _ in range(10):
            target = h * w * random.uniform(*self.area)
            aspect = math.exp(random.uniform(*self.log_ratio))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:  # fall back to the whole image
            ch, cw = h, w
        top, left = random.randint(0, h - ch), random.randint(0, w - cw)
        return (
            F.resized_crop(image, top, left, ch, cw, self.size, BILINEAR, antialias=True),
            F.resized_crop(mask, top, left, ch, cw, self.size, NEAREST),
        )


class RandomRotation:
    """Rotate both by an angle in ``[-degrees, degrees]``; uncovered mask pixels become ignore."""

    def __init__(self, degrees: float, ignore_index: int) -> None:
        self.degrees, self.ignore_index = degrees, ignore_index

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        angle = random.uniform(-self.degrees, self.degrees)
        return F.rotate(image, angle, BILINEAR, fill=0), F.rotate(mask, angle, F.InterpolationMode.NEAREST, fill=self.ignore_index)


class RandomHorizontalFlip:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        if random.random() < self.p:
            return F.horizontal_flip(image), F.horizontal_flip(mask)
        return image, mask


class ColorJitter:
    """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s]; the mask is untouched."""

    def __init__(self, strength: float) -> None:
        self.strength = strength

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        s = self.strength
        image = F.adjust_brightness(image, random.uniform(1 - s, 1 + s))
        image = F.adjust_contrast(image, random.uniform(1 - s, 1 + s))
        image = F.adjust_saturation(image, random.uniform(1 - s, 1 + s))
        return image, mask


class PhotometricDistortion:
    """mmseg's PhotoMetricDistortion: each of brightness (±32/255), contrast and
    saturation (×0.5–1.5) and hue (±18°) applied with probability 0.5 (SSD, Liu et al. 2016)."""

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        if random.random() < 0.5:
            image = (image.to(torch.int16) + random.randint(-32, 32)).clamp(0, 255).to(torch.uint8)
        if random.random() < 0.5:
            image = F.adjust_contrast(image, random.uniform(0.5, 1.5))
        if random.random() < 0.5:
            image = F.adjust_saturation(image, random.uniform(0.5, 1.5))
        if random.random() < 0.5:
            image = F.adjust_hue(image, random.uniform(-18, 18) / 360)
        return image, mask


class RandomGaussianBlur:
    """With probability ``p``, blur the image with σ ∈ [0.1, 2] (PSPNet's training recipe); the mask is untouched."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        if random.random() < self.p:
            sigma = random.uniform(0.1, 2.0)
            kernel = 2 * math.ceil(3 * sigma) + 1
            image = F.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
        return image, mask


class Normalize:
    """uint8 pair → (float 3×H×W normalised image, int64 H×W mask of class ids)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        return normalize_image(image, self.mean, self.std), mask[0].long()


def train_transforms(cfg: AugmentConfig, ignore_index: int) -> Compose:
    """Geometry (scale → crop, or resized crop; rotate; flip), then colour, then normalise."""
    steps: list[Callable[[Any, Any], Any]] = [ToTensors()]
    if cfg.resized_crop is not None:
        if cfg.crop is None:
            raise ConfigError("augment.resized_crop: needs augment.crop (the output size)")
        steps.append(RandomResizedCrop(cfg.crop, cfg.resized_crop))
        if cfg.rotate > 0:
            steps.append(RandomRotation(cfg.rotate, ignore_index))
    else:
        if cfg.scale != (1.0, 1.0):
            steps.append(RandomScale(*cfg.scale))
        if cfg.rotate > 0:  # before the crop, so rotated-in (ignored) corners are mostly cropped away
            steps.append(RandomRotation(cfg.rotate, ignore_index))
        if cfg.crop is not None:
            steps.append(RandomCrop(cfg.crop, ignore_index))
    if cfg.hflip > 0:
        steps.append(RandomHorizontalFlip(cfg.hflip))
    if cfg.jitter > 0:
        steps.append(ColorJitter(cfg.jitter))
    if cfg.photometric:
        steps.append(PhotometricDistortion())
    if cfg.blur > 0:
        steps.append(RandomGaussianBlur(cfg.blur))
    steps.append(Normalize(cfg.mean, cfg.std))
    return Compose(steps)


def eval_image(image: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """The network input at evaluation: 3×H×W uint8 → resized to ``augment.eval_size`` (when set), normalised.

    The one path from image to network input for validate.py (through
    :func:`eval_transforms`) and test.py (``semseg.inference.predict_image``), so the
    same image gives the same input in both, bit for bit. It resizes the uint8
    image with antialiasing, as the training presets do.
    """
    if cfg.eval_size is not None:
        image = resize_image(image, cfg.eval_size)
    return normalize_image(image, cfg.mean, cfg.std)


class EvalInput:
    """Evaluation's one deterministic step: the image through :func:`eval_image`, the mask to the same size."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        if self.cfg.eval_size is not None:
            mask = F.resize(mask, list(self.cfg.eval_size), NEAREST)
        return eval_image(image, self.cfg), mask[0].long()


def eval_transforms(cfg: AugmentConfig) -> Compose:
    """Deterministic: optional resize, then normalise (:func:`eval_image`). Metrics are taken at this size."""
    return Compose([ToTensors(), EvalInput(cfg)])
