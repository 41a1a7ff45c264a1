"""The training loop's progress: a tqdm bar on a terminal, plain lines in a log file.

tqdm redraws its bar with carriage returns several times a second. On a terminal that is one
line; in a log file (``distill run ... 2> log``, a batch scheduler's output) every redraw is
kept, so a run's log becomes one enormous line in which the evaluation lines and the final
line are hard to find. So when stderr is not a terminal the bar is off and a plain line
with the count, the rate and an estimate of the time left is written every ``interval``
seconds and at the last step instead. Lines meant to stay (an evaluation's loss, a skipped
step) go through :meth:`StepProgress.write`, which prints them above a live bar.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

PLAIN_INTERVAL_S = 30.0  # seconds between plain progress lines when stderr is not a terminal


def bar_interval() -> float:
    """tqdm's ``mininterval`` for the other bars (reading the corpus, compare's runs): its
    default on a terminal, and one redraw per ``PLAIN_INTERVAL_S`` in a log file, where
    every redraw is kept."""
    return 0.1 if sys.stderr.isatty() else PLAIN_INTERVAL_S


def _duration(seconds: float) -> str:
    """``1h02m03s``, ``2m03s`` or ``4s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class StepProgress:
    """Progress over optimizer steps ``initial`` .. ``total``; silent when not ``enabled``
    (every process but the main one). ``bar``: None chooses by whether stderr is a
    terminal."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True,
                 bar: bool | None = None, interval: float = PLAIN_INTERVAL_S,
                 stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.initial, self.done = total, initial, initial
        self.enabled = enabled
        self.stream = stream  # None: sys.stderr at the time of writing (pytest swaps it)
        self.interval, self.clock = interval, clock
        self.started = self.last_line = clock()
        self.postfix: dict[str, str] = {}
        use_bar = sys.stderr.isatty() if bar is None else bar
        self.bar = None
        if enabled and use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="distill", file=stream)

    def update(self, postfix: dict[str, str] | None = None) -> None:
        """One more step done; ``postfix`` (name -> formatted value) is shown beside it."""
        self.done += 1
        self.postfix = postfix or self.postfix
        if self.bar is not None:
            self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(1)
            return
        now = self.clock()
        if self.enabled and (self.done == self.total or now - self.last_line >= self.interval):
            self.last_line = now
            print(self.line(now), file=self.stream or sys.stderr, flush=True)

    def line(self, now: float) -> str:
        """``distill: step 120/300 (40%), 2.1 steps/s, 57s elapsed, ~1m26s left, loss 5.123``"""
        steps, elapsed = self.done - self.initial, now - self.started
        rate = steps / elapsed if elapsed > 0 else 0.0
        left = f", ~{_duration((self.total - self.done) / rate)} left" \
            if rate > 0 and self.done < self.total else ""
        extra = "".join(f", {name} {value}" for name, value in self.postfix.items())
        return (f"distill: step {self.done}/{self.total} ({100 * self.done / self.total:.0f}%), "
                f"{rate:.2f} steps/s, {_duration(elapsed)} elapsed{left}{extra}")

    def write(self, text: str) -> None:
        """A line that stays (on stdout), printed above the bar when there is one."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
