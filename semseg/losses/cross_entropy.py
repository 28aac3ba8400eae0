"""Pixel-wise cross-entropy and its online-hard-example-mining variant.

OHEM is online hard example mining (Shrivastava, Gupta, Girshick, CVPR 2016) applied to pixels,
as in the PSPNet/semseg training code and mmseg's ``OHEMPixelSampler``: a probability threshold
plus a minimum number of kept pixels.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.losses._common import check_shapes, pixel_weights, safe_divide, valid_and_safe
from semseg.registry import LOSSES


def _pixel_cross_entropy(
    logits: torch.Tensor,
    safe: torch.Tensor,
    valid: torch.Tensor,
    weight: Optional[torch.Tensor],
    smoothing: float = 0.0,
) -> torch.Tensor:
    """N×H×W losses (class-weighted, 0 where ignored); their sum over the weights' sum is
    ``F.cross_entropy``'s weighted mean."""
    per_pixel = F.cross_entropy(logits.float(), safe, weight=weight, reduction="none", label_smoothing=smoothing)
    return per_pixel * valid


@LOSSES.register("cross_entropy", class_weights=True)
class CrossEntropy(nn.Module):
    """Pixel-wise cross-entropy, weighted mean over non-ignored pixels (as ``F.cross_entropy``);
    optional class weights and label smoothing (Szegedy et al. 2016, §7)."""

    def __init__(
        self, ignore_index: int = 255, weight: Optional[torch.Tensor] = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_shapes(logits, target)
        valid, safe = valid_and_safe(target, self.ignore_index)
        losses = _pixel_cross_entropy(logits, safe, valid, self.weight, self.label_smoothing)
        return safe_divide(losses.sum(), pixel_weights(self.weight, safe, valid).sum())


@LOSSES.register("ohem_cross_entropy", class_weights=True)
class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hard pixels only: those whose true-class probability is below
    ``thresh``, but never fewer than the ``min_kept`` hardest of the batch (PSPNet uses 0.7 and
    100000). The mean is over kept pixels (class-weighted when weights are given); pixels never
    kept have no effect. Ties at the ``min_kept`` boundary are broken arbitrarily."""

    def __init__(
        self,
        ignore_index: int = 255,
        weight: Optional[torch.Tensor] = None,
        thresh: float = 0.7,
        min_kept: int = 100000,
    ) -> None:
        super().__init__()
        if not 0.0 < thresh <= 1.0:
            raise ConfigError(f"ohem_cross_entropy: thresh must be in (0, 1], got {thresh}")
        if min_kept < 0:
            raise ConfigError(f"ohem_cross_entropy: min_kept must be ≥ 0, got {min_kept}")
        self.ignore_index = ignore_index
        self.thresh = thresh
        self.min_kept = min_kept
        self.register_buffer("weight", weight, persistent=False)

    @torch.no_grad()
    def kept(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """N×H×W mask of the pixels the loss is taken over."""
        valid, safe = valid_and_safe(target, self.ignore_index)
        prob = F.softmax(logits.float(), dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
        prob = prob.masked_fill(~valid, 2.0)  # ignored pixels rank after every real one
        keep = prob < self.thresh
        k = min(self.min_kept, prob.numel())
        if k > 0:
            hardest = prob.flatten().topk(k, largest=False).indices
            keep.view(-1)[hardest] = True
        return keep & valid

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_shapes(logits, target)
        keep = self.kept(logits, target)
        _, safe = valid_and_safe(target, self.ignore_index)
        losses = _pixel_cross_entropy(logits, safe, keep, self.weight)
        return safe_divide(losses.sum(), pixel_weights(self.weight, safe, keep).sum())
