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


BACKBONE_PREFIXES = ("backbone.", "encoder.")  # where models keep their (ImageNet-pretrained) trunk


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Up to four groups: trunk vs head × decayed vs not.

    No weight decay on norm parameters and biases (1-D tensors), as in timm and
    mmseg's ``paramwise_cfg``; the trunk's LR is ``backbone_lr_mult`` × the head's,
    its decay ``backbone_weight_decay`` (default: the same). ``lr_mult`` is kept in
    each group so :func:`set_lr` can apply the schedule to all of them.
    """
    backbone_decay = cfg.weight_decay if cfg.backbone_weight_decay is None else cfg.backbone_weight_decay
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((name.startswith(BACKBONE_PREFIXES), param.ndim > 1), []).append(param)
    out = []
    for (is_backbone, decays), params in sorted(groups.items()):
        decay = (backbone_decay if is_backbone else cfg.weight_decay) if decays else 0.0
        out.append({"params": params, "weight_decay": decay, "lr_mult": cfg.backbone_lr_mult if is_backbone else 1.0})
    return out


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.name == "rmsprop":  # LinkNet and FC-DenseNet trained with it; eps as Lasagne/Torch7 (1e-6..1e-8 barely matters)
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=cfg.alpha, eps=1e-8)
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
        group["lr"] = lr * group.get("lr_mult", 1.0)
