"""PASCAL VOC 2012 segmentation (Everingham et al., IJCV 2010) and the SBD augmentation.

VOC 2012 annotates 2,913 images (1,464 train, 1,449 val) with 20 object classes
plus background, as palette PNGs whose index *is* the class id; index 255
marks object borders and "difficult" regions, which the benchmark does not
score, so it is the ignore index as it stands.

The Semantic Boundaries Dataset (Hariharan et al., "Semantic Contours from
Inverse Detectors", ICCV 2011) re-annotates 11,355 VOC 2011 images (8,498
train, 2,857 val) as MATLAB files. FCN (Long et al., CVPR 2015) trained on it,
and DeepLab made ``train_aug`` the standard training set: SBD train ∪ SBD val ∪
VOC train, minus every VOC val image so that validation stays clean (10,582
images). Where an image has a VOC annotation it is used; the rest come from SBD.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from semseg.errors import DataError
from semseg.loaders._base import JointTransform, Sample, SegmentationDataset
from semseg.loaders._download import Resource, fetch
from semseg.registry import DATASETS

VOC_DIR = Path("VOCdevkit", "VOC2012")  # where the VOC tar unpacks
SBD_DIR = Path("benchmark_RELEASE", "dataset")  # where the SBD tgz unpacks
_VOC_SPLITS = ("train", "val", "trainval")
_SBD_SPLITS = {"sbd_train": "train", "sbd_val": "val"}


def voc_colormap(n: int = 256) -> tuple[tuple[int, int, int], ...]:
    """The devkit's colour map (VOClabelcolormap.m): the bits of a class index, three at a time,
    fill R, G, B from their most significant bit down, so neighbouring ids get distant colours."""
    colours = []
    for index in range(n):
        r = g = b = 0
        c = index
        for bit in range(7, -1, -1):
            r |= (c & 1) << bit
            g |= ((c >> 1) & 1) << bit
            b |= ((c >> 2) & 1) << bit
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def read_list(path: Path) -> list[str]:
    """Image names of a split file, one per line (SBD's and VOC's lists have the same format)."""
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_sbd_mat(path: Path) -> np.ndarray:
    """Class ids of an SBD ``cls/*.mat`` file: the ``Segmentation`` field of its ``GTcls`` struct."""
    from scipy.io import loadmat  # imported here: only SBD needs it, and every loader module is imported eagerly
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (MatReadError, ValueError, TypeError, OSError) as exc:
        raise DataError(f"{path}: cannot read .mat file ({exc})") from None
    try:
        seg = np.asarray(mat["GTcls"]["Segmentation"][0, 0])
    except (KeyError, ValueError, IndexError, TypeError):
        raise DataError(f"{path}: no GTcls.Segmentation struct field (expected an SBD cls/*.mat file)") from None
    if seg.ndim != 2 or seg.dtype.kind not in "ui":
        raise DataError(f"{path}: GTcls.Segmentation is not a 2-D integer array ({seg.dtype}, shape {seg.shape})")
    if seg.size and (seg.min() < 0 or seg.max() > 255):  # would wrap silently in uint8
        bad = sorted(set(np.unique(seg[(seg < 0) | (seg > 255)]).tolist()))[:5]
        raise DataError(f"{path}: label values {bad} are outside 0..20 and not the ignore value")
    return seg.astype(np.uint8)


@DATASETS.register("voc", source="Everingham et al., IJCV 2010 (VOC2012); Hariharan et al., ICCV 2011 (SBD)")
class VOC(SegmentationDataset):
    """PASCAL VOC 2012 segmentation, optionally with SBD (splits ``sbd_train``, ``sbd_val``, ``train_aug``).

    ``data.root`` is the folder holding ``VOCdevkit/`` (where the VOC tar unpacks); ``VOCdevkit/``
    or ``VOC2012/`` itself are accepted too. ``sbd_root`` (``data.params``) locates SBD: the
    ``benchmark_RELEASE/`` folder or its ``dataset/`` subfolder; relative paths are taken from
    ``data.root``. By default it is ``benchmark_RELEASE/`` next to ``VOCdevkit/``, where the SBD
    tgz unpacks when both archives are downloaded into one folder.
    """

    CLASSES = (
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
        "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
        "train", "tvmonitor",
    )  # fmt: skip
    PALETTE = voc_colormap(21)
    LAYOUT = (
        "VOCdevkit/VOC2012/ holding JPEGImages/*.jpg, SegmentationClass/*.png (palette) and "
        "ImageSets/Segmentation/{train,val,trainval}.txt"
    )
    SBD_LAYOUT = "benchmark_RELEASE/dataset/ holding img/*.jpg, cls/*.mat and {train,val}.txt"
    SPLITS = (*_VOC_SPLITS, *_SBD_SPLITS, "train_aug")
    RESOURCES = (
        # torchvision's VOCSegmentation mirror and md5 (the Oxford host also serves it as
        # host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar).
        Resource("https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                 "6cd6e144f989b92b3379bac3b3de84fd"),
        # The SBD release (torchvision's SBDataset url and md5); unpacks to benchmark_RELEASE/.
        Resource("https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
                 "82b4d87ceb2ed10f6038a1cba92111cb"),
    )  # fmt: skip

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Optional[JointTransform] = None,
        on_error: str = "raise",
        sbd_root: Optional[str] = None,
    ) -> None:
        self.sbd_root = sbd_root
        super().__init__(root, split, transforms, on_error)

    @classmethod
    def download(cls, root: str | Path) -> Path:
        """Fetch VOC2012 trainval (~2 GB) and SBD (~1.4 GB) into ``root``, which is then ``data.root``
        (it holds ``VOCdevkit/`` and ``benchmark_RELEASE/``, the default SBD location)."""
        return fetch(cls.RESOURCES, root)

    # ------------------------------------------------------------------ locating the two datasets
    def voc_dir(self, root: Path) -> Path:
        """``VOC2012/`` for a root that holds ``VOCdevkit/``, holds ``VOC2012/``, or is ``VOC2012/``."""
        if not root.is_dir():
            raise DataError(f"{root}: VOC root not found (expected the folder holding {self.LAYOUT})")
        voc = _find_voc(root)
        if voc is None:
            raise DataError(
                f"{root}: neither holds VOCdevkit/VOC2012/ nor is VOC2012/ itself; expected data.root to hold {self.LAYOUT}"
            )
        for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            if not (voc / folder).is_dir():
                raise DataError(f"{voc / folder}: folder not found; expected {self.LAYOUT}")
        return voc

    def sbd_dir(self, root: Path) -> Path:
        """SBD's ``dataset/`` folder, from ``sbd_root`` or next to ``VOCdevkit/``."""
        if self.sbd_root is not None:
            given, where = root / self.sbd_root, "data.params.sbd_root"  # an absolute sbd_root replaces root
        else:
            given, where = _devkit_parent(root) / SBD_DIR.parent, "the default; set data.params.sbd_root"
        for candidate in (given / SBD_DIR.name, given):
            if (candidate / "cls").is_dir():
                if not (candidate / "img").is_dir():
                    raise DataError(f"{candidate / 'img'}: folder not found; expected {self.SBD_LAYOUT}")
                return candidate
        raise DataError(f"{given}: SBD not found ({where}); expected {self.SBD_LAYOUT}")

    # ------------------------------------------------------------------ samples
    def find_samples(self, root: Path, split: str) -> list[Sample]:
        if split not in self.SPLITS:
            raise DataError(f"data split '{split}': VOC has {', '.join(self.SPLITS)}")
        if split in _SBD_SPLITS:
            sbd = self.sbd_dir(root)
            return [_sbd_sample(sbd, name, split) for name in read_list(sbd / f"{_SBD_SPLITS[split]}.txt")]
        voc = self.voc_dir(root)
        lists = voc / "ImageSets" / "Segmentation"
        if split in _VOC_SPLITS:
            return [_voc_sample(voc, name, split) for name in read_list(lists / f"{split}.txt")]
        return self._train_aug(voc, self.sbd_dir(root))

    def _train_aug(self, voc: Path, sbd: Path) -> list[Sample]:
        """(SBD train ∪ SBD val ∪ VOC train) − VOC val, sorted by name; VOC masks where VOC has one.

        Only VOC train names can keep a VOC mask (VOC val is removed), and the SBD image of a
        name is the same VOC 2011 photograph, so each sample reads image and mask from one source.
        """
        lists = voc / "ImageSets" / "Segmentation"
        voc_train = set(read_list(lists / "train.txt"))
        voc_val = set(read_list(lists / "val.txt"))
        sbd_names = set(read_list(sbd / "train.txt")) | set(read_list(sbd / "val.txt"))
        names = sorted((sbd_names | voc_train) - voc_val)
        return [
            _voc_sample(voc, n, "train_aug") if n in voc_train else _sbd_sample(sbd, n, "train_aug") for n in names
        ]

    # ------------------------------------------------------------------ masks
    def decode_mask(self, mask: Image.Image, path: Path) -> np.ndarray:
        """VOC PNG: the palette index is the class id, and 255 (border, difficult) is already ignore."""
        if mask.mode not in ("P", "L"):
            raise DataError(f"{path}: expected a palette (mode P) PNG of class indices, got mode {mask.mode}")
        return np.asarray(mask, dtype=np.uint8)

    def read_mask(self, path: Path) -> np.ndarray:
        """SBD ``.mat`` masks are read here; PNG masks go through ``decode_mask``. Both are range-checked by the base."""
        return read_sbd_mat(path) if path.suffix == ".mat" else super().read_mask(path)


def _find_voc(root: Path) -> Optional[Path]:
    for candidate in (root / VOC_DIR, root / VOC_DIR.name, root):
        if (candidate / "ImageSets").is_dir() or (candidate / "JPEGImages").is_dir():
            return candidate
    return None


def _devkit_parent(root: Path) -> Path:
    """The folder that holds (or would hold) ``VOCdevkit/``: where the SBD tgz unpacks beside it."""
    voc = _find_voc(root) if root.is_dir() else None
    if voc is None or voc == root / VOC_DIR:
        return root
    if voc == root / VOC_DIR.name:  # root is VOCdevkit/
        return root.parent
    return root.parent.parent if root.parent.name == VOC_DIR.parent.name else root.parent  # root is VOC2012/


def _voc_sample(voc: Path, name: str, split: str) -> Sample:
    return _checked(voc / "JPEGImages" / f"{name}.jpg", voc / "SegmentationClass" / f"{name}.png", split)


def _sbd_sample(sbd: Path, name: str, split: str) -> Sample:
    return _checked(sbd / "img" / f"{name}.jpg", sbd / "cls" / f"{name}.mat", split)


def _checked(image: Path, mask: Path, split: str) -> Sample:
    if not image.is_file():
        raise DataError(f"{image}: listed in split '{split}' but not found")
    if not mask.is_file():
        raise DataError(f"{image}: no mask at {mask}")
    return Sample(image, mask)
