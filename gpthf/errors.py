"""Errors a user can act on.

Entry points catch `GpthfError` and print its message as one line instead of a traceback, so every
raise site must say what was wrong and what to do about it.
"""

from __future__ import annotations


class GpthfError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in gpthf."""


class ConfigError(GpthfError):
    """A config value or override that cannot be used."""


class DataError(GpthfError):
    """A corpus, tokenizer or data cache that cannot be used."""


class CheckpointError(GpthfError):
    """A checkpoint that is missing, incomplete, corrupt or of another kind than asked for."""


class TrainingError(GpthfError):
    """Training cannot go on (the loss became NaN or infinite); the last good checkpoint is kept."""
