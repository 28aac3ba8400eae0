"""Focal loss and soft Dice against hand arithmetic on 1×2×1×2 examples."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semseg.config import LossConfig
from semseg.errors import ConfigError
from semseg.losses import DiceLoss, FocalLoss, build_criterion

# pixel 0: logits (2, 0), target 0 → p_t = e²/(e²+1); pixel 1: logits (0, 0), target 1 → p_t = 1/2
LOGITS = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])
TARGET = torch.tensor([[[0, 1]]])
P0 = math.exp(2) / (math.exp(2) + 1)


def test_focal_by_hand() -> None:
    l0 = -((1 - P0) ** 2) * math.log(P0)
    l1 = -(0.5**2) * math.log(0.5)
    assert FocalLoss(255)(LOGITS, TARGET).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    assert FocalLoss(255, gamma=1.0)(LOGITS, TARGET).item() == pytest.approx(
        (-(1 - P0) * math.log(P0) - 0.5 * math.log(0.5)) / 2, rel=1e-5
    )


def test_focal_class_weights_act_as_alpha() -> None:
    l0 = -((1 - P0) ** 2) * math.log(P0)
    l1 = -(0.5**2) * math.log(0.5)
    loss = FocalLoss(255, torch.tensor([0.25, 0.75]))(LOGITS, TARGET)
    assert loss.item() == pytest.approx((0.25 * l0 + 0.75 * l1) / 2, rel=1e-5)  # mean over pixels, not weights


def test_focal_with_gamma_zero_is_cross_entropy() -> None:
    logits = torch.randn(2, 4, 3, 5)
    target = torch.randint(0, 4, (2, 3, 5))
    target[1, :, 2] = 255
    focal = FocalLoss(255, gamma=0.0)(logits, target)
    assert focal.item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=255).item(), rel=1e-6)


def test_focal_down_weights_easy_pixels_more_than_hard_ones() -> None:
    easy, hard = torch.tensor([[[[4.0]], [[0.0]]]]), torch.tensor([[[[-1.0]], [[0.0]]]])
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    ratio = lambda x: (FocalLoss(255)(x, target) / F.cross_entropy(x, target)).item()  # noqa: E731
    assert ratio(easy) < 0.001 < 0.5 < ratio(hard)


def test_focal_rejects_negative_gamma() -> None:
    with pytest.raises(ConfigError, match="focal: gamma"):
        FocalLoss(255, gamma=-1.0)


def test_dice_by_hand() -> None:
    logits = torch.tensor([[[[0.0, math.log(3)]], [[0.0, 0.0]]]])  # probs: (.5, .5) and (.75, .25)
    target = torch.tensor([[[0, 1]]])
    # class 0: |P∩G| = .5, |P| = .5 + .75, |G| = 1;  class 1: |P∩G| = .25, |P| = .5 + .25, |G| = 1
    d0 = (2 * 0.5 + 1) / (1.25 + 1 + 1)
    d1 = (2 * 0.25 + 1) / (0.75 + 1 + 1)
    assert DiceLoss(255)(logits, target).item() == pytest.approx(1 - (d0 + d1) / 2, rel=1e-6)
    d0_sharp, d1_sharp = 2 * 0.5 / 2.25, 2 * 0.25 / 1.75  # smooth = 0
    assert DiceLoss(255, smooth=0.0)(logits, target).item() == pytest.approx(1 - (d0_sharp + d1_sharp) / 2, rel=1e-6)


def test_dice_present_versus_all_classes() -> None:
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]]])  # 3 classes, every probability 1/3
    target = torch.tensor([[[0, 0]]])  # only class 0 present
    d0 = (2 * (2 / 3) + 1) / (2 / 3 + 2 + 1)
    d_absent = (0 + 1) / (2 / 3 + 0 + 1)  # smooth / (|P| + smooth)
    assert DiceLoss(255)(logits, target).item() == pytest.approx(1 - d0, rel=1e-6)
    assert DiceLoss(255, classes="all")(logits, target).item() == pytest.approx(1 - (d0 + 2 * d_absent) / 3, rel=1e-6)


@pytest.mark.parametrize("classes", ["present", "all"])
def test_dice_on_a_perfect_prediction_is_zero(classes: str) -> None:
    target = torch.randint(0, 4, (2, 5, 6))
    logits = 100 * F.one_hot(target, 4).permute(0, 3, 1, 2).float()
    assert DiceLoss(255, classes=classes)(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_refuses_class_weights() -> None:
    with pytest.raises(ConfigError, match=r"^loss.class_weights: dice does not take class weights$"):
        build_criterion(LossConfig(name="dice"), 255, torch.ones(2))
    with pytest.raises(ConfigError, match="dice does not take class weights"):
        DiceLoss(255, torch.ones(2))


@pytest.mark.parametrize("params", [{"classes": "some"}, {"smooth": -1.0}, {"smooth": 0.0, "classes": "all"}])
def test_dice_rejects_bad_params(params: dict) -> None:
    with pytest.raises(ConfigError, match="^dice: "):
        DiceLoss(255, **params)
