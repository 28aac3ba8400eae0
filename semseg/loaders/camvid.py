"""CamVid (Brostow et al., PRL 2009): the SegNet benchmark layout and the original release.

``camvid`` reads the 11-class version used by SegNet, ENet, LinkNet and
FC-DenseNet: 367 train, 101 val, 233 test frames at 480×360. Masks hold ids
0–10; 11 is void and maps to the ignore index, so it is neither a class in the
metrics nor in the loss (pytorch-semseg counted it as a 12th class).

``camvid32`` reads the original release the SegNet version was made from
(960×720 frames, RGB-coded labels in 32 classes) and maps it on the fly to the
same 11 classes and the same split, so results compare with ``camvid``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from semseg.errors import DataError
from semseg.loaders._base import JointTransform, Sample, SegmentationDataset, pairs_by_name
from semseg.loaders._download import Resource, fetch
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

    def find_samples(self, root: Path, split: str) -> list[Sample]:
        if split not in self.SPLITS:
            raise DataError(f"data split '{split}': CamVid has {', '.join(self.SPLITS)}")
        if not root.is_dir():
            raise DataError(f"{root}: CamVid root not found (expected {self.LAYOUT})")
        image_dir = root / split
        if not image_dir.is_dir():
            raise DataError(f"{root}: no '{split}/' folder; expected the SegNet CamVid layout: {self.LAYOUT}")
        mask_dir = root / f"{split}annot"
        if split != "test" and not mask_dir.is_dir():  # only the test masks may be withheld
            raise DataError(f"{root}: no '{mask_dir.name}/' folder; expected the SegNet CamVid layout: {self.LAYOUT}")
        return pairs_by_name(image_dir, mask_dir, ".png", ".png")

    def decode_mask(self, mask: Image.Image, path: Path) -> np.ndarray:
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise DataError(f"{path}: expected a single-channel id mask, got mode {mask.mode}")
        ids = np.asarray(mask)
        # One max check per mask: SegNet's files hold 0..10 and void (11); the ignore value is let through.
        if int(ids.max(initial=0)) > VOID_ID or (ids.dtype.kind == "i" and int(ids.min(initial=0)) < 0):
            bad = np.unique(ids[((ids > VOID_ID) | (ids < 0)) & (ids != self.IGNORE_INDEX)])[:5].tolist()
            if bad:
                raise DataError(
                    f"{path}: label values {bad} are outside 0..10 and not void (11) or ignore ({self.IGNORE_INDEX})"
                )
        return np.where(ids == VOID_ID, self.IGNORE_INDEX, ids).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# The original 32-class release (Brostow et al. 2009), read as the same 11 benchmark classes.

# label_colors.txt of the release: the 32 classes and their RGB codes, in the file's order.
COLORS_32: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("Animal", (64, 128, 64)), ("Archway", (192, 0, 128)), ("Bicyclist", (0, 128, 192)),
    ("Bridge", (0, 128, 64)), ("Building", (128, 0, 0)), ("Car", (64, 0, 128)),
    ("CartLuggagePram", (64, 0, 192)), ("Child", (192, 128, 64)), ("Column_Pole", (192, 192, 128)),
    ("Fence", (64, 64, 128)), ("LaneMkgsDriv", (128, 0, 192)), ("LaneMkgsNonDriv", (192, 0, 64)),
    ("Misc_Text", (128, 128, 64)), ("MotorcycleScooter", (192, 0, 192)), ("OtherMoving", (128, 64, 64)),
    ("ParkingBlock", (64, 192, 128)), ("Pedestrian", (64, 64, 0)), ("Road", (128, 64, 128)),
    ("RoadShoulder", (128, 128, 192)), ("Sidewalk", (0, 0, 192)), ("SignSymbol", (192, 128, 128)),
    ("Sky", (128, 128, 128)), ("SUVPickupTruck", (64, 128, 192)), ("TrafficCone", (0, 0, 64)),
    ("TrafficLight", (0, 64, 64)), ("Train", (192, 64, 128)), ("Tree", (128, 128, 0)),
    ("Truck_Bus", (192, 128, 192)), ("Tunnel", (64, 0, 64)), ("VegetationMisc", (192, 192, 0)),
    ("Void", (0, 0, 0)), ("Wall", (64, 192, 0)),
)  # fmt: skip

# The standard grouping of the 32 classes into the 11 of the benchmark (the class set of Sturgess
# et al., BMVC 2009, that SegNet uses; the same grouping ships with MATLAB's CamVid example):
# 11-class name → its 32-class names. Void is the only class left out (→ ignore).
GROUPS_32_TO_11: dict[str, tuple[str, ...]] = {
    "sky": ("Sky",),
    "building": ("Building", "Wall", "Bridge", "Tunnel", "Archway"),
    "pole": ("Column_Pole", "TrafficCone"),
    "road": ("Road", "LaneMkgsDriv", "LaneMkgsNonDriv"),
    "pavement": ("Sidewalk", "ParkingBlock", "RoadShoulder"),
    "tree": ("Tree", "VegetationMisc"),
    "sign_symbol": ("SignSymbol", "Misc_Text", "TrafficLight"),
    "fence": ("Fence",),
    "car": ("Car", "SUVPickupTruck", "Truck_Bus", "Train", "OtherMoving"),
    "pedestrian": ("Pedestrian", "Child", "CartLuggagePram", "Animal"),
    "bicyclist": ("Bicyclist", "MotorcycleScooter"),
}

# SegNet's 367/101/233 split as a rule on <sequence>_<frame> names: it cuts each sequence into
# contiguous frame ranges, so the rule reproduces SegNet's train.txt/val.txt/test.txt exactly
# (checked against the lists in tests) without shipping 701 names.
_SEQUENCES = ("0001TP", "0006R0", "0016E5", "Seq05VD")
_NAME = re.compile(r"^(0001TP|0006R0|0016E5|Seq05VD)_f?(\d+)$")
_BASE = "http://web4.cs.ucl.ac.uk/staff/g.brostow/MotionSegRecData"


def _rgb_key(rgb: tuple[int, int, int] | np.ndarray) -> int | np.ndarray:
    r, g, b = (np.asarray(rgb)[..., i].astype(np.int64) for i in range(3))
    return (r << 16) | (g << 8) | b


def _build_colour_lut(classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted packed RGB keys, 11-class id per key; 255 for Void)."""
    to_id = {name: classes.index(group) for group, names in GROUPS_32_TO_11.items() for name in names}
    keys = np.array([_rgb_key(rgb) for _, rgb in COLORS_32], dtype=np.int64)
    ids = np.array([to_id.get(name, 255) for name, _ in COLORS_32], dtype=np.uint8)
    order = np.argsort(keys)
    return keys[order], ids[order]


