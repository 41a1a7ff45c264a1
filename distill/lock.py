"""One run per output directory at a time: an advisory lock held for the run's lifetime.

``flock`` locks vanish with the process that held them, so a run killed with SIGKILL never
leaves a stale lock behind and ``--resume`` works at once. A run that ends (finished,
stopped or refused) also removes the lock file, and the output directory when it created
it and left it empty: a refused run leaves nothing behind.
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
        self.created: list[Path] = []  # directories this lock made, deepest first

    def __enter__(self) -> "OutputDirLock":
        missing = self.path.parent.absolute()
        while not missing.exists():
            self.created.append(missing)
            missing = missing.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise UserError(f"output_dir {self.path.parent} is in use by a running run "
                                f"(pid {holder}); wait for it or choose another output_dir."
                                ) from None
            # The holder unlinks the file before it lets go: a lock taken on a file that is no
            # longer at the path guards nothing, so open the path again.
            if self._still_at_path(fd):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def _still_at_path(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still held (see _still_at_path)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        for directory in self.created:
            try:
                directory.rmdir()  # only where the run wrote nothing
            except OSError:
                break
