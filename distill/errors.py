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
