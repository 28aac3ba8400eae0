"""Colour masks, overlays and denormalised images: what every picture of a prediction is made of.

Live curves (visdom, TensorBoard) are in :mod:`semseg.sinks`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

def colorize(ids: np.ndarray, palette: Sequence[tuple[int, int, int]], ignore_index: int = 255) -> np.ndarray:
    """H×W class ids → H×W×3 uint8 colours; ignored (and out-of-range) pixels are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[np.asarray(ids, dtype=np.uint8)]


def overlay(image: Image.Image, colors: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a colour mask over the RGB image it was predicted from."""
    return Image.blend(image.convert("RGB"), Image.fromarray(colors, mode="RGB"), alpha)


def denormalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """3×H×W normalised float image → H×W×3 uint8 RGB."""
    rgb = image.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
