"""Soft multi-class Dice loss (Milletari, Navab, Ahmadi, *V-Net*, 3DV 2016, §3, extended to
several classes by averaging per-class Dice; Sudre et al., DLMIA 2017, discuss the variants).

``1 - mean_c (2 |P_c ∩ G_c| + s) / (|P_c| + |G_c| + s)`` with softmax probabilities ``P`` and
one-hot ground truth ``G``, sums taken over the whole batch (as smp's ``DiceLoss``). It measures
overlap, not per-pixel likelihood, so small classes count as much as large ones.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.losses._common import check_classes, check_shapes, reject_class_weights, safe_divide, valid_and_safe
from semseg.registry import LOSSES


@LOSSES.register("dice", class_weights=False)
class DiceLoss(nn.Module):
    """Soft Dice loss; ignored pixels are masked out of both P and G. ``classes="present"``
    averages over the classes in the batch's ground truth, ``"all"`` over every class (an absent
    class then scores ``s / (|P_c| + s)``, pushing its probabilities to 0). Class weights are not
    used: the class average is the weighting."""

    def __init__(
        self,
        ignore_index: int = 255,
        weight: Optional[torch.Tensor] = None,
        smooth: float = 1.0,
        classes: str = "present",
    ) -> None:
        super().__init__()
        reject_class_weights("dice", weight)
        check_classes("dice", classes)
        if smooth < 0 or (classes == "all" and smooth == 0):
            raise ConfigError(f"dice: smooth must be ≥ 0 (> 0 with classes='all'), got {smooth}")
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.classes = classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_shapes(logits, target)
        valid, safe = valid_and_safe(target, self.ignore_index)
        mask = valid.unsqueeze(1).float()
        probs = F.softmax(logits.float(), dim=1) * mask
        onehot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).float() * mask
        dims = (0, 2, 3)
        truth = onehot.sum(dims)
        dice = (2 * (probs * onehot).sum(dims) + self.smooth) / (probs.sum(dims) + truth + self.smooth)
        if self.classes == "all":
            return 1 - dice.mean()
        present = (truth > 0).float()
        return safe_divide(((1 - dice) * present).sum(), present.sum())
