"""User-facing errors.

Every mistake a user can make (a bad config key, a missing dataset folder, a
checkpoint from another model) raises a :class:`SemsegError` subclass whose
message is one line naming the culprit. The scripts catch ``SemsegError`` once,
print the message and exit non-zero, so users never read a deep traceback for
their own typo.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


class SemsegError(Exception):
    """Base class: the message is shown to the user as-is, on one line."""

    exit_code = 2

    def __init__(self, message: object = "") -> None:
        super().__init__(one_line(str(message)))


def one_line(message: str) -> str:
    """``message`` on one line.

    A ``DataLoader`` worker's error reaches the main process re-raised as
    ``DataError("Caught DataError in DataLoader worker process 0.\\nOriginal Traceback …")``
    (``torch._utils.ExceptionWrapper.reraise``): the original one-line message is the
    traceback's last line, after the exception's name. Any other line break is folded.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 2 and lines[0].startswith("Caught ") and lines[1].startswith("Original Traceback"):
        return lines[-1].split(": ", 1)[-1]
    return " ".join(lines)


class ConfigError(SemsegError):
    """A config file, a ``--set`` override or a registry name is wrong."""


class DataError(SemsegError):
    """A dataset root, split or file is missing or malformed."""


class CheckpointError(SemsegError):
    """A checkpoint is missing, truncated or does not fit the model."""


class RunFolderError(SemsegError):
    """A file in the run folder (metrics log, resolved config, class statistics) cannot be written."""


def os_reason(exc: OSError) -> str:
    """``"no space left on device"``: the part of an ``OSError`` a user needs."""
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


@contextlib.contextmanager
def writing(path: object) -> Iterator[None]:
    """Turn an ``OSError`` (disk full, quota, permissions) while writing ``path`` into one line.

    Checkpoints are written atomically elsewhere, so what is already saved stays loadable.
    """
    try:
        yield
    except OSError as exc:
        raise RunFolderError(f"{path}: cannot write: {os_reason(exc)} (checkpoints already saved are intact)") from exc
