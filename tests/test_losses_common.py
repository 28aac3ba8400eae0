"""Contract every registered loss keeps: float32 scalar, finite gradients, ignored pixels inert."""

from __future__ import annotations

import pytest
import torch

from semseg.losses import LOSSES

NAMES = LOSSES.names()


def _logits_and_target() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0, :3] = 255
    target[1, 2:, 1] = 255
    return logits, target


def _loss_and_grad(name: str, logits: torch.Tensor, target: torch.Tensor, **params) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.clone().requires_grad_(True)
    loss = LOSSES.build(name, ignore_index=255, **params)(logits, target)
    loss.backward()
    return loss.detach(), logits.grad


def test_the_expected_losses_are_registered() -> None:
    assert {"cross_entropy", "ohem_cross_entropy", "lovasz", "focal", "dice"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_fully_ignored_target_gives_zero_and_finite_zero_gradient(name: str) -> None:
    loss, grad = _loss_and_grad(name, torch.randn(2, 3, 4, 5), torch.full((2, 4, 5), 255))
    assert loss.item() == 0.0
    assert torch.isfinite(grad).all() and (grad == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_ignored_pixels_change_neither_loss_nor_other_gradients(name: str) -> None:
    logits, target = _logits_and_target()
    loss, grad = _loss_and_grad(name, logits, target)
    ignored = (target == 255).unsqueeze(1).expand_as(logits)
    shaken = torch.where(ignored, 50 * torch.randn_like(logits), logits)
    loss2, grad2 = _loss_and_grad(name, shaken, target)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6, abs=1e-7)
    assert torch.allclose(grad2, grad, atol=1e-7)
    assert (grad[ignored] == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_float32_under_bf16_autocast(name: str) -> None:
    logits, target = _logits_and_target()
    half = logits.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = LOSSES.build(name, ignore_index=255)(half, target)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    reference = LOSSES.build(name, ignore_index=255)(half.float(), target)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_a_shape_mismatch_is_a_clear_error(name: str) -> None:
    with pytest.raises(ValueError, match="do not match"):
        LOSSES.build(name, ignore_index=255)(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
