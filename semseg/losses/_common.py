"""Pieces every loss shares: the valid-pixel mask, a gatherable target, a NaN-free mean.

Every loss works in float32 (``logits.float()``), so it is safe under bf16/fp16 autocast, and
masks ignored pixels by arithmetic rather than boolean indexing: no host sync, and a batch
whose pixels are all ignored gives exactly 0 with an all-zero (finite) gradient.
"""

from __future__ import annotations

from typing import Optional

import torch

from semseg.errors import ConfigError

TINY = torch.finfo(torch.float32).tiny
CLASS_MODES = ("present", "all")  # region losses: average over ground-truth classes, or over every class


def check_shapes(logits: torch.Tensor, target: torch.Tensor) -> None:
    """Logits N×C×H×W against a target N×H×W; a mismatch is a bug in the caller, said plainly."""
    if logits.dim() != 4 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match (N×C×H×W vs N×H×W)"
        )


def valid_and_safe(target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The non-ignored pixels, and the target with ignored pixels set to class 0 (safe to gather)."""
    valid = target != ignore_index
    return valid, target.masked_fill(~valid, 0)


def safe_divide(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count``, and 0 (not NaN) when nothing was counted."""
    return total / count.clamp_min(TINY)


def pixel_weights(weight: Optional[torch.Tensor], safe: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per pixel: its class weight (1 without class weights), 0 where ignored."""
    w = valid.float()
    return w if weight is None else w * weight[safe]


def reject_class_weights(name: str, weight: Optional[torch.Tensor]) -> None:
    """Region losses (Lovász, Dice) average over classes; per-class weights are not defined for them."""
    if weight is not None:
        raise ConfigError(f"loss.class_weights: {name} does not take class weights")


def check_classes(name: str, classes: str) -> None:
    if classes not in CLASS_MODES:
        raise ConfigError(f"{name}: classes must be one of {', '.join(CLASS_MODES)}, got {classes!r}")