def segnet_split(stem: str) -> Optional[str]:
    """SegNet's split of a frame name such as ``0016E5_07959``; None if it is not a CamVid frame."""
    match = _NAME.match(stem)
    if match is None:
        return None
    sequence, frame = match.group(1), int(match.group(2))
    if sequence == "Seq05VD" or (sequence == "0001TP" and frame >= 8550):
        return "test"
    if sequence == "0016E5" and 7959 <= frame <= 8159:
        return "val"
    return "train"


@DATASETS.register("camvid32", source="Brostow et al. 2009 (original 32-class release); SegNet split and grouping")
class CamVid32(CamVid):
    """The original CamVid release (960×720, RGB-coded 32-class labels) mapped to the 11 classes.

    Use it to train the 11-class benchmark at full resolution or with your own splits; the
    classes, palette and split equal :class:`CamVid`'s, so models and metrics carry over.
    """

    LAYOUT = (
        "701_StillsRaw_full/<seq>_<frame>.png and LabeledApproved_full/<seq>_<frame>_L.png "
        "(RGB colour-coded 32-class labels)"
    )
    RESOURCES = (
        # The Cambridge/UCL pages publish no checksums for these archives, so none is checked.
        Resource(f"{_BASE}/files/701_StillsRaw_full.zip", md5=None),  # unpacks to 701_StillsRaw_full/
        Resource(f"{_BASE}/data/LabeledApproved_full.zip", md5=None, extract_to="LabeledApproved_full"),
    )

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Optional[JointTransform] = None,
        on_error: str = "raise",
        split_dir: Optional[str] = None,
    ) -> None:
        self.split_dir = split_dir
        self._keys, self._ids = _build_colour_lut(self.CLASSES)
        super().__init__(root, split, transforms, on_error)

    @classmethod
    def download(cls, root: str | Path) -> Path:
        """Fetch both archives into ``root``; ``root`` is then the ``data.root`` to use."""
        return fetch(cls.RESOURCES, root)

    def find_samples(self, root: Path, split: str) -> list[Sample]:
        if split not in self.SPLITS:
            raise DataError(f"data split '{split}': CamVid has {', '.join(self.SPLITS)}")
        if not root.is_dir():
            raise DataError(f"{root}: CamVid root not found (expected {self.LAYOUT})")
        image_dir, label_dir = root / "701_StillsRaw_full", root / "LabeledApproved_full"
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise DataError(
                    f"{root}: no '{folder.name}/' folder; expected the original CamVid release: {self.LAYOUT}"
                )
        stems = self._listed_stems(root, split) if self.split_dir is not None else self._rule_stems(image_dir, split)
        samples = []
        for stem in stems:
            image, mask = image_dir / f"{stem}.png", label_dir / f"{stem}_L.png"
            if not image.is_file():
                raise DataError(f"{image}: listed in split '{split}' but not found")
            if not mask.is_file():
                raise DataError(f"{image}: no mask at {mask}")
            samples.append(Sample(image, mask))
        return samples

    def _rule_stems(self, image_dir: Path, split: str) -> list[str]:
        stems = []
        for path in sorted(image_dir.glob("*.png")):
            which = segnet_split(path.stem)
            if which is None:
                raise DataError(f"{path}: not a CamVid frame name (<{'|'.join(_SEQUENCES)}>_<frame>.png)")
            if which == split:
                stems.append(path.stem)
        return stems

    def _listed_stems(self, root: Path, split: str) -> list[str]:
        """Frame names from SegNet-style ``<split_dir>/<split>.txt`` (first column; only its file name counts)."""
        list_file = root / self.split_dir / f"{split}.txt"  # an absolute split_dir replaces root
        if not list_file.is_file():
            raise DataError(f"{list_file}: split file not found (data.params.split_dir)")
        lines = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        return [Path(line.replace("\\", "/")).stem for line in lines]

    def decode_mask(self, mask: Image.Image, path: Path) -> np.ndarray:
        if mask.mode not in ("RGB", "RGBA", "P"):
            raise DataError(f"{path}: expected an RGB colour-coded label image, got mode {mask.mode}")
        rgb = np.asarray(mask.convert("RGB"))
        keys = _rgb_key(rgb)
        pos = np.clip(np.searchsorted(self._keys, keys), 0, len(self._keys) - 1)
        known = self._keys[pos] == keys
        if not known.all():
            y, x = np.argwhere(~known)[0]
            colour = tuple(int(v) for v in rgb[y, x])
            raise DataError(f"{path}: colour {colour} at (x={x}, y={y}) is not one of the 32 CamVid label colours")
        return self._ids[pos]
