"""Weighted sums of losses from ``loss.terms``, auxiliary outputs (any size), and class weights reaching each term."""

from __future__ import annotations

import pytest
import torch

from semseg.config import LossConfig, LossTerm, config_from_dict
from semseg.errors import ConfigError
from semseg.losses import LOSSES, CrossEntropy, WeightedSum, build_criterion
from semseg.losses.criterion import is_aux, target_at

TERMS = (
    LossTerm("cross_entropy"),
    LossTerm("lovasz", weight=0.5, params={"per_image": True}),
    LossTerm("dice", weight=0.25, params={"smooth": 0.5}),
)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0] = 255
    return torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), target


def _separate(name: str, logits: torch.Tensor, target: torch.Tensor, weight=None, **params) -> float:
    return LOSSES.build(name, ignore_index=255, weight=weight, **params)(logits, target).item()


def test_terms_give_the_weighted_sum_of_the_separate_losses() -> None:
    out, _, target = _batch()
    crit = build_criterion(LossConfig(terms=TERMS), 255)
    expected = (
        _separate("cross_entropy", out, target)
        + 0.5 * _separate("lovasz", out, target, per_image=True)
        + 0.25 * _separate("dice", out, target, smooth=0.5)
    )
    assert isinstance(crit.loss, WeightedSum)
    assert crit({"out": out}, target).item() == pytest.approx(expected, rel=1e-6)


def test_aux_adds_the_same_sum_with_aux_weight() -> None:
    out, aux, target = _batch()
    crit = build_criterion(LossConfig(terms=TERMS, aux_weight=0.4), 255)
    main, side = crit({"out": out}, target).item(), crit({"out": aux}, target).item()
    assert crit({"out": out, "aux": aux}, target).item() == pytest.approx(main + 0.4 * side, rel=1e-6)
    assert build_criterion(LossConfig(terms=TERMS, aux_weight=0.0), 255)({"out": out, "aux": aux}, target).item() == pytest.approx(main, rel=1e-6)


def test_every_aux_key_is_added_with_aux_weight_and_other_keys_are_not() -> None:
    """BiSeNet's aux_16 / aux_8 (full size) each add aux_weight · loss; "out" counts once; "feat" is no output."""
    out, aux, target = _batch()
    aux2 = torch.randn(2, 3, 4, 4)
    crit = build_criterion(LossConfig(aux_weight=1.0), 255)
    ce = lambda logits: crit({"out": logits}, target).item()  # noqa: E731
    outputs = {"out": out, "aux_16": aux, "aux_8": aux2, "feat": torch.randn(2, 3, 4, 4)}
    assert crit(outputs, target).item() == pytest.approx(ce(out) + ce(aux) + ce(aux2), rel=1e-6)
    assert build_criterion(LossConfig(aux_weight=0.0), 255)(outputs, target).item() == pytest.approx(ce(out), rel=1e-6)
    keys = ("out", "aux", "aux_32", "auxiliary", "feat", "out_aux")
    assert [k for k in keys if is_aux(k)] == ["aux", "aux_32", "auxiliary"]


