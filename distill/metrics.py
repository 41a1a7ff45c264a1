"""metrics.jsonl: one JSON object per logged training step or evaluation."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, step: int, final_step: int) -> None:
        """Drop rows past ``step`` (written by a run that was killed after its last
        checkpoint), so a resumed run's log has each step once. Resuming a finished run
        evaluates it again, so its final evaluation row goes too."""
        if not self.enabled or not self.path.exists():
            return

        def keep(row: dict[str, Any]) -> bool:
            if "val_loss" in row and row["step"] == final_step == step:
                return False
            return row.get("step", 0) <= step

        rows = [line for line in self.path.read_text().splitlines()
                if line.strip() and keep(json.loads(line))]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(row + "\n" for row in rows))
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in row.items()}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
