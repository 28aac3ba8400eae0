"""Datasets, one per module, registered by name in ``DATASETS``.

Every non-underscore module is imported on package import, so a new dataset is
one new file. :func:`build_dataset` turns the ``data`` config section into a
dataset for one split.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Optional

from semseg.config import DataConfig
from semseg.loaders._base import JointTransform, SegmentationDataset
from semseg.registry import DATASETS

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")


def dataset_class(name: str) -> type[SegmentationDataset]:
    """The registered class, for its metadata (CLASSES, PALETTE, IGNORE_INDEX)."""
    return DATASETS.get(name)


def build_dataset(cfg: DataConfig, split: str, transforms: Optional[JointTransform] = None) -> SegmentationDataset:
    kwargs = dict(cfg.params, root=cfg.root, split=split, transforms=transforms, on_error=cfg.on_error)
    return DATASETS.build_checked(cfg.name, kwargs, where="data.params")


__all__ = ["DATASETS", "SegmentationDataset", "build_dataset", "dataset_class"]
