"""CamVid (Brostow et al., PRL 2009) in the SegNet benchmark layout.

The 11-class version used by SegNet, ENet, LinkNet and FC-DenseNet: 367 train,
101 val, 233 test frames at 480×360. Masks hold ids 0–10; 11 is void and maps
to the ignore index, so it is neither a class in the metrics nor in the loss
(pytorch-semseg counted it as a 12th class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from semseg.errors import DataError
from semseg.loaders._base import Sample, SegmentationDataset, pairs_by_name
from semseg.registry import DATASETS

VOID_ID = 11


@DATASETS.register("camvid", source="Brostow et al. 2009; SegNet split (Badrinarayanan et al. 2017)")
class CamVid(SegmentationDataset):
    CLASSES = (
        "sky", "building", "pole", "road", "pavement", "tree",
        "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
    )  # fmt: skip
    # The SegNet tutorial's colours (Models/Inference/compute_bn_statistics.py palette).
    PALETTE = (
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    )  # fmt: skip
    LAYOUT = "train/ trainannot/ val/ valannot/ test/ [testannot/] holding PNGs with matching names"
    SPLITS = ("train", "val", "test")

    def find_samples(self, root: Path, split: str) -> list[Sample]:
        if split not in self.SPLITS:
            raise DataError(f"data split '{split}': CamVid has {', '.join(self.SPLITS)}")
        if not root.is_dir():
            raise DataError(f"{root}: CamVid root not found (expected {self.LAYOUT})")
        image_dir = root / split
        if not image_dir.is_dir():
            raise DataError(f"{root}: no '{split}/' folder; expected the SegNet CamVid layout: {self.LAYOUT}")
        return pairs_by_name(image_dir, root / f"{split}annot", ".png", ".png")

    def decode_mask(self, mask: Image.Image, path: Path) -> np.ndarray:
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise DataError(f"{path}: expected a single-channel id mask, got mode {mask.mode}")
        ids = np.asarray(mask, dtype=np.int64)
        if ids.max(initial=0) > 255:  # 16-bit masks would wrap silently in uint8
            raise DataError(f"{path}: label value {int(ids.max())} is outside 0..10 and not void (11)")
        return np.where(ids == VOID_ID, self.IGNORE_INDEX, ids).astype(np.uint8)
