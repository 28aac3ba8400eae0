"""Losses (registered by name), class weighting, and the criterion over model outputs.

The criterion takes the model's output dict, so models with an auxiliary head
(PSPNet) need no special case in the training loop: ``aux`` is added with
``loss.aux_weight`` (0.4 in the PSPNet paper, §4.2).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semseg.config import LossConfig
from semseg.loaders._base import SegmentationDataset
from semseg.registry import LOSSES

logger = logging.getLogger(__name__)

ENET_C = 1.02  # Paszke et al. 2016, §5.2: w = 1 / ln(c + p), c = 1.02 bounds weights to [1, 50]


@LOSSES.register("cross_entropy")
class CrossEntropy(nn.Module):
    """Pixel-wise cross-entropy, mean over non-ignored pixels; optional class weights and label smoothing."""

    def __init__(
        self, ignore_index: int = 255, weight: Optional[torch.Tensor] = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), target, weight=self.weight, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )  # fmt: skip


class Criterion(nn.Module):
    """``loss(out) + aux_weight * loss(aux)`` over a model's output dict."""

    def __init__(self, loss: nn.Module, aux_weight: float) -> None:
        super().__init__()
        self.loss = loss
        self.aux_weight = aux_weight

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        total = self.loss(outputs["out"], target)
        if "aux" in outputs and self.aux_weight:
            total = total + self.aux_weight * self.loss(outputs["aux"], target)
        return total


def build_criterion(cfg: LossConfig, ignore_index: int, weight: Optional[torch.Tensor] = None) -> Criterion:
    kwargs = dict(cfg.params, ignore_index=ignore_index)
    if weight is not None:
        kwargs["weight"] = weight
    return Criterion(LOSSES.build_checked(cfg.name, kwargs, where="loss.params"), cfg.aux_weight)


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
