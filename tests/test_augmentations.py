"""Joint transforms keep image and mask aligned; the mask is never interpolated or normalised."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from semseg.augmentations import (
    ColorJitter,
    PhotometricDistortion,
    RandomCrop,
    RandomGaussianBlur,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    RandomScale,
    ToTensors,
    train_transforms,
)
from semseg.config import AugmentConfig
from semseg.errors import ConfigError

IGN = 255


def pattern(h: int = 48, w: int = 64, block: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Square blocks; block id k is painted grey level 20·k in the image and id k in the mask."""
    ids = ((np.arange(h)[:, None] // block) * 3 + (np.arange(w)[None, :] // block)) % 12
    img = np.repeat((ids * 20).astype(np.uint8)[..., None], 3, axis=2)
    return ToTensors()(Image.fromarray(img, "RGB"), Image.fromarray(ids.astype(np.uint8), "L"))


def agreement(image: torch.Tensor, mask: torch.Tensor, radius: int = 1) -> float:
    """Share of interior labelled pixels whose grey level matches their id.

    Interior = every pixel within ``radius`` shares the id. Pixels nearer a border are excluded
    because bilinear resampling blends the image there by design (one pixel per resampling step).
    """
    img, m = image[0].numpy().astype(int), mask.reshape(mask.shape[-2:]).numpy().astype(int)
    pad = np.pad(m, radius, mode="edge")
    interior = np.ones_like(m, dtype=bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            interior &= pad[dy : dy + m.shape[0], dx : dx + m.shape[1]] == m
    keep = interior & (m != IGN)
    assert keep.sum() > 50, "too few interior pixels to judge"
    return float((np.abs(img[keep] - 20 * m[keep]) <= 2).mean())


def ids_subset(mask: torch.Tensor) -> bool:
    return set(mask.unique().tolist()) <= set(range(12)) | {IGN}  # nearest: no new (interpolated) ids


@pytest.mark.parametrize("seed", range(5))
def test_scale_rotate_crop_flip_keep_alignment(seed: int) -> None:
    random.seed(seed)
    image, mask = pattern(96, 128, block=16)  # blocks stay ≥ 8 px after a 0.5× scale and a rotation
    for t in (RandomScale(0.5, 2.0), RandomRotation(15, IGN), RandomCrop((40, 40), IGN), RandomHorizontalFlip(1.0)):
        image, mask = t(image, mask)
    assert image.shape == (3, 40, 40) and mask.shape == (1, 40, 40)
    assert image.dtype == mask.dtype == torch.uint8
    assert agreement(image, mask, radius=2) > 0.98  # two resampling steps (scale, rotate)
    assert agreement(image.flip(-1), mask, radius=2) < 0.5  # and the check can fail
    assert ids_subset(mask)


@pytest.mark.parametrize("seed", range(3))
def test_resized_crop_keeps_alignment(seed: int) -> None:
    random.seed(seed)
    image, mask = RandomResizedCrop((32, 32), (0.3, 1.0))(*pattern())
    assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    assert agreement(image, mask) > 0.98 and ids_subset(mask)


def test_misaligned_flip_would_be_caught() -> None:
    image, mask = pattern()
    assert agreement(image.flip(-1), mask) < 0.5  # the alignment checks above can fail


def test_rotation_fills_uncovered_mask_pixels_with_ignore() -> None:
    random.seed(0)
    image, mask = RandomRotation(45, IGN)(*pattern(40, 40))
    corners = mask[0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == IGN).all() and (image[:, 0, 0] == 0).all()


def test_crop_pads_mask_with_ignore_and_image_with_zero() -> None:
    random.seed(0)
    image, mask = RandomCrop((24, 30), IGN)(*pattern(16, 16))
    m = mask[0]
    assert m.shape == (24, 30)
    assert (m[16:, :] == IGN).all() and (m[:, 16:] == IGN).all()
    assert (image[:, 16:, :] == 0).all()
    assert (m[:16, :16] != IGN).all()


@pytest.mark.parametrize("transform", [ColorJitter(0.4), PhotometricDistortion(), RandomGaussianBlur(1.0)], ids=type)
def test_photometric_transforms_change_only_the_image(transform) -> None:  # noqa: ANN001
    random.seed(1)
    image, mask = pattern()
    changed = False
    for _ in range(4):  # PhotometricDistortion applies each part with p = 0.5
        out, same = transform(image, mask)
        assert same is mask and out.dtype == torch.uint8 and out.shape == image.shape
        changed |= not torch.equal(out, image)
    assert changed


def test_train_preset_outputs_normalised_image_and_long_mask() -> None:
    random.seed(0)
    cfg = AugmentConfig(scale=(0.75, 1.5), crop=(32, 32), hflip=0.5, rotate=5, mean=(0, 0, 0), std=(1, 1, 1))
    tensor_image, tensor_mask = pattern(96, 128, block=16)
    pil_image = Image.fromarray(tensor_image.permute(1, 2, 0).numpy())
    pil_mask = Image.fromarray(tensor_mask[0].numpy())
    image, mask = train_transforms(cfg, IGN)(pil_image, pil_mask)
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    assert mask.dtype == torch.int64 and image.dtype == torch.float32 and float(image.max()) <= 1.0
    assert agreement((image * 255).round(), mask) > 0.98


def test_resized_crop_without_output_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="augment.resized_crop: needs augment.crop"):
        train_transforms(AugmentConfig(resized_crop=(0.5, 1.0)), IGN)
