"""ADE20K SceneParsing (Zhou et al., "Scene Parsing through ADE20K Dataset", CVPR 2017).

The MIT Scene Parsing Benchmark release (``ADEChallengeData2016``): 20,210
training and 2,000 validation images of every kind of scene, annotated with the
150 most frequent ADE20K categories. Annotations are 8-bit greyscale PNGs whose
value 0 means "other objects" (not one of the 150, excluded from the benchmark)
and 1..150 the classes; we shift them to 0..149 and ignore 0, the same reduction
as mmseg's ``reduce_zero_label`` but applied on the fly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from semseg.errors import DataError
from semseg.loaders._base import Sample, SegmentationDataset, pairs_by_name
from semseg.loaders._download import Resource
from semseg.registry import DATASETS

ARCHIVE_DIR = "ADEChallengeData2016"  # the zip's top-level folder
NUM_CLASSES = 150
# Our split names → the release's folder names; the folder names are accepted as split names too.
_FOLDERS = {"train": "training", "val": "validation"}

# raw annotation value → class id: 0 ("other") → ignore, 1..150 → 0..149; 151..255 never occur.
RAW_TO_ID = np.full(256, 255, dtype=np.uint8)
RAW_TO_ID[1 : NUM_CLASSES + 1] = np.arange(NUM_CLASSES)
RAW_TO_ID.flags.writeable = False


@DATASETS.register("ade20k", source="Zhou et al., CVPR 2017; MIT Scene Parsing Benchmark (ADEChallengeData2016)")
class ADE20K(SegmentationDataset):
    """ADE20K SceneParsing, 150 classes; ``data.root`` is the unpacked ``ADEChallengeData2016`` folder."""

    # objectInfo150.txt's entries in id order, by the short names mmseg's ADE20KDataset uses (mostly the first synonym).
    CLASSES = (
        "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
        "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
        "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair",
        "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box",
        "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
        "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
        "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
        "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
        "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
        "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
        "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
        "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
        "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
        "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
        "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
        "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
    )  # fmt: skip
    # The benchmark's standard colours (sceneparsing color150, as in mmseg's ADE20KDataset), in id order.
    PALETTE = (
        (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
        (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
        (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
        (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
        (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
        (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
        (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
        (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
        (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
        (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
        (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
        (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
        (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
        (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
        (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
        (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
        (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
        (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
        (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
        (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
        (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
        (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
        (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
        (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
        (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
    )  # fmt: skip
    LAYOUT = (
        "images/{training,validation}/ADE_{train,val}_*.jpg and annotations/{training,validation}/ADE_*.png "
        f"(the unpacked {ARCHIVE_DIR} folder)"
    )
    SPLITS = ("train", "val")
    # MIT publishes no checksum. This md5 is the one used by the ADE20K reader proposed for torchvision
    # and by several other public loaders; gluoncv's prepare script pins the same zip by
    # sha1 219e1696abb36c8ba3a3afe7fb2f4b4606a897c7.
    RESOURCES = (
        Resource(
            "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip", "7328b3957e407ddae1d3cbf487f149ef"
        ),
    )

    @classmethod
    def download(cls, root: str | Path) -> Path:
        """Fetch and unpack the (about 1 GB) zip under ``root``; returns ``<root>/ADEChallengeData2016``."""
        return super().download(root) / ARCHIVE_DIR

    def find_samples(self, root: Path, split: str) -> list[Sample]:
        folder = _FOLDERS.get(split, split)
        if folder not in _FOLDERS.values():
            raise DataError(f"data split '{split}': ADE20K has train, val (or training, validation)")
        if not root.is_dir():
            raise DataError(f"{root}: ADE20K root not found (expected {self.LAYOUT})")
        if not (root / "images").is_dir() and (root / ARCHIVE_DIR / "images").is_dir():
            raise DataError(f"{root}: no images/ folder; set data.root to {root / ARCHIVE_DIR}")
        image_dir, mask_dir = root / "images" / folder, root / "annotations" / folder
        for needed in (image_dir, mask_dir):
            if not needed.is_dir():
                raise DataError(f"{needed}: folder not found; expected the ADE20K layout {self.LAYOUT}")
        return pairs_by_name(image_dir, mask_dir, ".jpg", ".png")

    def decode_mask(self, mask: Image.Image, path: Path) -> np.ndarray:
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise DataError(f"{path}: expected a single-channel id mask, got mode {mask.mode}")
        raw = np.asarray(mask, dtype=np.int64)
        bad = (raw < 0) | (raw > NUM_CLASSES)
        if bad.any():
            values = sorted(set(np.unique(raw[bad]).tolist()))[:5]
            raise DataError(f"{path}: label values {values} are outside 0..150 (0 = other, ignored)")
        return RAW_TO_ID[raw]
