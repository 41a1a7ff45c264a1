"""Schedules: a value as a function of the optimizer step.

The value is ``start`` for ``step < warmup_steps``; from there to ``total_steps`` it moves
from ``start`` to ``end`` along the shape (``constant`` stays at ``start``); after
``total_steps`` it stays at ``end``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _progress(step: int, warmup_steps: int, total_steps: int) -> float:
    span = max(total_steps - warmup_steps, 1)
    return min(max((step - warmup_steps) / span, 0.0), 1.0)


SHAPES = {
    "constant": lambda t: 0.0,
    "linear": lambda t: t,
    "cosine": lambda t: 0.5 * (1.0 - math.cos(math.pi * t)),
}


@dataclass(frozen=True)
class Schedule:
    kind: str
    start: float
    end: float
    warmup_steps: int
    total_steps: int

    def __post_init__(self) -> None:
        if self.kind not in SHAPES:
            raise ValueError(f"unknown schedule {self.kind!r}; allowed: {', '.join(SHAPES)}")

    def __call__(self, step: int) -> float:
        t = SHAPES[self.kind](_progress(step, self.warmup_steps, self.total_steps))
        return self.start + (self.end - self.start) * t


def schedule_from(cfg) -> Schedule:
    """A :class:`Schedule` from any object with the schedule fields (a recipe section)."""
    end = cfg.start if cfg.end is None else cfg.end
    return Schedule(cfg.kind, float(cfg.start), float(end), int(cfg.warmup_steps),
                    int(cfg.total_steps))
