"""Focal loss (Lin, Goyal, Girshick, He, Dollár, *Focal Loss for Dense Object Detection*, ICCV 2017).

Multi-class form of their eq. 5: ``FL = -alpha_t (1 - p_t)^gamma log p_t``. The modulating
factor down-weights pixels that are already well classified, so the many easy pixels of large
stuff classes stop dominating the gradient. Class weights play the role of ``alpha_t``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from semseg.errors import ConfigError
from semseg.losses._common import check_shapes, safe_divide, valid_and_safe
from semseg.registry import LOSSES


@LOSSES.register("focal", class_weights=True)
class FocalLoss(nn.Module):
    """Focal loss, mean over non-ignored pixels; ``gamma=2`` is the paper's choice (§3.2, Table 1b),
    and ``gamma=0`` without weights is cross-entropy. With class weights the mean stays over
    pixels (the paper normalises by the number of examples), unlike cross-entropy's weighted mean."""

    def __init__(self, ignore_index: int = 255, weight: Optional[torch.Tensor] = None, gamma: float = 2.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"focal: gamma must be ≥ 0, got {gamma}")
        self.ignore_index = ignore_index
        self.gamma = gamma
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_shapes(logits, target)
        valid, safe = valid_and_safe(target, self.ignore_index)
        log_pt = F.log_softmax(logits.float(), dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
        # 1 - p_t without cancellation; the floor keeps the gradient finite for gamma < 1 at p_t = 1
        modulator = (-torch.expm1(log_pt)).clamp_min(1e-12).pow(self.gamma)
        losses = -modulator * log_pt
        if self.weight is not None:
            losses = losses * self.weight[safe]
        return safe_divide((losses * valid).sum(), valid.sum().float())
