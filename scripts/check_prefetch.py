"""Check, on whatever device this machine trains on, that teacher.prefetch changes nothing
but speed: a tiny teacher is pretrained, then the same student is distilled from it with
prefetch off and on (``auto``: on for CUDA, where it runs on its own stream), and every
logged loss must agree. Writes under $OUT (default /tmp/check-prefetch). About a minute.

    python scripts/check_prefetch.py                 # on a GPU machine: exercises streams
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import QUICKSTART, tiny_overrides  # noqa: E402


def _run(out: Path, name: str, **settings: object) -> list[tuple]:
    result = subprocess.run([sys.executable, "-m", "distill", "run", str(QUICKSTART),
                             *tiny_overrides(out / name, out / "cache", **settings)],
                            capture_output=True, text=True)
    print(f"{name}: exit {result.returncode}; {result.stdout.strip()[-300:]}")
    if result.returncode:
        sys.exit(result.stderr[-2000:])
    rows = map(json.loads, (out / name / "metrics.jsonl").read_text().splitlines())
    return [(row["step"], row.get("loss"), row.get("val_loss")) for row in rows]


def _close(a: float | None, b: float | None) -> bool:
    return a is None and b is None or a is not None and b is not None and \
        math.isclose(a, b, rel_tol=1e-4)


def main() -> None:
    out = Path(os.environ.get("OUT", "/tmp/check-prefetch"))
    _run(out, "teacher", **{"teacher.kind": "none", "train.max_steps": 30,
                            "train.checkpoint_every": 0})
    teacher = str(out / "teacher" / "student")
    common = {"teacher.kind": "hf", "teacher.hf.name_or_path": teacher, "data.tokenizer": teacher,
              "train.max_steps": 8, "train.grad_accum_steps": 2, "train.eval_every": 4,
              "train.checkpoint_every": 0}
    off = _run(out, "off", **common, **{"teacher.prefetch": "off"})
    on = _run(out, "on", **common, **{"teacher.prefetch": "auto"})
    same = len(off) == len(on) and all(
        a[0] == b[0] and _close(a[1], b[1]) and _close(a[2], b[2]) for a, b in zip(off, on))
    print("prefetch off and on: " + ("the same training" if same else "DIFFERENT"))
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
