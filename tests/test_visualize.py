from __future__ import annotations

import numpy as np
from PIL import Image

from semseg.visualize import colorize, denormalize, overlay


def test_colorize_maps_ids_to_palette_and_ignore_to_black() -> None:
    ids = np.array([[0, 1], [255, 1]], dtype=np.uint8)
    rgb = colorize(ids, [(10, 20, 30), (40, 50, 60)])
    assert rgb.tolist() == [[[10, 20, 30], [40, 50, 60]], [[0, 0, 0], [40, 50, 60]]]


def test_overlay_blends_half_and_half() -> None:
    image = Image.new("RGB", (2, 1), (100, 100, 100))
    out = np.asarray(overlay(image, np.full((1, 2, 3), 200, np.uint8)))
    assert (out == 150).all()


def test_denormalize_inverts_normalisation() -> None:
    rgb = np.array([[[0.0, 1.0]], [[0.5, 0.5]], [[1.0, 0.0]]])  # 3×1×2
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    assert denormalize((rgb - 0.5) / 0.5, mean, std)[0, 0].tolist() == [0, 128, 255]