def test_a_smaller_aux_output_is_scored_against_the_nearest_downsampled_target() -> None:
    """LRN's multi-resolution loss: a 1/2-size stage is compared with every other label row and column."""
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 12))
    target[0, :4] = 255
    out, half = torch.randn(2, 3, 8, 12), torch.randn(2, 3, 4, 6)
    crit = build_criterion(LossConfig(aux_weight=0.5), 255)
    ce = LOSSES.build("cross_entropy", ignore_index=255)
    expected = ce(out, target) + 0.5 * ce(half, target[:, ::2, ::2])
    assert crit({"out": out, "aux_2": half}, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_target_at_picks_ids_and_keeps_the_ignore_index_at_any_size() -> None:
    target = torch.randint(0, 11, (1, 45, 61))
    target[0, 10:20, 5:30] = 255
    small = target_at(target, (23, 31))
    assert small.shape == (1, 23, 31) and small.dtype == target.dtype
    assert set(small.unique().tolist()) <= set(target.unique().tolist())  # picked, never blended
    assert (small == 255).any() and target_at(target, (45, 61)) is target
    rows, cols = (torch.arange(23) * 45 // 23), (torch.arange(31) * 61 // 31)  # nearest: floor(i · in / out)
    assert torch.equal(small[0], target[0][rows][:, cols])


def test_class_weights_reach_every_term_that_takes_them() -> None:
    out, _, target = _batch()
    w = torch.tensor([0.5, 2.0, 1.0])
    terms = (LossTerm("cross_entropy"), LossTerm("focal", 2.0), LossTerm("lovasz", 0.5), LossTerm("ohem_cross_entropy", 0.1))
    crit = build_criterion(LossConfig(terms=terms), 255, w)
    ce, focal, lovasz, ohem = crit.loss.losses
    assert ce.weight is w and focal.weight is w and ohem.weight is w and not hasattr(lovasz, "weight")
    expected = (
        _separate("cross_entropy", out, target, w) + 2.0 * _separate("focal", out, target, w)
        + 0.5 * _separate("lovasz", out, target) + 0.1 * _separate("ohem_cross_entropy", out, target, w)
    )  # fmt: skip
    assert crit({"out": out}, target).item() == pytest.approx(expected, rel=1e-6)


def test_class_weights_with_no_term_to_take_them_are_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^loss.class_weights: lovasz does not take class weights$"):
        build_criterion(LossConfig(name="lovasz"), 255, torch.ones(3))
    with pytest.raises(ConfigError, match=r"^loss.class_weights: lovasz, dice do not take class weights$"):
        build_criterion(LossConfig(terms=(LossTerm("lovasz"), LossTerm("dice"))), 255, torch.ones(3))


@pytest.mark.parametrize("cfg", [LossConfig(name="focal", terms=TERMS), LossConfig(params={"label_smoothing": 0.1}, terms=TERMS)])
def test_terms_with_name_or_params_is_an_error(cfg: LossConfig) -> None:
    with pytest.raises(ConfigError, match=r"^loss: set either loss.name/params or loss.terms, not both$"):
        build_criterion(cfg, 255)


def test_unknown_term_param_names_its_config_key() -> None:
    terms = (LossTerm("cross_entropy"), LossTerm("lovasz", params={"per_imag": True}))
    with pytest.raises(ConfigError, match=r"^loss.terms\[1\].params.per_imag: not a parameter of loss 'lovasz' \(did you mean 'per_image'\?\)"):
        build_criterion(LossConfig(terms=terms), 255)


def test_unknown_term_name_and_bad_weight_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown loss 'lovaz' \(did you mean 'lovasz'\?\)"):
        build_criterion(LossConfig(terms=(LossTerm("lovaz"),)), 255)
    with pytest.raises(ConfigError, match=r"^loss.terms\[0\].weight: expected a finite number ≥ 0, got -1.0$"):
        build_criterion(LossConfig(terms=(LossTerm("dice", -1.0),)), 255)


def test_ignore_index_in_params_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^loss.params.ignore_index: set from the dataset"):
        build_criterion(LossConfig(params={"ignore_index": 0}), 255)


def test_single_loss_keeps_its_module_and_builds_from_a_config_file_dict() -> None:
    assert isinstance(build_criterion(LossConfig(), 255).loss, CrossEntropy)
    cfg = config_from_dict({
        "model": {"name": "enet"}, "data": {"name": "synthetic"},
        "loss": {"terms": [{"name": "ohem_cross_entropy", "params": {"min_kept": 10}}, {"name": "lovasz", "weight": 0.5}]},
    })  # fmt: skip
    crit = build_criterion(cfg.loss, 255)
    assert crit.loss.weights == [1.0, 0.5] and crit.loss.losses[0].min_kept == 10


def test_class_weight_buffers_stay_out_of_the_state_dict() -> None:
    crit = build_criterion(LossConfig(terms=(LossTerm("cross_entropy"), LossTerm("focal"))), 255, torch.ones(3))
    assert crit.state_dict() == {}
