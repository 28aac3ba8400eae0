"""Colour masks, overlays, and live curves in visdom that never slow training down.

The visdom logger sends from a background thread through a bounded queue: a
slow, absent or dying server costs the training loop nothing (messages are
dropped, with one warning), and the metrics log on disk stays complete.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from typing import Any, Callable, Optional, Sequence
from urllib.parse import urlparse

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)


def colorize(ids: np.ndarray, palette: Sequence[tuple[int, int, int]], ignore_index: int = 255) -> np.ndarray:
    """H×W class ids → H×W×3 uint8 colours; ignored (and out-of-range) pixels are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[np.asarray(ids, dtype=np.uint8)]


def overlay(image: Image.Image, colors: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a colour mask over the RGB image it was predicted from."""
    return Image.blend(image.convert("RGB"), Image.fromarray(colors, mode="RGB"), alpha)


def denormalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """3×H×W normalised float image → H×W×3 uint8 RGB."""
    rgb = image.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def _server_reachable(server: str, port: int, timeout: float = 0.5) -> bool:
    host = urlparse(server if "//" in server else f"http://{server}").hostname or "localhost"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class VisdomLogger:
    """Curves and images to a visdom server, or nothing (one warning) when none answers."""

    def __init__(self, server: str, port: int, env: str, enabled: bool = True) -> None:
        self._queue: Optional[queue.Queue] = None
        self._known_windows: set[str] = set()
        self._failed = False
        if not enabled:
            return
        if not _server_reachable(server, port):
            logger.warning(
                "visdom server not reachable at %s:%d; training goes on, curves are in metrics.jsonl "
                "(start one with: python -m visdom.server -port %d)", server, port, port,
            )  # fmt: skip
            return
        try:
            import visdom
        except ImportError:
            logger.warning("visdom is not installed; curves are in metrics.jsonl only")
            return
        self._viz = visdom.Visdom(server=server, port=port, env=env, raise_exceptions=True, use_incoming_socket=False)
        self._queue = queue.Queue(maxsize=256)
        self._thread = threading.Thread(target=self._drain, name="visdom-logger", daemon=True)
        self._thread.start()
        logger.info("visdom: live curves at %s:%d (env '%s')", server, port, env)

    @property
    def active(self) -> bool:
        return self._queue is not None

    def _drain(self) -> None:
        jobs = self._queue
        while jobs is not None:
            job = jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - a logging failure must never stop training
                if not self._failed:
                    logger.warning("visdom stopped answering (%s); curves go on in metrics.jsonl", exc)
                    self._failed = True

    def _submit(self, job: Callable[[], Any]) -> None:
        if self._queue is None:
            return
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            pass  # the server is slower than training: drop, never block

    def line(self, win: str, x: float, values: dict[str, float], title: str) -> None:
        """Append one point per named series to window ``win``."""
        names = list(values)
        y = np.array([[values[n] for n in names]])
        xs = np.array([[x] * len(names)])

        def job() -> None:
            update = "append" if win in self._known_windows else None
            self._viz.line(Y=y, X=xs, win=win, update=update, opts={"title": title, "legend": names, "xlabel": "epoch" if "val" in win else "iteration"})
            self._known_windows.add(win)

        self._submit(job)

    def images(self, win: str, images: np.ndarray, title: str, nrow: int = 3) -> None:
        """Show N×3×H×W uint8 images as a grid."""
        self._submit(lambda: self._viz.images(images, win=win, nrow=nrow, opts={"title": title, "caption": title}))

    def close(self, timeout: float = 5.0) -> None:
        if self._queue is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
