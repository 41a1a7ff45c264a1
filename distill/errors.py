"""Errors the CLI turns into a one-line message instead of a traceback, and how a message
quotes what the user gave."""

from __future__ import annotations

import reprlib
from typing import Any

# A message quotes at most this many characters of a value: a 400-byte recipe can hold a
# value whose repr is hundreds of megabytes (nested lists), and a message is one line.
QUOTE_LIMIT = 200

_REPR = reprlib.Repr()
_REPR.maxlevel = 3                      # nesting shown before '...'
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxstring = _REPR.maxother = QUOTE_LIMIT


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, built without ever making the
    whole repr (reprlib stops at a fixed depth and length)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class UserError(Exception):
    """Bad input from the user (recipe, override, file, data): exit status 2, no traceback."""

    exit_code = 2


class TrainingStopped(Exception):
    """The run stopped on purpose (a non-finite loss); the last good checkpoint is intact."""

    exit_code = 1


class CheckpointError(TrainingStopped):
    """Writing a checkpoint failed; the previous complete one is intact."""


class DiskFull(CheckpointError):
    """A write (a checkpoint, metrics.jsonl, student/ or teacher/) ran out of disk space;
    the last complete checkpoint is intact and ``--resume`` continues once space is freed."""

    def __init__(self, what: str, cause: BaseException, last_checkpoint: str) -> None:
        super().__init__(
            f"no space left on device while writing {what} ({type(cause).__name__}: "
            f"{str(cause)[:200]}); the last complete checkpoint is intact: {last_checkpoint}; "
            "free space and run again with --resume")


# What torch and safetensors say when a write hits a full disk: they raise RuntimeError with
# the OS's text inside (torch's zip writer only says "file write failed"), not OSError.
_DISK_FULL_TEXT = ("no space left on device", "file write failed", "storagefull")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) means the disk is full."""
    import errno

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if isinstance(exc, (OSError, RuntimeError)) and \
                any(text in str(exc).lower() for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
