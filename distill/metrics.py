"""metrics.jsonl: one JSON object per logged training step or evaluation.

Every row carries ``elapsed_s``: wall-clock seconds since this process started the run (its
build included: data, models, a teacher cache's fill), so a resumed run's rows count again
from 0 at its own start.

Rows are appended, so a run killed or stopped by a full disk while writing one leaves a torn
last line: readers skip it, and a resumed run rewrites the file without it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from distill.checkpoint import writes_to
from distill.errors import UserError
from distill.files import write_atomic


class MetricsLog:
    """``started``: the ``time.monotonic()`` the run began at (``elapsed_s`` counts from it);
    None leaves ``elapsed_s`` out."""

    def __init__(self, path: Path, enabled: bool = True, started: float | None = None) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.started = started

    def truncate_after(self, step: int, final_step: int) -> None:
        """Drop rows past ``step`` (written by a run that was killed after its last
        checkpoint) and a torn last line, so a resumed run's log has each step once.
        Resuming a finished run evaluates it again, so its final evaluation row goes too."""
        if not self.enabled or not self.path.exists():
            return

        def keep(row: dict[str, Any]) -> bool:
            if "val_loss" in row and row["step"] == final_step == step:
                return False
            return row.get("step", 0) <= step

        kept = [line + "\n" for line, row in _rows(self.path) if keep(row)]
        with writes_to(str(self.path), self.path.parent):
            write_atomic(self.path, "".join(kept))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.started is not None:
            row = {**row, "elapsed_s": round(time.monotonic() - self.started, 3)}
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in row.items()}
        with writes_to(str(self.path), self.path.parent):
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(clean) + "\n")


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, row) for every whole row. Only the last line may be torn (an interrupted
    append); any other line that is not a JSON object means the file was damaged otherwise,
    and is an error naming it."""
    # errors="replace": a tear can split a multi-byte character
    lines = [(number, line) for number, line in enumerate(
        Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1) if line.strip()]
    rows = []
    for index, (number, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append((line, row))
        elif index < len(lines) - 1:
            raise UserError(f"{path}: line {number} is not a JSON object ({line[:60]!r}); only "
                            "the last line may be torn by an interrupted write. Remove or "
                            "repair that line.")
    return rows


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl, without a torn last line."""
    return [row for _, row in _rows(path)]
