"""The criterion over a model's output dict: one loss or a weighted sum of losses, plus auxiliary outputs.

The criterion takes the model's output dict, so models with auxiliary predictions need no special case
in the training loop. Every key other than ``"out"`` that starts with ``"aux"`` (``aux``, ``aux_16``,
``aux_32``, …) is an auxiliary prediction, added with ``loss.aux_weight``: 0.4 for PSPNet's one head
(§4.2), 1 for BiSeNet's two context-path heads (Yu et al. 2018, the joint loss with α = 1) and for each of
LRN's coarse-to-fine stages (Islam et al. 2017, §3: the plain sum of the stage losses). An auxiliary prediction
smaller than the target is scored against the target resized to its size by nearest neighbour (the
ignore index survives as a value), which is LRN's multi-resolution loss: each stage s_k is compared
with the ground truth resized to s_k's resolution. Heads that the authors score at full resolution
(PSPNet, BiSeNet) upsample their logits inside the model, so they reach the criterion at the target's
size and are scored as they are. Sums such as cross-entropy + Lovász come from ``loss.terms``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from semseg.config import LossConfig
from semseg.errors import ConfigError
from semseg.registry import LOSSES

logger = logging.getLogger(__name__)

_SET_BY_CRITERION = ("ignore_index", "weight")  # from the dataset and loss.class_weights


def is_aux(key: str) -> bool:
    """Whether an output-dict key is an auxiliary prediction (``aux``, ``aux_16``, …; never ``out``)."""
    return key != "out" and key.startswith("aux")


def target_at(target: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``target`` (N×H×W class ids) at ``size`` by nearest neighbour: ids, the ignore index included, are
    picked, never blended. The same tensor when it already has that size."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    picked = F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest")
    return picked[:, 0].to(target.dtype)


class Criterion(nn.Module):
    """``loss(out) + aux_weight * Σ_aux loss(aux, target at aux's size)`` over a model's output dict."""

    def __init__(self, loss: nn.Module, aux_weight: float) -> None:
        super().__init__()
        self.loss = loss
        self.aux_weight = aux_weight

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        total = self.loss(outputs["out"], target)
        if not self.aux_weight:
            return total
        for key in sorted(k for k in outputs if is_aux(k)):
            logits = outputs[key]
            total = total + self.aux_weight * self.loss(logits, target_at(target, logits.shape[-2:]))
        return total


class WeightedSum(nn.Module):
    """``Σ_i w_i loss_i(logits, target)``: e.g. cross-entropy plus Lovász, as Berman et al. 2018 suggest
    for training from scratch."""

    def __init__(self, losses: list[nn.Module], weights: list[float]) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)
        self.weights = list(weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = self.weights[0] * self.losses[0](logits, target)
        for w, loss in zip(self.weights[1:], self.losses[1:]):
            total = total + w * loss(logits, target)
        return total


def _terms(cfg: LossConfig) -> list[tuple[str, float, dict[str, Any], str]]:
    """(name, weight, params, config key of params) per term; ``terms`` replaces ``name``/``params``."""
    if not cfg.terms:
        return [(cfg.name, 1.0, cfg.params, "loss.params")]
    default_name = next(f.default for f in dataclasses.fields(LossConfig) if f.name == "name")
    if cfg.name != default_name or cfg.params:
        raise ConfigError("loss: set either loss.name/params or loss.terms, not both")
    for i, term in enumerate(cfg.terms):
        if not math.isfinite(term.weight) or term.weight < 0:
            raise ConfigError(f"loss.terms[{i}].weight: expected a finite number ≥ 0, got {term.weight}")
    return [(t.name, t.weight, t.params, f"loss.terms[{i}].params") for i, t in enumerate(cfg.terms)]


def takes_class_weights(name: str) -> bool:
    """A loss's ``class_weights`` registry meta; without it, whether it has a ``weight`` argument."""
    return LOSSES.meta(name).get("class_weights", "weight" in LOSSES.accepted_params(name))


def _check_class_weights(names: list[str], weight: Optional[torch.Tensor]) -> None:
    """Class weights must reach at least one term; say which terms they skip."""
    if weight is None:
        return
    skipped = [n for n in names if not takes_class_weights(n)]
    if len(skipped) == len(names):
        verb = "does" if len(set(skipped)) == 1 else "do"
        raise ConfigError(f"loss.class_weights: {', '.join(dict.fromkeys(skipped))} {verb} not take class weights")
    if skipped:
        taken = ", ".join(n for n in names if n not in skipped)
        logger.info("class weights apply to %s only, not to %s", taken, ", ".join(skipped))


def _build_term(
    name: str, params: dict[str, Any], where: str, ignore_index: int, weight: Optional[torch.Tensor]
) -> nn.Module:
    """One loss from its config entry; the dataset's ignore index and the class weights are added here."""
    LOSSES.get(name)  # unknown name: did-you-mean error first
    for key in _SET_BY_CRITERION:
        if key in params:
            raise ConfigError(f"{where}.{key}: set from the dataset / loss.class_weights, not in the loss params")
    kwargs = dict(params, ignore_index=ignore_index)
    if weight is not None and takes_class_weights(name):
        kwargs["weight"] = weight
    return LOSSES.build_checked(name, kwargs, where=where)


def build_criterion(cfg: LossConfig, ignore_index: int, weight: Optional[torch.Tensor] = None) -> Criterion:
    """The training criterion from ``cfg``; ``weight`` (per-class) goes to every term that takes it."""
    terms = _terms(cfg)
    _check_class_weights([name for name, *_ in terms], weight)
    losses = [_build_term(name, params, where, ignore_index, weight) for name, _, params, where in terms]
    loss = losses[0] if not cfg.terms else WeightedSum(losses, [w for _, w, *_ in terms])
    return Criterion(loss, cfg.aux_weight)
