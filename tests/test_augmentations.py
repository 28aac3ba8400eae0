"""Joint transforms keep image and mask aligned; the mask is never interpolated or normalised."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from semseg.augmentations import ColorJitter, RandomCrop, RandomHorizontalFlip, RandomScale, train_transforms
from semseg.config import AugmentConfig

IGN = 255


def pattern(h: int = 48, w: int = 64) -> tuple[Image.Image, Image.Image]:
    """8×8 blocks; block id k is painted grey level 20·k in the image and id k in the mask."""
    ids = ((np.arange(h)[:, None] // 8) * 3 + (np.arange(w)[None, :] // 8)) % 12
    img = np.repeat((ids * 20).astype(np.uint8)[..., None], 3, axis=2)
    return Image.fromarray(img, "RGB"), Image.fromarray(ids.astype(np.uint8), "L")


def agreement(image: np.ndarray, mask: np.ndarray) -> float:
    """Share of interior labelled pixels (all 8 neighbours share the id) whose grey level matches their id.

    Border pixels are excluded because bilinear resizing blends the image there by design.
    """
    m = mask.astype(int)
    pad = np.pad(m, 1, mode="edge")
    interior = np.ones_like(m, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            interior &= pad[dy : dy + m.shape[0], dx : dx + m.shape[1]] == m
    keep = interior & (m != IGN)
    assert keep.sum() > 50, "too few interior pixels to judge"
    return float((np.abs(image[..., 0][keep].astype(int) - 20 * m[keep]) <= 2).mean())


@pytest.mark.parametrize("seed", range(5))
def test_scale_crop_flip_keep_alignment(seed: int) -> None:
    random.seed(seed)
    image, mask = pattern()
    for t in (RandomScale(0.5, 2.0), RandomCrop((40, 40), IGN), RandomHorizontalFlip(1.0)):
        image, mask = t(image, mask)
    img, m = np.asarray(image), np.asarray(mask)
    assert img.shape[:2] == m.shape == (40, 40)
    assert agreement(img, m) > 0.98
    assert set(np.unique(m)) <= set(range(12)) | {IGN}  # nearest: no new (interpolated) ids


def test_misaligned_flip_would_be_caught() -> None:
    image, mask = pattern()
    assert agreement(np.asarray(image)[:, ::-1], np.asarray(mask)) < 0.5  # the check above can fail


def test_crop_pads_mask_with_ignore_and_image_with_zero() -> None:
    random.seed(0)
    image, mask = pattern(16, 16)
    image, mask = RandomCrop((24, 30), IGN)(image, mask)
    img, m = np.asarray(image), np.asarray(mask)
    assert m.shape == (24, 30)
    assert (m[16:, :] == IGN).all() and (m[:, 16:] == IGN).all()
    assert (img[16:, :] == 0).all()
    assert (m[:16, :16] != IGN).all()


def test_jitter_leaves_mask_untouched() -> None:
    random.seed(0)
    image, mask = pattern()
    jittered, same = ColorJitter(0.4)(image, mask)
    assert same is mask and not np.array_equal(np.asarray(jittered), np.asarray(image))


def test_train_preset_outputs_normalised_image_and_long_mask() -> None:
    random.seed(0)
    cfg = AugmentConfig(scale=(0.75, 1.5), crop=(32, 32), hflip=0.5, jitter=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    image, mask = train_transforms(cfg, IGN)(*pattern())
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    assert str(mask.dtype) == "torch.int64" and str(image.dtype) == "torch.float32"
    assert agreement((image.permute(1, 2, 0).numpy() * 255).round(), mask.numpy()) > 0.98
