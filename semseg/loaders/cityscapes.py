"""Cityscapes (Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016).

5,000 finely annotated frames from 50 cities (2,975 train / 500 val / 1,525
test) at 2048×1024, plus 20,000 coarsely annotated extra frames. Masks are read
in the official ``*_labelIds.png`` form (34 label ids) and mapped to the 19
evaluation classes ("trainIds") on the fly with the official table of
cityscapesScripts ``helpers/labels.py``; every other id is ignored. No
conversion step is needed, unlike mmseg, which expects pre-generated
``*_labelTrainIds.png`` files; where those files exist they are read directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import numpy as np
from PIL import Image

from semseg.errors import ConfigError, DataError
from semseg.loaders._base import JointTransform, Sample, SegmentationDataset
from semseg.registry import DATASETS

IMAGE_SUFFIX = "_leftImg8bit.png"

# labelId → trainId for labelIds 0..33, copied as data from cityscapesScripts helpers/labels.py
# (column "trainId"); 255 = not one of the 19 evaluated classes (void, parking, rail track, guard rail,
# bridge, tunnel, polegroup, caravan, trailer). License plate has labelId -1 (255 as uint8) and is
# ignored too. tests/test_loaders_cityscapes.py checks all 256 entries against cityscapesscripts.
_TRAIN_ID_OF_LABEL_ID = (
    255, 255, 255, 255, 255, 255, 255,  # 0-6   unlabeled, ego vehicle, rectification border, out of roi,
                                        #       static, dynamic, ground
    0, 1, 255, 255,                     # 7-10  road, sidewalk, parking, rail track
    2, 3, 4, 255, 255, 255,             # 11-16 building, wall, fence, guard rail, bridge, tunnel
    5, 255, 6, 7,                       # 17-20 pole, polegroup, traffic light, traffic sign
    8, 9, 10, 11, 12,                   # 21-25 vegetation, terrain, sky, person, rider
    13, 14, 15, 255, 255,               # 26-30 car, truck, bus, caravan, trailer
    16, 17, 18,                         # 31-33 train, motorcycle, bicycle
)  # fmt: skip
NUM_LABEL_IDS = len(_TRAIN_ID_OF_LABEL_ID)  # 34: labelIds 0..33 are all an official file may hold
LICENSE_PLATE = 255  # labelId -1 written as uint8

# 256-entry lookup: any uint8 labelId → trainId (255 = ignore).
LABEL_TO_TRAIN_ID = np.full(256, 255, dtype=np.uint8)
LABEL_TO_TRAIN_ID[:NUM_LABEL_IDS] = _TRAIN_ID_OF_LABEL_ID
LABEL_TO_TRAIN_ID.flags.writeable = False

# Which label values may appear in a labelIds file; anything else means a wrong file (a colour or
# instance image, a mask from another dataset) and is reported rather than silently ignored.
_VALID_LABEL_ID = np.zeros(256, dtype=bool)
_VALID_LABEL_ID[:NUM_LABEL_IDS] = True
_VALID_LABEL_ID[LICENSE_PLATE] = True

_SPLITS = {"fine": ("train", "val", "test"), "coarse": ("train", "train_extra", "val")}
_GT_FOLDER = {"fine": "gtFine", "coarse": "gtCoarse"}
_GT_ARCHIVE = {"fine": "gtFine_trainvaltest.zip", "coarse": "gtCoarse.zip"}


@DATASETS.register("cityscapes", source="Cordts et al., CVPR 2016; labels from cityscapesScripts helpers/labels.py")
class Cityscapes(SegmentationDataset):
    """Cityscapes fine (default) or coarse annotations, 19 classes, labelIds → trainIds on the fly.

    ``annotations="coarse"`` trains on gtCoarse (splits train, train_extra, val),
    as the papers that pre-train on the 20k extra frames do. The fine ``test``
    split serves images only: the released test masks are placeholders (the labels
    are withheld for the evaluation server), so reading them would only give
    all-ignore masks; predictions for the benchmark come from ``test.py``.
    """

    CLASSES = (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle",
    )  # fmt: skip
    # The official label colours (labels.py "color") of the 19 trainIds, in trainId order.
    PALETTE = (
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    )  # fmt: skip
    LAYOUT = (
        "leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png and "
        "gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png (gtCoarse/… for coarse annotations)"
    )
    SPLITS = ("train", "val", "test", "train_extra")

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Optional[JointTransform] = None,
        on_error: str = "raise",
        annotations: Literal["fine", "coarse"] = "fine",
        use_train_ids: bool = True,
    ) -> None:
        """``use_train_ids=False`` ignores pre-generated ``*_labelTrainIds.png`` files (e.g. ones made
        with an edited labels.py) and always maps the labelIds with the official table."""
        if annotations not in _SPLITS:
            raise ConfigError(f"data.params.annotations: expected fine or coarse, got {annotations!r}")
        self.annotations = annotations
        self.use_train_ids = use_train_ids
        super().__init__(root, split, transforms, on_error)

    def find_samples(self, root: Path, split: str) -> list[Sample]:
        splits = _SPLITS[self.annotations]
        if split not in splits:
            raise DataError(f"data split '{split}': Cityscapes {self.annotations} annotations have {', '.join(splits)}")
        if not root.is_dir():
            raise DataError(f"{root}: Cityscapes root not found (expected {self.LAYOUT})")
        image_dir = root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: folder not found; expected the Cityscapes layout {self.LAYOUT}")
        images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if split == "test":  # released test masks are placeholders: images only
            return [Sample(image, None) for image in images]
        gt = _GT_FOLDER[self.annotations]
        mask_dir = root / gt / split
        if not mask_dir.is_dir():
            archive = _GT_ARCHIVE[self.annotations]
            raise DataError(f"{mask_dir}: annotation folder not found; unpack {archive} into {root}")
        return [Sample(image, self._mask_of(image, mask_dir / image.parent.name, gt)) for image in images]

    def _mask_of(self, image: Path, city_dir: Path, gt: str) -> Path:
        """The trainIds file when present (and allowed), else the official labelIds file."""
        stem = image.name[: -len(IMAGE_SUFFIX)]
        train_ids = city_dir / f"{stem}_{gt}_labelTrainIds.png"
        if self.use_train_ids and train_ids.is_file():
            return train_ids
        label_ids = city_dir / f"{stem}_{gt}_labelIds.png"
        if not label_ids.is_file():
            raise DataError(f"{image}: no mask at {label_ids}")
        return label_ids

    def decode_mask(self, mask: Image.Image, path: Path) -> np.ndarray:
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise DataError(f"{path}: expected a single-channel id mask, got mode {mask.mode}")
        ids = np.asarray(mask, dtype=np.int64)
        if path.name.endswith("_labelTrainIds.png"):
            out = (ids < 0) | (ids > 255)  # would wrap in uint8; the base class checks 0..18 / 255 after
            if out.any():
                raise DataError(f"{path}: label value {int(ids[out][0])} is outside 0..18 and not the ignore value")
            return ids.astype(np.uint8)
        bad = (ids < 0) | (ids > 255)
        bad[~bad] = ~_VALID_LABEL_ID[ids[~bad]]
        if bad.any():
            values = sorted(set(np.unique(ids[bad]).tolist()))[:5]
            raise DataError(f"{path}: label values {values} are not Cityscapes labelIds (0..33)")
        return LABEL_TO_TRAIN_ID[ids]
