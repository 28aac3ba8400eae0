"""Steps the three scripts share: device, model, run folder, restoring a checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

import semseg.models  # noqa: F401 - registers the models
from semseg.checkpoint import load_checkpoint, load_model_state
from semseg.config import Config, ModelConfig, apply_overrides, config_from_dict, load_config
from semseg.errors import CheckpointError, ConfigError
from semseg.registry import MODELS

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: '{name}' is not a device (use auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: '{name}' asked for but CUDA is not available here")
    return device


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    if "num_classes" in cfg.params:
        raise ConfigError("model.params.num_classes: set by the dataset's class list, remove it from params")
    return MODELS.build_checked(cfg.name, dict(cfg.params, num_classes=num_classes), where="model.params")


def new_run_dir(cfg: Config, config_path: Optional[str]) -> Path:
    """``<run_dir>/<name>``; never reuses a folder that already holds a run (adds -2, -3, …)."""
    name = cfg.log.name or (Path(config_path).stem if config_path else "run")
    base = Path(cfg.log.run_dir) / name
    path, n = base, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def restore(checkpoint: str, overrides: list[str], config_path: Optional[str] = None) -> tuple[nn.Module, Config, dict[str, Any]]:
    """Model with weights + the config it was trained with (``--set`` applied), from a checkpoint."""
    ckpt = load_checkpoint(checkpoint)
    if config_path is not None:
        cfg = load_config(config_path, overrides)
    else:
        if "config" not in ckpt:
            raise ConfigError(f"{checkpoint}: holds no config; pass --config")
        cfg = config_from_dict(apply_overrides(ckpt["config"], overrides), f"{checkpoint} (stored config)")
    if not ckpt.get("classes") or not ckpt.get("palette"):
        raise CheckpointError(f"{checkpoint}: holds no class list or palette (was it written by train.py?)")
    model = build_model(cfg.model, len(ckpt["classes"]))
    load_model_state(model, ckpt["model"], checkpoint)
    return model, cfg, ckpt
