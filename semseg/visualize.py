"""Colour masks, overlays, and live curves in visdom that never slow training down.

The visdom logger sends from a background thread through a bounded queue: a
slow, absent or dying server costs the training loop nothing (messages are
dropped, with one warning), and the metrics log on disk stays complete.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import queue
import socket
import threading
import time
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


def _connect(server: str, port: int, env: str, timeout: float) -> Any:
    """A visdom client whose every request has a timeout (visdom's own have none: a hung server would hang us)."""
    import requests
    import visdom

    class TimedVisdom(visdom.Visdom):
        @property
        def session(self) -> requests.Session:  # visdom's logs "Setting up a new session..." as a warning
            if self._session is None:
                self._session = requests.Session()
            return self._session

        def _handle_post(self, url: str, data: Any = None) -> str:  # the documented override point
            return self.session.post(url, data={} if data is None else data, timeout=timeout).text

    # the constructor itself POSTs (env creation): it runs in the sender thread, never in training's
    return TimedVisdom(server=server, port=port, env=env, raise_exceptions=True, use_incoming_socket=False)


class VisdomLogger:
    """Curves and images to a visdom server, or nothing (one warning) when none answers.

    ``line``/``images`` only put a job on a bounded queue (microseconds); a daemon
    thread connects and sends, each request with a timeout. When the server is
    slower than training the queue fills and new plots are dropped, counted, with
    one warning; when it dies, sending fails fast, with one warning. ``close``
    returns within ``timeout`` seconds whatever the server does.
    """

    def __init__(self, server: str, port: int, env: str, enabled: bool = True, *,
                 request_timeout: float = 10.0, queue_size: int = 256) -> None:  # fmt: skip
        self._queue: Optional[queue.Queue] = None
        self._known_windows: set[str] = set()  # touched by the sender thread only
        self._failed = False
        self.dropped = 0  # plots not sent: queue full, or still queued when close() gave up
        self._closed = False
        self._deadline: Optional[float] = None
        if not enabled:
            return
        if not _server_reachable(server, port):
            logger.warning(
                "visdom server not reachable at %s:%d; training goes on, curves are in metrics.jsonl "
                "(start one with: python -m visdom.server -port %d)", server, port, port,
            )  # fmt: skip
            return
        if importlib.util.find_spec("visdom") is None:  # imported by the sender thread, not here
            logger.warning("visdom is not installed; curves are in metrics.jsonl only")
            return
        self._queue = queue.Queue(maxsize=queue_size)
        connect = functools.partial(_connect, server, port, env, request_timeout)
        self._thread = threading.Thread(target=self._drain, args=(connect,), name="visdom-logger", daemon=True)
        self._thread.start()
        logger.info("visdom: live curves at %s:%d (env '%s')", server, port, env)

    @property
    def active(self) -> bool:
        return self._queue is not None

    def _drain(self, connect: Callable[[], Any]) -> None:
        viz = None
        while True:
            job = self._queue.get()
            if job is None or (self._deadline is not None and time.monotonic() > self._deadline):
                return
            try:
                if viz is None:
                    viz = connect()  # retried with the next plot when the server did not answer
                job(viz)
            except Exception as exc:  # noqa: BLE001 - a logging failure must never stop training
                if not self._failed:
                    logger.warning("visdom stopped answering (%s); curves go on in metrics.jsonl", exc)
                    self._failed = True

    def _submit(self, job: Callable[[Any], Any]) -> None:
        if self._queue is None or self._closed:
            return
        try:
            self._queue.put_nowait(job)
        except queue.Full:  # the server is slower than training: drop, never block
            self.dropped += 1
            if self.dropped == 1:
                logger.warning("visdom server is slower than training: dropping plots (curves stay complete in metrics.jsonl)")

    def line(self, win: str, x: float, values: dict[str, float], title: str) -> None:
        """Append one point per named series to window ``win``."""
        names = list(values)
        y = np.array([[values[n] for n in names]])
        xs = np.array([[x] * len(names)])
        opts = {"title": title, "legend": names, "xlabel": "epoch" if "val" in win else "iteration"}

        def job(viz: Any) -> None:
            viz.line(Y=y, X=xs, win=win, update="append" if win in self._known_windows else None, opts=opts)
            self._known_windows.add(win)

        self._submit(job)

    def images(self, win: str, images: np.ndarray, title: str, nrow: int = 3) -> None:
        """Show N×3×H×W uint8 images as a grid."""
        self._submit(lambda viz: viz.images(images, win=win, nrow=nrow, opts={"title": title, "caption": title}))

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued for at most ``timeout`` seconds, then give up on the rest."""
        if self._queue is None or self._closed:
            return
        self._closed = True
        self._deadline = time.monotonic() + timeout
        while True:  # the end marker must get in, even if that drops the oldest plot
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
                    self.dropped += 1
        self._thread.join(timeout)
        unsent = self._queue.qsize() - 1 if self._thread.is_alive() else 0
        if unsent > 0 or self.dropped:
            self.dropped += max(0, unsent)
            logger.warning("visdom: %d plots were not sent (server too slow or gone); metrics.jsonl has them all", self.dropped)
