"""Mapillary Vistas (Neuhold et al., ICCV 2017), versions 1.2 and 2.0 of the labels.

25,000 street-level images from around the world (18,000 training, 2,000
validation, 5,000 testing with withheld labels), at their native, varying
resolutions. The release ships both label versions side by side: v1.2 with 66
classes and v2.0 with 124. Each version's class list — names, colours and
whether a class is evaluated — lives in the dataset's own ``config_<version>.json``,
and the label PNGs hold indices into that list, so the list is read from there
rather than copied here: ``CLASSES``, ``PALETTE`` and ``num_classes`` are set
per instance, from the version the config asks for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from semseg.errors import ConfigError, DataError
from semseg.loaders._base import JointTransform, Sample, SegmentationDataset, pairs_by_name
from semseg.registry import DATASETS

VERSIONS = ("v1.2", "v2.0")
# Our split names → the release's folder names.
SPLIT_DIRS = {"train": "training", "val": "validation", "test": "testing"}


def read_config(path: Path) -> list[dict[str, Any]]:
    """The ``labels`` list of a Vistas config json, checked for the keys the loader uses."""
    if not path.is_file():
        raise DataError(f"{path}: Mapillary Vistas config not found (it sits at the dataset root)")
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    except (KeyError, TypeError):
        raise DataError(f"{path}: no 'labels' list") from None
    if not isinstance(labels, list) or not 0 < len(labels) <= 256:
        raise DataError(f"{path}: 'labels' must be a list of 1 to 256 classes (label PNGs are 8-bit)")
    for i, label in enumerate(labels):
        for key in ("name", "color"):
            if not isinstance(label, dict) or key not in label:
                raise DataError(f"{path}: labels[{i}] has no '{key}'")
    return labels


def class_table(labels: list[dict[str, Any]]) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...], np.ndarray]:
    """(class names, colours, 256-entry lookup label index → class id) for the evaluated labels.

    Labels with ``evaluate: false`` (v1.2: only "Unlabeled") map to the ignore index, as the
    official benchmark leaves them out; the rest are renumbered 0..N-1 in config order. Names
    are the ``readable`` ones, except where two labels share a readable name (the unique
    ``name`` field is used for those, so per-class tables stay unambiguous).
    """
    kept = [(i, label) for i, label in enumerate(labels) if label.get("evaluate", True)]
    readable = [str(label.get("readable", label["name"])) for _, label in kept]
    names = tuple(
        r if readable.count(r) == 1 else str(label["name"]) for r, (_, label) in zip(readable, kept)
    )
    palette = tuple(tuple(int(c) for c in label["color"][:3]) for _, label in kept)
    lut = np.full(256, 255, dtype=np.uint8)
    for new_id, (index, _) in enumerate(kept):
        lut[index] = new_id
    return names, palette, lut  # type: ignore[return-value]


@DATASETS.register("mapillary", source="Neuhold et al. 2017, Mapillary Vistas (v1.2: 66 classes, v2.0: 124)")
class MapillaryVistas(SegmentationDataset):
    """Mapillary Vistas; ``version`` picks the label set (``data.params.version``)."""

    # Set per instance from config_<version>.json (see the module docstring); empty on the class.
    CLASSES: tuple[str, ...] = ()
    PALETTE: tuple[tuple[int, int, int], ...] = ()
    LAYOUT = (
        "config_<version>.json, {training,validation,testing}/images/*.jpg and "
        "{training,validation}/<version>/labels/*.png (8-bit label indices)"
    )

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Optional[JointTransform] = None,
        on_error: str = "raise",
        version: str = "v1.2",
    ) -> None:
        if version not in VERSIONS:
            raise ConfigError(
                f"data.params.version: '{version}' is not a Mapillary Vistas version ({', '.join(VERSIONS)})"
            )
        self.version = version
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: Mapillary Vistas root not found (expected {self.LAYOUT})")
        self.config_path = root / f"config_{version}.json"
        self.labels = read_config(self.config_path)
        self.CLASSES, self.PALETTE, self._lut = class_table(self.labels)
        super().__init__(root, split, transforms, on_error)

    def find_samples(self, root: Path, split: str) -> list[Sample]:
        if split not in SPLIT_DIRS:
            raise DataError(f"data split '{split}': Mapillary Vistas has {', '.join(SPLIT_DIRS)}")
        folder = root / SPLIT_DIRS[split]
        image_dir = folder / "images"
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: folder not found; expected the Mapillary Vistas layout: {self.LAYOUT}")
        label_dir = folder / self.version / "labels"
        if split != "test" and not label_dir.is_dir():
            raise DataError(f"{label_dir}: {self.version} label folder not found; expected {self.LAYOUT}")
        # testing/ has no labels (withheld for the benchmark server): its masks come back all-ignore
        return pairs_by_name(image_dir, label_dir if split != "test" else None, ".jpg", ".png")

    def decode_mask(self, mask: Image.Image, path: Path) -> np.ndarray:
        if mask.mode not in ("P", "L", "I", "I;16"):
            raise DataError(f"{path}: expected an 8-bit label-index PNG (mode P), got mode {mask.mode}")
        index = np.asarray(mask)
        if index.max(initial=0) >= len(self.labels):
            bad = sorted(set(np.unique(index[index >= len(self.labels)]).tolist()))[:5]
            raise DataError(
                f"{path}: label values {bad} are outside 0..{len(self.labels) - 1} of {self.config_path.name}"
            )
        return self._lut[index]
