"""The one place where scripts turn user errors and Ctrl-C into a one-line message and an exit code."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Callable

from tqdm.contrib.logging import logging_redirect_tqdm

from semseg.errors import SemsegError

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a job stopped by Ctrl-C


def console_through_tqdm() -> contextlib.AbstractContextManager:
    """Route the console log handler through ``tqdm.write``: a warning mid-epoch gets a line of its own,
    not the tail of the progress bar. Only where there is one (tqdm would otherwise add a stderr handler
    of its own, e.g. under pytest's log capture, and print every record a second time)."""
    if any(type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr) for h in logging.getLogger().handlers):
        return logging_redirect_tqdm()
    return contextlib.nullcontext()


def run_script(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a script's body with logging set up.

    A :class:`SemsegError` becomes ``error: …`` on stderr and its exit code; Ctrl-C
    (``KeyboardInterrupt``) becomes ``interrupted (Ctrl-C)`` and 130, not a traceback
    through the evaluation loop. train.py asks for the first Ctrl-C politely
    (semseg/stop.py) and returns 130 itself; its second, abort-now Ctrl-C ends here.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        with console_through_tqdm():
            return body(args)
    except SemsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED
