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
from torch.utils.data import Dataset, get_worker_info

from semseg.errors import DataError
from semseg.loaders._download import Resource, fetch

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}  # masks whose header gives the size
_SKIP_SLOTS = 257  # the main process + up to 256 DataLoader workers (more would share slots: counts may race)

# (RGB image, H×W uint8 class ids) → tensors. The mask stays the array it was decoded to: wrapping
# it back into a PIL image only for the first transform to unwrap it again cost ~0.5 ms a sample.
JointTransform = Callable[[Image.Image, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


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
        self.samples = self.find_samples(self.root, split)
        if not self.samples:
            raise DataError(f"{self.root}: split '{split}' of {type(self).__name__} holds no images")
        # Skips happen in DataLoader worker processes, whose copies of this object the main process
        # never sees: count them in shared memory, one slot per process (slot 0: the main process,
        # worker w: slot w + 1), so each slot has a single writer and needs no lock.
        self._skips = torch.zeros(_SKIP_SLOTS, dtype=torch.int64).share_memory_() if on_error == "skip" else None

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
    def skipped(self) -> int:
        """Samples skipped so far under ``on_error="skip"``, by this process and its loader workers."""
        return int(self._skips.sum()) if self._skips is not None else 0

    @property
    def has_masks(self) -> bool:
        return all(s.mask is not None for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        path = self.samples[index].image
        return to_rgb(_open(path), path)

    def load_mask(self, index: int) -> np.ndarray:
        """Class ids of sample ``index`` (checked to be in range), H×W uint8."""
        path = self.samples[index].mask
        if path is None:
            raise DataError(f"{self.samples[index].image}: split '{self.split}' has no masks")
        return check_label_range(self.read_mask(path), self.num_classes, self.IGNORE_INDEX, path)

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) of image ``index`` from its file header, without decoding it (cheap for a whole split)."""
        if type(self).load_image is not SegmentationDataset.load_image:  # generated in memory (synthetic)
            return self.load_image(index).size
        return _header_size(self.samples[index].image)

    def mask_size(self, index: int) -> tuple[int, int]:
        """(width, height) of mask ``index``: from the header of an image file, else by reading it (SBD's ``.mat``)."""
        path = self.samples[index].mask
        if path is None:
            raise DataError(f"{self.samples[index].image}: split '{self.split}' has no masks")
        if type(self).load_mask is not SegmentationDataset.load_mask or path.suffix.lower() not in _IMAGE_SUFFIXES:
            height, width = self.load_mask(index).shape
            return width, height
        return _header_size(path)

    def checked_mask(self, index: int) -> np.ndarray:
        """Class ids of sample ``index``, or the :class:`DataError` training would raise for it (unreadable, out
        of range, not its image's size), found without decoding the image (class counts, ``python -m semseg.loaders``)."""
        ids = self.load_mask(index)
        width, height = self.image_size(index)
        if ids.shape != (height, width):
            raise DataError(f"{self.samples[index].mask}: mask is {ids.shape[1]}×{ids.shape[0]} but its image is {width}×{height}")
        return ids

    def load_pair(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """RGB PIL image and H×W uint8 class ids of the same size (all-ignore when withheld)."""
        image = self.load_image(index)
        if self.samples[index].mask is None:
            return image, np.full((image.height, image.width), self.IGNORE_INDEX, np.uint8)
        ids = self.load_mask(index)
        if ids.shape != (image.height, image.width):
            raise DataError(
                f"{self.samples[index].mask}: mask is {ids.shape[1]}×{ids.shape[0]} but its image is "
                f"{image.width}×{image.height}"
            )
        return image, ids

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load_pair(index) if self._skips is None else self._load_pair_skipping(index)
        if self.transforms is None:
            return _to_tensors(image, mask)
        return self.transforms(image, mask)

    def _load_pair_skipping(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """``on_error="skip"``: a sample that fails to load is logged, counted and replaced by the next one."""
        for step in range(len(self)):
            i = (index + step) % len(self)
            try:
                return self.load_pair(i)
            except DataError as exc:
                worker = get_worker_info()
                self._skips[(worker.id + 1 if worker is not None else 0) % _SKIP_SLOTS] += 1
                logger.warning("skipping sample %d (data.on_error: skip): %s", i, exc)
        raise DataError(
            f"{self.root}: none of the {len(self)} samples of split '{self.split}' could be read (see the warnings)"
        )


def check_label_range(ids: np.ndarray, num_classes: int, ignore_index: int, path: Path) -> np.ndarray:
    """``ids`` as uint8, or a :class:`DataError` naming ``path`` and the values that are no class and not ignore.

    Cheap on the common path: one ``max`` when no pixel is ignored; with ``ignore_index == 255``
    one more pass where 255 wraps to 0 (``ids + 1`` in uint8), so valid masks have max ≤ num_classes.
    ``np.unique`` runs only to name the bad values.
    """
    if ids.dtype != np.uint8:
        lo, hi = (int(ids.min(initial=0)), int(ids.max(initial=0))) if ids.size else (0, 0)
        if lo < 0 or hi > 255:
            bad = np.unique(ids[(ids < 0) | (ids > 255)])[:5].tolist()
            raise DataError(f"{path}: label values {bad} are outside 0..{num_classes - 1} and not the ignore value")
        ids = ids.astype(np.uint8)
    hi = int(ids.max(initial=0))
    if hi < num_classes:
        return ids
    if ignore_index == 255 and int((ids + np.uint8(1)).max(initial=0)) <= num_classes:
        return ids
    valid = (ids < num_classes) | (ids == ignore_index)
    if not valid.all():
        bad = np.unique(ids[~valid])[:5].tolist()
        raise DataError(f"{path}: label values {bad} are outside 0..{num_classes - 1} and not the ignore value")
    return ids


def to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """Any image as 3-channel RGB: greyscale, RGBA, palette and CMYK are converted, 16-bit scaled to 8.

    (``Image.convert`` would clip 16-bit greyscale to 255, turning most of it white.)
    """
    if image.mode == "RGB":
        return image
    try:
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            grey = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
            image = Image.fromarray(grey.astype(np.uint8), mode="L")
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot convert a mode {image.mode} image to RGB ({exc})") from None


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decode now, so a truncated file fails here with its name
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    return image


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def _to_tensors(image: Image.Image, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return img, torch.from_numpy(mask.astype(np.int64))


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
