"""The one place where scripts turn user errors into a one-line message and an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from semseg.errors import SemsegError


def run_script(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a script's body with logging set up; a :class:`SemsegError` becomes ``error: …`` on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return body(args)
    except SemsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
