"""User-facing errors.

Every mistake a user can make (a bad config key, a missing dataset folder, a
checkpoint from another model) raises a :class:`SemsegError` subclass whose
message is one line naming the culprit. The scripts catch ``SemsegError`` once,
print the message and exit non-zero, so users never read a deep traceback for
their own typo.
"""


class SemsegError(Exception):
    """Base class: the message is shown to the user as-is, on one line."""

    exit_code = 2


class ConfigError(SemsegError):
    """A config file, a ``--set`` override or a registry name is wrong."""


class DataError(SemsegError):
    """A dataset root, split or file is missing or malformed."""


class CheckpointError(SemsegError):
    """A checkpoint is missing, truncated or does not fit the model."""
