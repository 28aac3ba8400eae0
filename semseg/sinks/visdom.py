"""Live curves in visdom that never slow training down and never leave holes.

Calls only put a job on a bounded queue (microseconds); a daemon thread connects
and sends, each request with a timeout. The server may be absent at the start,
die, come back or be slower than training: the thread redraws every curve from
``metrics.jsonl`` (:func:`semseg.sinks.history`) each time it (re)connects and
after it had to drop plots, so what the tab shows is always the whole run. One
warning per outage and one line when the server is back; nothing per plot.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlparse

import numpy as np

from semseg.errors import SemsegError
from semseg.runlog import read_metrics
from semseg.sinks import Panel, Point, history

logger = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # how often an absent server is probed (a TCP connect, 0.5 s at most)
GRID_PANE_WIDTH = 760  # px: three 480-px CamVid frames side by side would fill a laptop screen


def server_reachable(server: str, port: int, timeout: float = 0.5) -> bool:
    host = urlparse(server if "//" in server else f"http://{server}").hostname or "localhost"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def env_url(server: str, port: int, env: str) -> str:
    """The page that opens straight on ``env`` (visdom's ``/env/<name>`` route)."""
    base = server if "//" in server else f"http://{server}"
    return f"{base.rstrip('/')}:{port}/env/{env}"


def connect(server: str, port: int, env: str, timeout: float) -> Any:
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

    # visdom warns that a client without the incoming socket gets no events: we want none, so say nothing
    quiet = logging.getLogger("visdom")
    level, quiet.level = quiet.level, logging.ERROR
    try:  # the constructor POSTs (env creation): it runs in the sender thread, never in training's
        return TimedVisdom(server=server, port=port, env=env, raise_exceptions=True, use_incoming_socket=False)
    finally:
        quiet.setLevel(level)


def line_opts(panel: Panel, legend: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {"title": panel.title, "legend": legend, "xlabel": panel.xlabel, "ylabel": panel.ylabel,
                            "markers": panel.markers, "markersize": 6}  # fmt: skip
    if panel.yrange is not None:
        opts["ytickmin"], opts["ytickmax"] = panel.yrange
    return opts


def grid_pane_size(shape: tuple[int, ...], ncol: int = 3, max_width: int = GRID_PANE_WIDTH) -> dict[str, int]:
    """A pane that shows the whole grid at most ``max_width`` wide: the browser scales it, the data stays full size."""
    n, _, h, w = shape
    scale = min(1.0, max_width / (ncol * w))
    return {"width": round(ncol * w * scale) + 20, "height": round(-(-n // ncol) * h * scale) + 70}


class VisdomSink:
    """Curves, image grids and text in one visdom environment; see the module docstring."""

    def __init__(self, server: str, port: int, env: str, metrics_path: Optional[Path] = None,
                 peak_lr: Optional[float] = None, *, request_timeout: float = 10.0, queue_size: int = 256,
                 retry_seconds: float = RETRY_SECONDS) -> None:  # fmt: skip
        self.server, self.port, self.env = server, port, env
        self.url = env_url(server, port, env)
        self._metrics_path, self._peak_lr = metrics_path, peak_lr
        self._timeout, self._retry = request_timeout, retry_seconds
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._drawn: dict[str, int] = {}  # panel key → last iteration drawn (sender thread only)
        self._latest: dict[str, Callable[[Any], Any]] = {}  # image grids and texts, redrawn after a reconnect
        self._viz: Any = None
        self._ever_connected = False
        self._stale = False  # points were dropped: redraw from the file once the queue is drained
        self.dropped = 0  # plots not sent: queue full, or still queued when close() gave up
        self._closed = False
        self._deadline: Optional[float] = None
        self._next_probe = 0.0
        if not server_reachable(server, port):
            logger.warning("visdom server not reachable at %s:%d; training goes on (curves are in metrics.jsonl) and they "
                           "appear in %s once one answers (start one: python -m semseg.visdom_server -port %d)",
                           server, port, self.url, port)  # fmt: skip
            self._next_probe = time.monotonic() + self._retry
        self._thread = threading.Thread(target=self._drain, name="visdom-sink", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self._viz is not None

    # ------------------------------------------------------------------ the training thread's side

    def _submit(self, job: Callable[[Any], Any], key: Optional[str] = None) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait((job, key))
        except queue.Full:  # drop, never block; the points are redrawn from metrics.jsonl
            self._stale = True
            if not self.connected:
                return  # no server: nothing is being sent anyway, and the replay on connecting draws it all
            self.dropped += 1
            if self.dropped == 1:
                logger.warning("visdom server is slower than training: dropping plots (redrawn from metrics.jsonl when it catches up)")

    def scalars(self, point: Point) -> None:
        self._submit(lambda viz: self._append(viz, point), None)

    def images(self, key: str, images: np.ndarray, caption: str, iteration: int) -> None:
        opts = {"title": caption, "caption": caption, **grid_pane_size(images.shape)}
        self._submit(lambda viz: viz.images(images, win=key, nrow=3, opts=opts), key)

    def text(self, key: str, text: str) -> None:
        self._submit(lambda viz: viz.text(text, win=key, opts={"title": key}), key)

    # ------------------------------------------------------------------ the sender thread

    def _append(self, viz: Any, point: Point) -> None:
        key = point.panel.key
        if point.iteration <= self._drawn.get(key, -1):
            return  # a replay drew it already
        if key in self._drawn and viz.win_exists(key, env=self.env) is False:
            # the server restarted between two plots (its environments live in memory): nothing failed, but the
            # window is gone; redraw the whole run, which includes this point
            replayed = self._replay(viz)
            logger.info("visdom server at %s:%d lost the run's windows (restarted?); %d points redrawn from metrics.jsonl",
                        self.server, self.port, replayed)  # fmt: skip
            return
        names = list(point.values)
        y = np.array([[point.values[n] for n in names]], dtype=float)
        x = np.full_like(y, point.x)
        viz.line(Y=y, X=x, win=key, update="append" if key in self._drawn else None, opts=line_opts(point.panel, names))
        self._drawn[key] = point.iteration

    def _replay(self, viz: Any) -> int:
        """Redraw every curve from ``metrics.jsonl``, then the latest images and texts; returns the points drawn."""
        records: list[dict] = []
        if self._metrics_path is not None:
            with contextlib.suppress(SemsegError):  # no record yet, or no file: nothing to redraw
                records = read_metrics(self._metrics_path.parent)
        count = 0
        for key, pts in history(records, self._peak_lr).items():
            names = list(pts[-1].values)
            y = np.array([[p.values.get(n, np.nan) for n in names] for p in pts], dtype=float)
            x = np.repeat(np.array([[p.x] for p in pts], dtype=float), len(names), axis=1)
            viz.line(Y=y if len(names) > 1 else y[:, 0], X=x if len(names) > 1 else x[:, 0], win=key,
                     opts=line_opts(pts[-1].panel, names))  # fmt: skip
            self._drawn[key] = pts[-1].iteration
            count += len(pts)
        for job in list(self._latest.values()):
            job(viz)
        return count

    def _try_connect(self) -> None:
        self._next_probe = time.monotonic() + self._retry
        if not server_reachable(self.server, self.port):
            return
        try:
            viz = connect(self.server, self.port, self.env, self._timeout)
            replayed = self._replay(viz)
        except Exception:  # noqa: BLE001 - it answered a TCP connect but not visdom's API: try again later
            return
        self._viz, self._stale = viz, False
        if self._ever_connected:
            logger.info("visdom server back at %s:%d; %d points redrawn from metrics.jsonl", self.server, self.port, replayed)
        else:
            logger.info("visdom: live curves at %s", self.url)
        self._ever_connected = True

    def _lost(self, exc: Exception) -> None:
        self._viz, self._next_probe = None, time.monotonic() + self._retry
        logger.warning("visdom server at %s:%d stopped answering (%s); training goes on, and the curves are redrawn "
                       "from metrics.jsonl when it is back", self.server, self.port, type(exc).__name__)  # fmt: skip

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._retry)
            except queue.Empty:
                item = (None, "tick")
            if item is None and self._viz is None and time.monotonic() < (self._deadline or 0):
                self._try_connect()  # a server started late still gets the finished run's curves
            if item is None or (self._deadline is not None and time.monotonic() > self._deadline):
                return
            job, key = item
            if key is not None and key != "tick":
                self._latest[key] = job  # the newest grid / text per window, for redraws
            if self._viz is None:
                if time.monotonic() >= self._next_probe:
                    self._try_connect()  # a replay draws what this job would have
                continue
            try:
                if job is not None:
                    job(self._viz)
                if self._stale and self._queue.empty():
                    self._stale = False
                    self._replay(self._viz)
            except Exception as exc:  # noqa: BLE001 - a logging failure must never stop training
                self._lost(exc)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued for at most ``timeout`` seconds, then give up on the rest."""
        if self._closed:
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
        unsent = self._queue.qsize() - 1 if self._thread.is_alive() and self.connected else 0
        if unsent > 0 or self.dropped:
            self.dropped += max(0, unsent)
            logger.warning("visdom: %d plots were not sent (server too slow or gone); metrics.jsonl has them all", self.dropped)
