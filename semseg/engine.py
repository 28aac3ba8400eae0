"""One training epoch and one evaluation pass, shared by train.py and validate.py."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from semseg.errors import SemsegError
from semseg.metrics import ConfusionMatrix
from semseg.optim import set_lr

logger = logging.getLogger(__name__)

MAX_NON_FINITE_IN_A_ROW = 10


@dataclass
class TrainState:
    """Everything about progress that a resume must restore."""

    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimiser steps taken
    best_miou: float = -1.0
    non_finite_steps: int = 0


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int], float],
    state: TrainState,
    device: torch.device,
    log: Callable[[dict], None],
    print_every: int = 20,
) -> float:
    """Train one pass over ``loader``; returns the mean loss of the finite steps.

    A non-finite loss skips its step (weights untouched) and is counted; after
    ``MAX_NON_FINITE_IN_A_ROW`` in a row training stops with a clear error rather
    than writing NaN weights over a good checkpoint.
    """
    model.train()
    total, steps, in_a_row = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1}", leave=False, dynamic_ncols=True, disable=None)  # None: only on a terminal
    for images, masks in bar:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        lr = lr_at(state.iteration)
        set_lr(optimizer, lr)
        loss = criterion(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(loss.item()):
            state.non_finite_steps += 1
            in_a_row += 1
            logger.warning("non-finite loss at iteration %d; step skipped", state.iteration)
            if in_a_row >= MAX_NON_FINITE_IN_A_ROW:
                raise SemsegError(
                    f"loss was non-finite for {in_a_row} steps in a row at iteration {state.iteration}; "
                    "lower optim.lr or check the data (last good checkpoint kept)"
                )
            continue
        in_a_row = 0
        loss.backward()
        optimizer.step()
        state.iteration += 1
        total += loss.item()
        steps += 1
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
        if state.iteration % print_every == 0:
            log({"type": "train", "epoch": state.epoch + 1, "iteration": state.iteration, "loss": loss.item(), "lr": lr})
    return total / max(1, steps)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    keep: int = 0,
) -> tuple[ConfusionMatrix, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Confusion matrix over ``loader``, plus the first ``keep`` (image, truth, prediction) triples."""
    model.eval()
    confusion = ConfusionMatrix(num_classes, ignore_index, device)
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for images, masks in tqdm(loader, desc="eval", leave=False, dynamic_ncols=True, disable=None):
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        pred = predict(model, images)
        confusion.update(pred, masks)
        for i in range(min(images.shape[0], keep - len(kept))):
            kept.append((images[i].cpu(), masks[i].cpu(), pred[i].cpu()))
    return confusion, kept


def predict(model: nn.Module, images: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
    """Whole-image prediction: class ids N×H×W (or softmax N×C×H×W)."""
    logits = model(images)["out"]
    return logits.softmax(1) if probabilities else logits.argmax(1)

