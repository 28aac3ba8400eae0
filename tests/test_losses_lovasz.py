"""Lovász-softmax against its definition (Berman et al. 2018): sorted errors and Jaccard increments."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from semseg.errors import ConfigError
from semseg.losses import LovaszSoftmax


def _jaccard_loss(mispredicted: set[int], truth: set[int]) -> float:
    """Δ_J of a class when ``mispredicted`` pixels are wrong: 1 - |G \\ M| / |G ∪ M| (0 for M = ∅)."""
    union = truth | mispredicted
    return 1 - len(truth - mispredicted) / len(union) if union else 0.0


def _lovasz_extension(errors: list[float], truth: set[int]) -> float:
    """Σ_i m_π(i) (Δ({π1..πi}) - Δ({π1..πi-1})), π sorting the errors in decreasing order."""
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    total, previous = 0.0, 0.0
    for k in range(len(order)):
        current = _jaccard_loss(set(order[: k + 1]), truth)
        total += errors[order[k]] * (current - previous)
        previous = current
    return total


def _reference(probs: np.ndarray, labels: np.ndarray, classes: str) -> float:
    """Mean over classes of the extension, on probs C×P and labels P already stripped of ignored pixels."""
    losses = []
    for c in range(probs.shape[0]):
        fg = labels == c
        if classes == "present" and not fg.any():
            continue
        losses.append(_lovasz_extension(list(np.abs(fg - probs[c])), set(np.flatnonzero(fg))))
    return float(np.mean(losses)) if losses else 0.0


def _logits_for(p0: list[float]) -> torch.Tensor:
    p = torch.tensor(p0, dtype=torch.float64)
    return torch.stack([torch.log(p / (1 - p)), torch.zeros_like(p)]).float().view(1, 2, 1, -1)


def test_two_classes_four_pixels_by_hand() -> None:
    logits = _logits_for([0.9, 0.4, 0.3, 0.2])  # class-1 probabilities: .1, .6, .7, .8
    target = torch.tensor([[[0, 0, 1, 1]]])
    # class 0: errors .1 .6 .3 .2, G = {0, 1}; decreasing order 1, 2, 3, 0
    #   Δ: {1} 1-1/2, {1,2} 1-1/3, {1,2,3} 1-1/4, all 1 → increments 1/2, 1/6, 1/12, 1/4
    loss0 = Fraction(6, 10) / 2 + Fraction(3, 10) / 6 + Fraction(2, 10) / 12 + Fraction(1, 10) / 4
    # class 1: errors .1 .6 .3 .2, G = {2, 3}; same order 1, 2, 3, 0
    #   Δ: {1} 1-2/3, {1,2} 1-1/3, {1,2,3} 1, all 1 → increments 1/3, 1/3, 1/3, 0
    loss1 = (Fraction(6, 10) + Fraction(3, 10) + Fraction(2, 10)) / 3
    expected = float((loss0 + loss1) / 2)  # = 91/240
    assert LovaszSoftmax(255)(logits, target).item() == pytest.approx(expected, abs=1e-6)
    probs = np.array([[0.9, 0.4, 0.3, 0.2], [0.1, 0.6, 0.7, 0.8]])
    assert _reference(probs, np.array([0, 0, 1, 1]), "present") == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("classes", ["present", "all"])
def test_matches_the_definition_on_random_inputs_with_ignored_pixels(classes: str) -> None:
    logits = torch.randn(2, 4, 3, 5)
    target = torch.randint(0, 3, (2, 3, 5))  # class 3 never present
    target[0, 0] = 255
    probs = torch.softmax(logits, 1).permute(1, 0, 2, 3).reshape(4, -1).numpy().astype(np.float64)
    labels = target.reshape(-1).numpy()
    keep = labels != 255
    expected = _reference(probs[:, keep], labels[keep], classes)
    assert LovaszSoftmax(255, classes=classes)(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_one_hot_probabilities_give_one_minus_jaccard() -> None:
    target = torch.randint(0, 3, (2, 6, 7))
    target[0, 0, :4] = 255
    pred = torch.where(torch.rand(2, 6, 7) < 0.6, target, torch.randint(0, 4, (2, 6, 7)))  # some mistakes
    pred[target == 255] = 1
    logits = 1e4 * torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()  # softmax is exactly 0/1
    assert set(torch.softmax(logits, 1).unique().tolist()) == {0.0, 1.0}
    valid = target != 255
    ious = []
    for c in target[valid].unique().tolist():  # present classes
        inter = ((pred == c) & (target == c) & valid).sum().item()
        union = (((pred == c) | (target == c)) & valid).sum().item()
        ious.append(inter / union)
    expected = 1 - sum(ious) / len(ious)
    assert 0.1 < expected < 0.9  # a real mix of hits and mistakes
    assert LovaszSoftmax(255)(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_per_image_averages_images_and_differs_from_batch() -> None:
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0] = 0  # image 0 holds only class 0: per image, classes 1, 2 are absent there
    batch, per_image = LovaszSoftmax(255), LovaszSoftmax(255, per_image=True)
    singles = [batch(logits[i : i + 1], target[i : i + 1]).item() for i in range(2)]
    assert per_image(logits, target).item() == pytest.approx(sum(singles) / 2, abs=1e-6)
    assert abs(per_image(logits, target).item() - batch(logits, target).item()) > 1e-3
    assert per_image(logits[:1], target[:1]).item() == pytest.approx(batch(logits[:1], target[:1]).item(), abs=1e-7)


def test_per_image_counts_an_unlabelled_image_as_zero() -> None:
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[1] = 255
    alone = LovaszSoftmax(255)(logits[:1], target[:1]).item()
    assert LovaszSoftmax(255, per_image=True)(logits, target).item() == pytest.approx(alone / 2, abs=1e-6)


def test_gradient_flows_and_is_finite() -> None:
    logits = torch.randn(2, 3, 5, 5, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 5))
    LovaszSoftmax(255, per_image=True)(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert not math.isnan(LovaszSoftmax(255, classes="all")(logits, target).item())


def test_refuses_class_weights_and_unknown_class_mode() -> None:
    with pytest.raises(ConfigError, match=r"^loss.class_weights: lovasz does not take class weights$"):
        LovaszSoftmax(255, torch.ones(3))
    with pytest.raises(ConfigError, match="lovasz: classes must be one of present, all"):
        LovaszSoftmax(255, classes="every")
