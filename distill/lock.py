"""One run per output directory at a time: an advisory lock held for the run's lifetime.

``flock`` locks vanish with the process that held them, so a run killed with SIGKILL never
leaves a stale lock behind and ``--resume`` works at once.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from distill.errors import UserError


class OutputDirLock:
    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> "OutputDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"output_dir {self.path.parent} is in use by a running run "
                            f"(pid {holder}); wait for it or choose another output_dir.") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
