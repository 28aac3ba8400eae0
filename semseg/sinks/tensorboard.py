"""TensorBoard as a second sink: the same scalars and image grids, as event files in the run folder.

Written with ``torch.utils.tensorboard`` (which needs the ``tensorboard`` package) under
``<run>/tensorboard/``; watch with ``tensorboard --logdir runs``. Every point is logged at
its training iteration, so a resume can purge what the interrupted run logged after its
checkpoint (``purge_step``) and the curves have no doubled tail.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from semseg.errors import ConfigError
from semseg.sinks import Point

logger = logging.getLogger(__name__)


def check_available() -> None:
    """Fail before any work when ``log.tensorboard`` is on but the package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("log.tensorboard: the tensorboard package is not installed (pip install tensorboard)")


def tag(point_key: str, series: str) -> str:
    return f"{point_key}/{series.replace(' ', '_')}"


def image_grid(images: np.ndarray, ncol: int = 3) -> np.ndarray:
    """N×3×H×W uint8 → one 3×(rows·H)×(ncol·W) grid, rows of image / truth / prediction."""
    n, c, h, w = images.shape
    rows = -(-n // ncol)
    grid = np.zeros((c, rows * h, ncol * w), dtype=images.dtype)
    for i, image in enumerate(images):
        r, k = divmod(i, ncol)
        grid[:, r * h : (r + 1) * h, k * w : (k + 1) * w] = image
    return grid


class TensorBoardSink:
    def __init__(self, log_dir: Path, purge_step: Optional[int] = None) -> None:
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.writer: Any = SummaryWriter(str(log_dir), purge_step=purge_step)
        logger.info("tensorboard: event files in %s (tensorboard --logdir %s)", log_dir, log_dir.parent.parent)

    def scalars(self, point: Point) -> None:
        for series, value in point.values.items():
            self.writer.add_scalar(tag(point.panel.key, series), value, point.iteration)

    def images(self, key: str, images: np.ndarray, caption: str, iteration: int) -> None:
        self.writer.add_image(key, image_grid(images), iteration, dataformats="CHW")

    def text(self, key: str, text: str) -> None:
        self.writer.add_text(key, text, 0)

    def close(self) -> None:
        self.writer.close()
