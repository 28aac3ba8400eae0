"""Lovász-softmax loss (Berman, Rannen Triki, Blaschko, *The Lovász-Softmax loss: a tractable
surrogate for the optimization of the intersection-over-union measure in neural networks*, CVPR 2018).

The Jaccard loss ``Δ_J`` of a class is submodular in the set of mispredicted pixels, so its
Lovász extension is a tight convex surrogate that can be evaluated on the softmax errors
``m_i = |[y_i = c] - p_i(c)|``. The extension is ``Σ_i m_(i) g_i`` with the errors sorted
in decreasing order and ``g_i = Δ_J({1..i}) - Δ_J({1..i-1})`` (Alg. 1). Averaging it over classes
gives a surrogate of mIoU, the metric segmentation is judged by.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from semseg.losses._common import check_classes, check_shapes, reject_class_weights, safe_divide
from semseg.registry import LOSSES


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Alg. 1: for ground truth ``fg_sorted`` (…×P, 0/1) in decreasing-error order, the Jaccard-loss
    increments ``g_i``. Taking the first i pixels as mispredicted leaves ``|G| - (fg among them)``
    in the intersection and grows the union by the background pixels among them."""
    gts = fg_sorted.sum(-1, keepdim=True)
    intersection = gts - fg_sorted.cumsum(-1)
    union = gts + (1 - fg_sorted).cumsum(-1)  # ≥ 1 from the first pixel on: never 0/0
    jaccard_loss = 1 - intersection / union
    return torch.cat([jaccard_loss[..., :1], jaccard_loss[..., 1:] - jaccard_loss[..., :-1]], dim=-1)


def lovasz_per_class(
    probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses and presence (both B×C) of each class over B rows of P pixels (``probs`` B×C×P).

    Ignored pixels get error -1, so they sort after every real pixel (errors lie in [0, 1]) and
    leave the cumulative sums of the real ones untouched; their terms are then zeroed. That equals
    removing them, without a data-dependent shape."""
    n_valid = valid.sum(-1, keepdim=True)
    real = torch.arange(valid.shape[-1], device=valid.device) < n_valid  # B×P, in sorted order
    losses, present = [], []
    for c in range(probs.shape[1]):
        fg = ((labels == c) & valid).float()
        errors = torch.where(valid, (fg - probs[:, c]).abs(), -1.0)
        errors_sorted, order = errors.sort(dim=-1, descending=True)
        grad = lovasz_grad(fg.gather(-1, order)) * real
        losses.append((errors_sorted * grad).sum(-1))
        present.append(fg.sum(-1) > 0)
    return torch.stack(losses, dim=1), torch.stack(present, dim=1)


@LOSSES.register("lovasz", class_weights=False)
class LovaszSoftmax(nn.Module):
    """Lovász-softmax over the batch as one image (default) or per image then averaged
    (``per_image``; as the reference code, an image with no labelled pixel counts as 0).
    ``classes="present"`` averages over classes in the ground truth (the reference code's
    default), ``"all"`` over every class. Class weights are not used."""

    def __init__(
        self,
        ignore_index: int = 255,
        weight: Optional[torch.Tensor] = None,
        per_image: bool = False,
        classes: str = "present",
    ) -> None:
        super().__init__()
        reject_class_weights("lovasz", weight)
        check_classes("lovasz", classes)
        self.ignore_index = ignore_index
        self.per_image = per_image
        self.classes = classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_shapes(logits, target)
        n, c = logits.shape[:2]
        probs = F.softmax(logits.float(), dim=1).reshape(n, c, -1)
        labels, valid = target.reshape(n, -1), target.reshape(n, -1) != self.ignore_index
        if not self.per_image:  # the batch as one long image
            probs, labels, valid = probs.transpose(0, 1).reshape(1, c, -1), labels.reshape(1, -1), valid.reshape(1, -1)
        losses, present = lovasz_per_class(probs, labels, valid)
        if self.classes == "all":
            return losses.mean()
        present = present.float()
        per_row = safe_divide((losses * present).sum(1), present.sum(1))
        return per_row.mean()
