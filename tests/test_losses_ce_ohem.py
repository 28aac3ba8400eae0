"""Cross-entropy (parity with F.cross_entropy) and OHEM's choice of kept pixels, by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semseg.errors import ConfigError
from semseg.losses import CrossEntropy
from semseg.losses.cross_entropy import OhemCrossEntropy


def _logits_for(probs: list[float]) -> torch.Tensor:
    """1×2×1×W logits whose class-0 softmax probability is ``probs`` (class-1 logit 0)."""
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.stack([torch.log(p / (1 - p)), torch.zeros_like(p)]).float().view(1, 2, 1, -1)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_torch(smoothing: float, weighted: bool) -> None:
    logits = torch.randn(2, 4, 3, 5)
    target = torch.randint(0, 4, (2, 3, 5))
    target[0, 1] = 255
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0]) if weighted else None
    ours = CrossEntropy(255, weight, label_smoothing=smoothing)(logits, target)
    ref = F.cross_entropy(logits, target, weight=weight, ignore_index=255, label_smoothing=smoothing)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


def test_ohem_keeps_pixels_below_thresh() -> None:
    logits = _logits_for([0.9, 0.6, 0.3, 0.8, 0.1])  # true-class probabilities (target 0)
    target = torch.tensor([[[0, 0, 0, 0, 255]]])  # the 0.1 pixel is ignored: never kept
    ohem = OhemCrossEntropy(255, thresh=0.7, min_kept=0)
    assert ohem.kept(logits, target).tolist() == [[[False, True, True, False, False]]]
    assert ohem(logits, target).item() == pytest.approx(-(math.log(0.6) + math.log(0.3)) / 2, rel=1e-5)


def test_ohem_keeps_at_least_min_kept_hardest() -> None:
    logits = _logits_for([0.9, 0.6, 0.3, 0.8, 0.1])
    target = torch.tensor([[[0, 0, 0, 0, 255]]])
    three = OhemCrossEntropy(255, thresh=0.7, min_kept=3)
    assert three.kept(logits, target).tolist() == [[[False, True, True, True, False]]]  # 0.3, 0.6, 0.8
    assert three(logits, target).item() == pytest.approx(-(math.log(0.6) + math.log(0.3) + math.log(0.8)) / 3, rel=1e-5)
    one = OhemCrossEntropy(255, thresh=0.7, min_kept=1)  # the threshold already keeps more than 1
    assert one.kept(logits, target).tolist() == [[[False, True, True, False, False]]]
    many = OhemCrossEntropy(255, thresh=0.7, min_kept=100)  # more than there are: all labelled pixels
    assert many.kept(logits, target).tolist() == [[[True, True, True, True, False]]]


def test_ohem_counts_min_kept_over_the_batch() -> None:
    logits = torch.cat([_logits_for([0.9, 0.2]), _logits_for([0.4, 0.95])])  # 2×2×1×2
    target = torch.zeros(2, 1, 2, dtype=torch.long)
    kept = OhemCrossEntropy(255, thresh=0.1, min_kept=2).kept(logits, target)
    assert kept.tolist() == [[[False, True]], [[True, False]]]  # 0.2 and 0.4: the 2 hardest of the batch


def test_ohem_with_class_weights_is_a_weighted_mean_over_kept() -> None:
    logits = _logits_for([0.9, 0.6, 0.3])  # class-0 probabilities; class 1 gets 1 - p
    target = torch.tensor([[[1, 0, 0]]])  # true-class probabilities 0.1, 0.6, 0.3 → all below 0.7
    loss = OhemCrossEntropy(255, torch.tensor([1.0, 3.0]), thresh=0.7, min_kept=0)(logits, target)
    expected = (3 * -math.log(0.1) + 1 * -math.log(0.6) + 1 * -math.log(0.3)) / (3 + 1 + 1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ohem_keeping_everything_is_cross_entropy() -> None:
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[1, 0] = 255
    all_kept = OhemCrossEntropy(255, thresh=1.0, min_kept=10**6)(logits, target)
    assert all_kept.item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=255).item(), rel=1e-6)


@pytest.mark.parametrize("params", [{"thresh": 0.0}, {"thresh": 1.5}, {"min_kept": -1}])
def test_ohem_rejects_bad_params(params: dict) -> None:
    with pytest.raises(ConfigError, match="ohem_cross_entropy"):
        OhemCrossEntropy(255, **params)
