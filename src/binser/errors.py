"""binser's own exceptions: every user-facing failure names the file and the cause."""
from __future__ import annotations

from pathlib import Path


class BinserError(Exception):
    """Base class of every error binser raises on purpose (never a bare traceback for users)."""


class AudioError(BinserError):
    """An input file could not be turned into audio samples.

    ``path`` is the offending file, ``cause`` a short human-readable reason.
    """

    def __init__(self, path: str | Path | None, cause: str):
        self.path = None if path is None else Path(path)
        self.cause = cause
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{cause}")


class CorpusError(BinserError):
    """A corpus folder or manifest could not be read, or holds unparsable entries."""


class ModelError(BinserError):
    """A saved model is missing, truncated, tampered with or of the wrong version."""


class ConfigError(BinserError):
    """An option or configuration value is invalid."""
