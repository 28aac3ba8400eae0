"""Class weights from the training split's pixel counts (ENet and median-frequency balancing)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from semseg.loaders._base import SegmentationDataset

ENET_C = 1.02  # Paszke et al. 2016, §5.2: w = 1 / ln(c + p), c = 1.02 bounds weights to [1, 50]


def class_pixel_counts(dataset: SegmentationDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per class: labelled pixels, and total pixels of the images where the class appears."""
    n = dataset.num_classes
    counts = np.zeros(n, dtype=np.int64)
    image_pixels = np.zeros(n, dtype=np.int64)
    for i in range(len(dataset)):
        ids = dataset.load_mask(i)
        hist = np.bincount(ids[ids != dataset.IGNORE_INDEX].ravel(), minlength=n)[:n]
        counts += hist
        image_pixels[hist > 0] += ids.size
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
