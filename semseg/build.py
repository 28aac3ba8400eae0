"""Steps the three scripts share: device, model, run folder, restoring a checkpoint, output paths."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

import semseg.models  # noqa: F401 - registers the models
from semseg.checkpoint import load_checkpoint, load_model_state, validated_weights
from semseg.config import Config, LossConfig, ModelConfig, apply_overrides, config_from_dict, load_config
from semseg.errors import CheckpointError, ConfigError, DataError
from semseg.losses import build_criterion
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


def check_loss(cfg: LossConfig) -> None:
    """Build the criterion once, with stand-in class weights, so a bad loss name or parameter is a
    one-line error *before* a run folder is made (train.py builds the real one after counting pixels)."""
    weight = torch.ones(1) if cfg.class_weights != "none" else None  # stands in for the counted weights
    build_criterion(cfg, ignore_index=255, weight=weight)


def next_run_dir(cfg: Config, config_path: Optional[str]) -> Path:
    """``<run_dir>/<name>``, or ``<name>-2``, ``-3``, … : the first that is missing or empty."""
    name = cfg.log.name or (Path(config_path).stem if config_path else "run")
    base = Path(cfg.log.run_dir) / name
    path, n = base, 1
    while path.exists() and (not path.is_dir() or any(path.iterdir())):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def new_run_dir(cfg: Config, config_path: Optional[str]) -> Path:
    """Create :func:`next_run_dir`; never reuses a folder that already holds a run (adds -2, -3, …)."""
    path = next_run_dir(cfg, config_path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"log.run_dir: cannot create the run folder {path} ({(exc.strerror or str(exc)).lower()})") from None
    return path


def check_classes(ckpt: dict[str, Any], classes: Sequence[str], dataset: str, checkpoint: str | Path) -> None:
    """The checkpoint was trained on the dataset's class list, or a one-line error saying how they differ."""
    trained = list(ckpt.get("classes") or [])
    if trained == list(classes):
        return
    if len(trained) != len(classes):
        raise CheckpointError(
            f"{checkpoint}: trained on {len(trained)} classes ({', '.join(trained[:4])}, …) but dataset "
            f"'{dataset}' has {len(classes)} ({', '.join(classes[:4])}, …); pass the dataset it was trained on"
        )
    i = next(i for i, (a, b) in enumerate(zip(trained, classes)) if a != b)
    raise CheckpointError(
        f"{checkpoint}: class {i} is '{trained[i]}' in the checkpoint but '{classes[i]}' in dataset '{dataset}'"
    )


def writable_dir(path: Path, what: str) -> None:
    """``path`` is (or can be created as) a folder this process may write to; else a one-line error.

    Checked before any work, so a long evaluation never ends in an unwritable output path.
    """
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise DataError(f"{path}: cannot make the {what}: {existing} exists and is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{path}: cannot write the {what}: {existing} is not writable")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file + rename: a failure leaves no half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write ({(exc.strerror or type(exc).__name__).lower()})") from None


def init_from_checkpoint(model: nn.Module, path: str, model_name: str, classes: Sequence[str], dataset: str) -> None:
    """Load a trained checkpoint's validated weights into ``model`` to start a *new* run from them.

    A fine-tuning stage (FC-DenseNet's full-frame stage, a longer or differently-cropped second run)
    needs the weights only: unlike a resume, the optimiser, schedule and epoch count start afresh.
    Every way the checkpoint can fail to fit is one line that names ``train.init_from``.
    """
    try:
        ckpt = load_checkpoint(path)
        trained = (ckpt.get("config") or {}).get("model", {}).get("name")
        if trained is not None and trained != model_name:
            raise CheckpointError(f"{path}: holds model '{trained}', but model.name is '{model_name}'")
        check_classes(ckpt, classes, dataset, path)
        weights, ema = validated_weights(ckpt)
        load_model_state(model, weights, f"{path} (EMA weights)" if ema else path)
    except CheckpointError as exc:
        raise CheckpointError(f"train.init_from: {exc}") from None
    epoch = (ckpt.get("state") or {}).get("epoch", "?")
    miou = (ckpt.get("metrics") or {}).get("miou")
    logger.info("weights from %s (%sepoch %s%s); optimiser, schedule and epochs start afresh", path,
                "EMA, " if ema else "", epoch, f", val mIoU {100 * miou:.2f}%" if miou is not None else "")  # fmt: skip


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
    weights, ema = validated_weights(ckpt)
    load_model_state(model, weights, f"{checkpoint} (EMA weights)" if ema else checkpoint)
    if ema:
        logger.info("%s: using the EMA weights", checkpoint)
    return model, cfg, ckpt
