"""Time to first step: how long a run takes from its process's start until its first
optimizer step begins, and where that time went, coarsely.

The phases are those a user can act on: the interpreter and the CLI's imports
(``launch``: until the clock is made), the recipe (loaded and validated: its models are
built on the meta device, the first use of transformers' model code), the data (read from
the block cache, or read and tokenised), the models (built or loaded), their preparation
(accelerate's ``prepare`` and the teacher's: a teacher cache's fill happens there), the
evaluation at step 0, and the rest. The run prints one line, e.g. ``distill: first step
after 5.0 s (launch 1.6 s, recipe 2.7 s, data 0.4 s from cache, models 0.3 s, prepare 0.0 s,
other 0.0 s)``, and records the total as ``startup_s`` in its first metrics row.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator


def process_age_s() -> float | None:
    """Seconds since this process started (psutil reads the OS's record of it); None where
    the OS does not say."""
    try:
        import psutil

        return max(time.time() - psutil.Process().create_time(), 0.0)
    except Exception:  # noqa: BLE001 - an optional figure must never stop a run
        return None


class StartupClock:
    """Phases measured with ``now`` (``time.perf_counter``) from the moment the clock is made
    (at ``run()``'s entry); ``launch_s``, the time before it since the process started
    (:func:`process_age_s`; None: unknown, the figures then count from ``run()``)."""

    def __init__(self, launch_s: float | None,
                 now: Callable[[], float] = time.perf_counter) -> None:
        self.launch_s = launch_s
        self.now = now
        self.began = now()
        self.phases: list[tuple[str, float, str]] = []  # (name, seconds, note)

    @contextmanager
    def phase(self, name: str) -> Iterator[dict[str, str]]:
        """Time the block as phase ``name``; the block may set ``note`` in the dict it gets
        (``from cache``, say), shown after the phase's seconds."""
        extra = {"note": ""}
        began = self.now()
        try:
            yield extra
        finally:
            self.phases.append((name, self.now() - began, extra["note"]))

    def total_s(self) -> float:
        """Seconds from the process's start (or, where unknown, from ``run()``) to now."""
        return (self.launch_s or 0.0) + self.now() - self.began

    def line(self) -> str:
        """``first step after 3.2 s (launch 1.1 s, data 0.1 s from cache, ...)``; call it
        when the first step begins."""
        since_run = self.now() - self.began
        other = since_run - sum(seconds for _, seconds, _ in self.phases)
        parts = [] if self.launch_s is None else [f"launch {self.launch_s:.1f} s"]
        parts += [f"{name} {seconds:.1f} s" + (f" {note}" if note else "")
                  for name, seconds, note in self.phases]
        parts.append(f"other {max(other, 0.0):.1f} s")
        origin = "" if self.launch_s is not None else " of run()"
        return f"first step after {self.total_s():.1f} s{origin} ({', '.join(parts)})"
