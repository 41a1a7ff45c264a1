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
