"""One exception tree for everything likeness reports to a user.

Every message names the offending file or value, so the CLI can print it as is
(no traceback) and map the class to an exit code.
"""

from __future__ import annotations

from pathlib import Path


class LikenessError(Exception):
    """Base class of every error likeness raises on purpose."""


class ParameterError(LikenessError, ValueError):
    """A bad option or argument value, named in the message."""


class DecodeError(LikenessError):
    """A file could not be decoded as the media it claims to be.

    Parameters
    ----------
    path : path of the file
    reason : short plain-words reason ("truncated PNG", "zero-byte file", ...)
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class IndexError_(LikenessError):
    """The index directory is missing, damaged, locked or of another format."""


class IndexLockedError(IndexError_):
    """Another process holds the index's write lock."""


class IndexMismatchError(IndexError_):
    """The index was built with another model or featurizer version than requested."""


class ModelError(LikenessError):
    """Model weights are missing, unverifiable or unusable (degenerate)."""
