"""Checkpoints that are never half-written and explain why they do not fit.

Saving writes a temporary file in the same folder, fsyncs it and renames it
over the target: a crash, a ``kill -9`` or a full disk mid-write leaves the
previous checkpoint intact. A full disk (any ``OSError``) becomes one
:class:`CheckpointError` naming the file, and its temporary file is removed;
those a killed process could not remove are swept by
:func:`remove_stale_temp_files` when training (re)starts. Loading turns every
failure (missing, truncated, another model, another class count, a newer
format) into one :class:`CheckpointError`.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from semseg.errors import CheckpointError, os_reason

FORMAT_VERSION = 1
TEMP_SUFFIX = ".tmp"  # save_atomic writes .<name>.<random>.tmp next to <name>

logger = logging.getLogger(__name__)


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to ``path`` via temp file + fsync + rename (POSIX-atomic).

    Any ``OSError`` (disk full, quota, permissions) removes the temporary file and
    raises a one-line :class:`CheckpointError`; ``path`` itself is never touched then.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            kept = f"the previous {path.name} is unchanged" if path.is_file() else "nothing was written"
            raise CheckpointError(f"{path}: cannot save checkpoint: {os_reason(exc)} ({kept})") from exc
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files that a killed save left in ``run_dir``; returns them.

    Only call it while no other process saves into ``run_dir`` (train.py does, at start).
    """
    stale = sorted(p for p in Path(run_dir).glob(f".*.pt.*{TEMP_SUFFIX}") if p.is_file())
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        logger.warning("removed %d stale temporary file(s) left by an interrupted save in %s: %s",
                       len(stale), run_dir, ", ".join(p.name for p in stale))  # fmt: skip
    return stale


def prune_epoch_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest ``epoch_XXXX.pt`` (``last.pt``/``best.pt`` are never touched)."""
    snapshots = sorted(Path(run_dir).glob("epoch_[0-9]*.pt"))
    for old in snapshots[: max(0, len(snapshots) - keep)]:
        old.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file (e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except OSError as exc:  # permissions, I/O error: the file may be fine
        raise CheckpointError(f"{path}: cannot read checkpoint ({(exc.strerror or type(exc).__name__).lower()})") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle garbage, …: all "unreadable"
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or not a checkpoint: {type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: not a semseg checkpoint (no 'model' entry)")
    version = ckpt.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: not a semseg checkpoint (format_version {version!r} is not a number)")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this semseg supports ({FORMAT_VERSION}); upgrade semseg"
        )
    return ckpt


RESUME_KEYS = ("config", "optimizer", "state", "rng")  # what train.py needs besides the weights to continue a run


def check_resumable(ckpt: dict[str, Any], path: str | Path) -> None:
    """One line when ``ckpt`` holds weights but not what continuing its run needs (a converted or
    hand-made ``.pt``): it can still start a new run through ``train.init_from``."""
    absent = [key for key in RESUME_KEYS if not isinstance(ckpt.get(key), dict)]
    if absent:
        raise CheckpointError(f"{path}: cannot resume: holds no {', '.join(absent)} (not a training checkpoint); "
                              f"to start a new run from its weights use --set train.init_from={path}")  # fmt: skip


def validated_weights(ckpt: dict[str, Any]) -> tuple[dict[str, torch.Tensor], bool]:
    """The model weights train.py validated (and chose ``best.pt`` by): the EMA copy when the run kept
    one, else the trained weights; the flag says which."""
    if ckpt.get("ema") is not None:
        return {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}, True
    return ckpt["model"], False


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else f"({type(value).__name__}, not a tensor)"


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Strict load whose error lists the differing keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {_shape(state[k])} vs model {_shape(v)}" for k, v in own.items() if k in state and _shape(state[k]) != _shape(v)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch: {'; '.join(shapes[:3])}{' …' if len(shapes) > 3 else ''}")
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(map(str, unexpected[:3]))}{' …' if len(unexpected) > 3 else ''}")
        raise CheckpointError(f"{path}: checkpoint does not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
