from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semseg.config import LossConfig
from semseg.errors import ConfigError
from semseg.losses import build_criterion, class_pixel_counts, class_weights
from semseg.loaders import build_dataset
from semseg.config import DataConfig


def test_cross_entropy_ignores_pixels_and_matches_hand_value() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # N=1, C=2, H=1, W=2
    target = torch.tensor([[[0, 255]]])
    loss = build_criterion(LossConfig(), ignore_index=255)({"out": logits}, target)
    assert loss.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)))


def test_aux_output_is_added_with_its_weight() -> None:
    out = torch.zeros(1, 2, 1, 1)
    target = torch.tensor([[[1]]])
    crit = build_criterion(LossConfig(aux_weight=0.4), ignore_index=255)
    assert crit({"out": out, "aux": out}, target).item() == pytest.approx(1.4 * math.log(2))


def test_class_weights_reweight_the_loss() -> None:
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    weighted = build_criterion(LossConfig(), 255, torch.tensor([1.0, 3.0]))({"out": logits}, target)
    assert weighted.item() == pytest.approx(math.log(2))  # weighted mean of equal losses is unchanged
    logits[0, 1, 0, 1] = 1.0  # class 1 now easier: its (heavier) term shrinks the mean more
    w = build_criterion(LossConfig(), 255, torch.tensor([1.0, 3.0]))({"out": logits}, target).item()
    l1 = -math.log(math.e / (math.e + 1))
    assert w == pytest.approx((1 * math.log(2) + 3 * l1) / 4)


def test_enet_and_median_frequency_weights_by_hand() -> None:
    counts = np.array([600, 300, 100])
    image_pixels = np.array([1000, 1000, 500])
    enet = class_weights("enet", counts, image_pixels)
    assert enet.tolist() == pytest.approx([1 / math.log(1.02 + p) for p in (0.6, 0.3, 0.1)], rel=1e-6)
    med = class_weights("median_freq", counts, image_pixels)
    freq = [0.6, 0.3, 0.2]  # pixels of class / pixels of images containing it
    assert med.tolist() == pytest.approx([0.3 / f for f in freq], rel=1e-6)
    assert class_weights("none", counts, image_pixels) is None


def test_pixel_counts_skip_ignored_pixels() -> None:
    ds = build_dataset(DataConfig(name="synthetic", params={"size": [16, 16], "num_images": {"train": 3}}), "train")
    counts, image_pixels = class_pixel_counts(ds)
    assert counts.sum() == 3 * 16 * 16  # synthetic masks have no ignore pixels
    assert (image_pixels[counts > 0] >= 256).all() and (image_pixels[counts == 0] == 0).all()


def test_unknown_loss_param_is_named() -> None:
    with pytest.raises(ConfigError, match=r"loss.params.smoothing: not a parameter of loss 'cross_entropy' \(did you mean 'label_smoothing'\?\)"):
        build_criterion(LossConfig(params={"smoothing": 0.1}), 255)
