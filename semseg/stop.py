"""Ctrl-C (SIGINT) and SIGTERM as a polite request: finish the step, save a resumable checkpoint, exit.

A signal arriving in the middle of ``optimizer.step()`` must not leave half-updated
weights behind, so the handler only sets a flag that the training loop reads
between steps. A second Ctrl-C aborts at once (the last checkpoint stays intact:
saves are atomic).

Ctrl-C in a terminal signals the whole process group, so the forked ``DataLoader``
workers, which inherit this handler, receive it too. Only the process that
installed the handler reacts: in any other the handler does nothing, so a worker
neither logs the warning again nor stops, and keeps loading until the main process
shuts it down (PyTorch's workers also exit on their own when their parent dies).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any, Optional

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: while active, the first SIGINT/SIGTERM sets :attr:`requested`."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        self._owner: Optional[int] = None  # pid of the process that installed the handlers

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if os.getpid() != self._owner:  # a forked worker: the main process handles the stop
            return
        if self.requested:  # second signal: give up waiting
            self.__exit__()
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("%s received: stopping after this step and saving a resumable checkpoint "
                       "(press Ctrl-C again to abort now)", signal.Signals(signum).name)  # fmt: skip

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._owner = os.getpid()
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
