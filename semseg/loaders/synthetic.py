"""Procedurally generated street scenes: the built-in dataset that needs no download.

Each sample is drawn from its own RNG seeded by (seed, split, index), so the
data is identical on every machine and a split never overlaps another. Scenes
have a sky, a road below a random horizon, buildings with windows, trees,
cars and pedestrians, with colour variation and pixel noise — enough structure
that a network must use shape and context, so mIoU is a meaningful number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from semseg.errors import DataError
from semseg.loaders._base import JointTransform, Sample, SegmentationDataset
from semseg.registry import DATASETS

SKY, BUILDING, ROAD, TREE, CAR, PERSON = range(6)
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# Mean RGB per class; each object jitters around it.
_COLOURS = np.array(
    [(110, 160, 220), (150, 90, 70), (90, 90, 95), (50, 130, 50), (180, 40, 40), (230, 190, 150)], dtype=np.float32
)


def _rect(mask: np.ndarray, ids: np.ndarray, cls: int, y0: int, y1: int, x0: int, x1: int) -> None:
    h, w = ids.shape
    y0, y1, x0, x1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
    ids[y0:y1, x0:x1] = cls
    mask[y0:y1, x0:x1] = True


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (H×W×3 uint8 image, H×W uint8 class ids)."""
    ids = np.full((height, width), SKY, dtype=np.uint8)
    image = np.zeros((height, width, 3), dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    horizon = int(height * rng.uniform(0.35, 0.55))
    # road: a trapezoid widening towards the viewer; below the horizon the rest is pavement-coloured building base
    spread = (yy - horizon) / max(1, height - horizon)
    centre = width * rng.uniform(0.35, 0.65)
    road = (yy >= horizon) & (np.abs(xx - centre) <= width * (0.08 + 0.6 * spread))
    ids[yy >= horizon] = BUILDING
    ids[road] = ROAD
    # buildings standing on the horizon
    x = int(rng.integers(-width // 8, width // 8))
    while x < width:
        bw = int(rng.integers(width // 8, width // 3))
        top = int(horizon - rng.uniform(0.15, 0.9) * horizon)
        ids[top:horizon, max(0, x) : x + bw][~road[top:horizon, max(0, x) : x + bw]] = BUILDING
        x += bw + int(rng.integers(0, width // 10))
    # per-class base colours, then objects drawn over with their own colours
    for cls in range(len(_COLOURS)):
        image[ids == cls] = _COLOURS[cls] + rng.normal(0, 12, 3)
    image[ids == SKY] += ((yy[ids == SKY] / max(1, horizon)) * 40)[:, None]  # sky brightens towards the horizon
    windows = (ids == BUILDING) & (yy < horizon) & ((yy // 4) % 3 == 0) & ((xx // 4) % 3 == 0)
    image[windows] *= 0.55
    for _ in range(int(rng.integers(1, 4))):  # trees: a trunk and a round crown
        cx, cy, r = int(rng.integers(0, width)), int(horizon - rng.integers(0, height // 6)), int(rng.integers(height // 12, height // 5))
        crown = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        trunk = (np.abs(xx - cx) <= max(1, r // 5)) & (yy >= cy) & (yy <= cy + 2 * r)
        sel = crown | trunk
        ids[sel] = TREE
        image[sel] = _COLOURS[TREE] + rng.normal(0, 15, 3)
        image[trunk & ~crown] = (90, 60, 30)
    for cls, count, (hmin, hmax), aspect in ((CAR, 3, (0.08, 0.2), 2.0), (PERSON, 3, (0.1, 0.25), 0.35)):
        for _ in range(int(rng.integers(0, count + 1))):
            oh = int(height * rng.uniform(hmin, hmax))
            ow = max(2, int(oh * aspect * rng.uniform(0.8, 1.2)))
            y1 = int(rng.integers(horizon + oh // 2, height + 1))
            x0 = int(rng.integers(-ow // 2, width))
            sel = np.zeros_like(road)
            _rect(sel, ids, cls, y1 - oh, y1, x0, x0 + ow)
            tint = _COLOURS[cls] * rng.uniform(0.6, 1.3) if cls == CAR else _COLOURS[cls] + rng.normal(0, 20, 3)
            image[sel] = tint
            if cls == CAR:  # dark wheels make cars more than red boxes
                image[sel & (yy >= y1 - max(1, oh // 4))] = (20, 20, 20)
    image *= rng.uniform(0.7, 1.2)  # global illumination
    image += rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), ids


@DATASETS.register("synthetic", source="built-in procedural street scenes")
class SyntheticScenes(SegmentationDataset):
    """Built-in scenes; ``root`` is unused (nothing is read from disk)."""

    CLASSES = ("sky", "building", "road", "tree", "car", "person")
    PALETTE = ((110, 160, 220), (150, 90, 70), (128, 64, 128), (50, 130, 50), (180, 40, 40), (230, 190, 150))
    LAYOUT = "nothing: scenes are generated in memory"

    def __init__(
        self,
        root: str | Path = "",
        split: str = "train",
        transforms: Optional[JointTransform] = None,
        on_error: str = "raise",
        size: tuple[int, int] | list[int] = (96, 128),
        num_images: Optional[dict[str, int]] = None,
        seed: int = 0,
    ) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.counts = {"train": 200, "val": 50, "test": 20, **(num_images or {})}
        self.seed = seed
        super().__init__(root, split, transforms, on_error)

    def find_samples(self, root: Path, split: str) -> list[Sample]:
        if split not in _SPLIT_IDS:
            raise DataError(f"data split '{split}': synthetic has {', '.join(_SPLIT_IDS)}")
        return [Sample(Path(split, f"{i:04d}.png"), Path(split, f"{i:04d}_mask.png")) for i in range(self.counts[split])]

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        return render_scene(rng, *self.size)

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self._render(index)[0], mode="RGB")

    def load_mask(self, index: int) -> np.ndarray:
        return self._render(index)[1]

    def load_pair(self, index: int) -> tuple[Image.Image, np.ndarray]:
        image, ids = self._render(index)
        return Image.fromarray(image, mode="RGB"), ids
