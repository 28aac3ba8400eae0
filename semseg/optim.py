"""Optimiser construction and the learning-rate schedule as a pure function.

The LR is ``base_lr * lr_factor(iteration)`` recomputed every step (nanoGPT's
``get_lr(it)``), so resuming at iteration k restores the schedule exactly with
no scheduler state to save.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from semseg.config import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only; none on norm parameters and biases (1-D tensors)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(iteration: int, total_iters: int, iters_per_epoch: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base LR at ``iteration`` (0-based) of ``total_iters``.

    Linear warmup multiplies the main schedule (as mmseg does), so the curve is
    continuous where the warmup ends.
    """
    progress = min(1.0, iteration / max(1, total_iters))
    if cfg.name == "poly":
        factor = (1 - progress) ** cfg.power
    elif cfg.name == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.name == "step":
        factor = cfg.gamma ** (iteration // max(1, cfg.step_size * iters_per_epoch))
    else:
        factor = 1.0
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
