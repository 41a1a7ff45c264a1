"""Errors the CLI turns into a one-line message instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (recipe, override, file, data): exit status 2, no traceback."""

    exit_code = 2


class TrainingStopped(Exception):
    """The run stopped on purpose (a non-finite loss); the last good checkpoint is intact."""

    exit_code = 1


class CheckpointError(TrainingStopped):
    """Writing a checkpoint failed; the previous complete one is intact."""
