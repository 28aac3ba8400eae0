"""One logging seam: the training loop feeds :class:`LiveLog` once; visdom and TensorBoard are sinks behind it.

``metrics.jsonl`` is the source of truth. :func:`points` turns one of its records into
the chart points every sink draws (the same function serves live logging and replay),
so a sink can always be rebuilt from the file: visdom replays it whenever it
(re)connects, and ``python -m semseg.replay runs/<name>`` shows a finished run.
The loop never knows which sinks are on.

mIoU and IoU are drawn in percent, the unit the console and ``tools/plot_run.py``
use; the file keeps fractions.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from semseg.config import LogConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Panel:
    """One chart: a visdom window, a TensorBoard tag group."""

    key: str  # window id / tag prefix
    title: str
    xlabel: str  # "iteration" or "epoch"
    ylabel: str
    markers: bool = False  # validation comes once per epoch: a single point must show
    yrange: Optional[tuple[float, float]] = None  # a fixed axis, e.g. 0–100 % or 0 to the peak learning rate


@dataclass(frozen=True)
class Point:
    panel: Panel
    iteration: int  # monotone per panel: TensorBoard's step, and how a replay knows what it already drew
    x: float  # on the panel's own axis (iteration or epoch)
    values: dict[str, float]  # series name → value; NaN where undefined (a class absent from truth and prediction)


TRAIN_LOSS = Panel("train_loss", "training loss", "iteration", "loss")
VAL_MIOU = Panel("val_miou", "validation mIoU and pixel accuracy (%)", "epoch", "%", markers=True, yrange=(0.0, 100.0))
VAL_CLASS_IOU = Panel("val_class_iou", "validation IoU per class (%)", "epoch", "IoU %", markers=True, yrange=(0.0, 100.0))


def lr_panel(peak_lr: Optional[float]) -> Panel:
    """The learning-rate chart on 0 … peak: a constant rate is a flat line, not noise magnified by autoscaling."""
    yrange = (0.0, 1.05 * peak_lr) if peak_lr and math.isfinite(peak_lr) and peak_lr > 0 else None
    return Panel("lr", "learning rate", "iteration", "learning rate", yrange=yrange)


def percent(value: Any) -> float:
    return 100.0 * float(value) if value is not None else math.nan


def points(record: dict[str, Any], peak_lr: Optional[float] = None) -> list[Point]:
    """The chart points of one ``metrics.jsonl`` record (none for a record type no chart shows)."""
    it = int(record["iteration"])
    if record["type"] == "train":
        return [Point(TRAIN_LOSS, it, it, {"loss": float(record["loss"])}),
                Point(lr_panel(peak_lr), it, it, {"lr": float(record["lr"])})]  # fmt: skip
    if record["type"] == "val":
        epoch = float(record["epoch"])
        summary = {"mIoU": percent(record["miou"]), "pixel acc": percent(record["pixel_acc"])}
        per_class = {name: percent(v) for name, v in record["iou"].items()}
        return [Point(VAL_MIOU, it, epoch, summary), Point(VAL_CLASS_IOU, it, epoch, per_class)]
    return []


def history(records: Sequence[dict[str, Any]], peak_lr: Optional[float]) -> dict[str, list[Point]]:
    """Every point of ``records``, by panel key, in order: what a replay draws."""
    by_panel: dict[str, list[Point]] = {}
    for record in records:
        for point in points(record, peak_lr):
            by_panel.setdefault(point.panel.key, []).append(point)
    return by_panel


class Sink(Protocol):
    """What a backend implements; each call must return at once (a sink never slows training)."""

    def scalars(self, point: Point) -> None: ...

    def images(self, key: str, images: np.ndarray, caption: str, iteration: int) -> None:
        """N×3×H×W uint8 images, drawn as one grid of rows of three."""

    def text(self, key: str, text: str) -> None: ...

    def close(self) -> None: ...


class LiveLog:
    """The training loop's one handle on every sink that is on (possibly none)."""

    def __init__(self, sinks: Sequence[Sink], peak_lr: Optional[float] = None) -> None:
        self.sinks, self.peak_lr = list(sinks), peak_lr

    def record(self, record: dict[str, Any]) -> None:
        """Draw a record that was just written to ``metrics.jsonl``."""
        for point in points(record, self.peak_lr):
            for sink in self.sinks:
                sink.scalars(point)

    def images(self, key: str, images: np.ndarray, caption: str, iteration: int) -> None:
        for sink in self.sinks:
            sink.images(key, images, caption, iteration)

    def text(self, key: str, text: str) -> None:
        for sink in self.sinks:
            sink.text(key, text)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def new_env_name(run_dir: Path) -> str:
    """``<run folder>_<start time>``: two runs never draw into one visdom environment."""
    return f"{run_dir.name}_{time.strftime('%Y%m%d-%H%M%S')}"


def build_live_log(cfg: "LogConfig", run_dir: Path, peak_lr: Optional[float], resumed_at: Optional[int] = None) -> LiveLog:
    """The sinks ``cfg`` turns on, for the run in ``run_dir`` (``resumed_at``: the checkpoint's iteration)."""
    sinks: list[Sink] = []
    if cfg.visdom:
        from semseg.sinks.visdom import VisdomSink

        sinks.append(VisdomSink(cfg.visdom_server, cfg.visdom_port, cfg.visdom_env or run_dir.name, run_dir / "metrics.jsonl", peak_lr))
    if cfg.tensorboard:
        from semseg.sinks.tensorboard import TensorBoardSink

        sinks.append(TensorBoardSink(run_dir / "tensorboard", purge_step=None if resumed_at is None else resumed_at + 1))
    return LiveLog(sinks, peak_lr)
