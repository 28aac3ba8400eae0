"""The dataset base class every loader shares.

A dataset is a list of (image file, mask file) pairs found in its official
on-disk layout, plus class metadata kept once as class attributes (``CLASSES``,
``PALETTE``, ``IGNORE_INDEX``) that metrics, visualisation and error messages
read. Subclasses only say where the files are (:meth:`find_samples`) and how a
mask file becomes class ids (:meth:`decode_mask`); loading, checking and the
joint transforms happen here, once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from semseg.errors import DataError
from semseg.loaders._download import Resource, fetch

logger = logging.getLogger(__name__)

JointTransform = Callable[[Image.Image, Image.Image], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Optional[Path]  # None where the split's masks are withheld (e.g. CamVid test)


class SegmentationDataset(Dataset):
    """(image, mask) pairs → (float image tensor 3×H×W, long mask tensor H×W)."""

    CLASSES: ClassVar[tuple[str, ...]] = ()
    PALETTE: ClassVar[tuple[tuple[int, int, int], ...]] = ()
    IGNORE_INDEX: ClassVar[int] = 255
    LAYOUT: ClassVar[str] = ""  # shown when the root does not look like the dataset
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    RESOURCES: ClassVar[tuple[Resource, ...]] = ()  # archives for scripted download, if the licence allows

    @classmethod
    def download(cls, root: str | Path) -> Path:
        """Fetch and unpack the dataset under ``root``; returns the path to use as ``data.root``."""
        if not cls.RESOURCES:
            raise DataError(f"{cls.__name__} has no scripted download (registration required); see its doc/*.md")
        return fetch(cls.RESOURCES, root)

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Optional[JointTransform] = None,
        on_error: str = "raise",
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.on_error = on_error
        self.skipped = 0
        self.samples = self.find_samples(self.root, split)
        if not self.samples:
            raise DataError(f"{self.root}: split '{split}' of {type(self).__name__} holds no images")

    # ------------------------------------------------------------------ subclass API
    def find_samples(self, root: Path, split: str) -> list[Sample]:
        raise NotImplementedError

    def decode_mask(self, mask: Image.Image, path: Path) -> np.ndarray:
        """Mask file contents → H×W uint8 class ids, ignored pixels = ``IGNORE_INDEX``."""
        raise NotImplementedError

    def read_mask(self, path: Path) -> np.ndarray:
        """Mask file → class ids; override for masks that are not images (e.g. SBD's ``.mat``)."""
        return self.decode_mask(_open(path), path)

    # ------------------------------------------------------------------ shared
    @property
    def num_classes(self) -> int:
        return len(self.CLASSES)

    @property
    def has_masks(self) -> bool:
        return all(s.mask is not None for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        path = self.samples[index].image
        return _open(path).convert("RGB")  # greyscale/RGBA/palette images become RGB

    def load_mask(self, index: int) -> np.ndarray:
        """Class ids of sample ``index`` (checked to be in range), H×W uint8."""
        path = self.samples[index].mask
        if path is None:
            raise DataError(f"{self.samples[index].image}: split '{self.split}' has no masks")
        ids = self.read_mask(path)
        valid = (ids < self.num_classes) | (ids == self.IGNORE_INDEX)
        if not valid.all():
            bad = sorted(set(np.unique(ids[~valid]).tolist()))[:5]
            raise DataError(
                f"{path}: label values {bad} are outside 0..{self.num_classes - 1} and not the ignore value"
            )
        return ids

    def load_pair(self, index: int) -> tuple[Image.Image, Image.Image]:
        """Image and mask as PIL images of the same size (mask all-ignore when withheld)."""
        image = self.load_image(index)
        if self.samples[index].mask is None:
            return image, Image.new("L", image.size, self.IGNORE_INDEX)
        ids = self.load_mask(index)
        if ids.shape != (image.height, image.width):
            raise DataError(
                f"{self.samples[index].mask}: mask is {ids.shape[1]}×{ids.shape[0]} but its image is "
                f"{image.width}×{image.height}"
            )
        return image, Image.fromarray(ids, mode="L")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            image, mask = self.load_pair(index)
        except DataError as exc:
            if self.on_error != "skip" or len(self) < 2:
                raise
            self.skipped += 1
            logger.warning("skipping sample %d: %s", index, exc)
            return self[(index + 1) % len(self)]
        if self.transforms is None:
            return _to_tensors(image, mask)
        return self.transforms(image, mask)


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decode now, so a truncated file fails here with its name
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    return image


def _to_tensors(image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return img, torch.from_numpy(np.asarray(mask, dtype=np.uint8).astype(np.int64))


def pairs_by_name(image_dir: Path, mask_dir: Optional[Path], image_suffix: str, mask_suffix: str) -> list[Sample]:
    """Pair ``image_dir/<stem><image_suffix>`` with ``mask_dir/<stem><mask_suffix>``.

    A missing mask dir means masks are withheld for this split; a missing single
    mask while others exist is an error naming the image.
    """
    images = sorted(p for p in image_dir.iterdir() if p.name.endswith(image_suffix))
    if mask_dir is None or not mask_dir.is_dir():
        return [Sample(p, None) for p in images]
    samples = []
    for image in images:
        mask = mask_dir / (image.name[: -len(image_suffix)] + mask_suffix)
        if not mask.is_file():
            raise DataError(f"{image}: no mask at {mask}")
        samples.append(Sample(image, mask))
    return samples
