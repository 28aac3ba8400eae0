"""Class weights from the training split's pixel counts (ENet and median-frequency balancing)."""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

from semseg.errors import DataError
from semseg.loaders._base import SegmentationDataset

logger = logging.getLogger(__name__)

ENET_C = 1.02  # Paszke et al. 2016, §5.2: w = 1 / ln(c + p), c = 1.02 bounds weights to [1, 50]


def class_pixel_counts(dataset: SegmentationDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per class: labelled pixels, and total pixels of the images where the class appears.

    A mask training would reject (unreadable, out of range, not its image's size) is a one-line
    error, or, under ``data.on_error: skip``, left out with a warning, as training skips it.
    """
    n = dataset.num_classes
    counts = np.zeros(n, dtype=np.int64)
    image_pixels = np.zeros(n, dtype=np.int64)
    skipped = 0
    for i in range(len(dataset)):
        try:
            ids = dataset.checked_mask(i)
        except DataError as exc:
            if dataset.on_error != "skip":
                raise
            skipped += 1
            logger.warning("class pixel counts leave out sample %d (data.on_error: skip): %s", i, exc)
            continue
        hist = np.bincount(ids[ids != dataset.IGNORE_INDEX].ravel(), minlength=n)[:n]
        counts += hist
        image_pixels[hist > 0] += ids.size
    if skipped == len(dataset):
        raise DataError(f"{dataset.root}: none of the {len(dataset)} masks of split '{dataset.split}' could be read (see the warnings)")
    return counts, image_pixels


def class_weights(mode: str, counts: np.ndarray, image_pixels: np.ndarray) -> Optional[torch.Tensor]:
    """``enet``: 1/ln(c + p_class) (Paszke et al. 2016); ``median_freq``: median(f)/f_class
    with f = pixels of the class / pixels of the images containing it (Eigen & Fergus 2015)."""
    if mode == "none":
        return None
    if mode == "enet":
        p = counts / max(1, counts.sum())
        w = 1.0 / np.log(ENET_C + p)
    elif mode == "median_freq":
        freq = np.divide(counts, image_pixels, out=np.zeros(len(counts)), where=image_pixels > 0)
        median = np.median(freq[freq > 0])
        w = np.divide(median, freq, out=np.zeros(len(counts)), where=freq > 0)  # absent class: weight 0
    else:
        raise ValueError(f"unknown class weighting {mode!r}")
    return torch.tensor(w, dtype=torch.float32)
