"""Schedules: a value as a function of the optimizer step.

With progress t = clamp((step - warmup_steps) / (total_steps - warmup_steps), 0, 1):

    value = start + (end - start) * shape(t)

Shapes (all go from 0 at t = 0 to 1 at t = 1):
    constant   0 (the value stays at ``start``)
    linear     t
    cosine     (1 - cos(pi t)) / 2
    exponential (1 - exp(-rate t)) / (1 - exp(-rate))    fast change first, then slow
    step       floor(t * stages) / stages                 ``stages`` equal plateaus
    wsd        0 until t = 1 - decay_fraction, then linear to 1 (warmup-stable-decay)

During warmup (step < warmup_steps) the value is ``start``, or, when ``warmup_start`` is
set, ramps linearly from ``warmup_start`` to ``start``. After ``total_steps`` it is ``end``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


def _exponential(t: float, s: "Schedule") -> float:
    return (1.0 - math.exp(-s.rate * t)) / (1.0 - math.exp(-s.rate))


def _step(t: float, s: "Schedule") -> float:
    return math.floor(t * s.stages + 1e-9) / s.stages


def _wsd(t: float, s: "Schedule") -> float:
    stable = 1.0 - s.decay_fraction
    return 0.0 if t <= stable else (t - stable) / s.decay_fraction


SCHEDULES: dict[str, Callable[[float, "Schedule"], float]] = {
    "constant": lambda t, s: 0.0,
    "linear": lambda t, s: t,
    "cosine": lambda t, s: 0.5 * (1.0 - math.cos(math.pi * t)),
    "exponential": _exponential,
    "step": _step,
    "wsd": _wsd,
}


@dataclass(frozen=True)
class Schedule:
    kind: str
    start: float
    end: float
    warmup_steps: int = 0
    total_steps: int = 1
    warmup_start: float | None = None
    rate: float = 5.0
    stages: int = 4
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; allowed: {', '.join(SCHEDULES)}")
        if self.rate <= 0 or self.stages < 1 or not 0 < self.decay_fraction <= 1:
            raise ValueError("schedule needs rate > 0, stages >= 1, 0 < decay_fraction <= 1")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps and self.warmup_start is not None:
            return self.warmup_start + (self.start - self.warmup_start) * step / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        t = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        return self.start + (self.end - self.start) * SCHEDULES[self.kind](t, self)


def schedule_from(cfg, total_steps: int | None = None) -> Schedule:
    """A :class:`Schedule` from any object with the schedule fields (a recipe section).

    A section whose ``total_steps`` is null ends at ``total_steps`` given here (a run passes
    its ``train.max_steps``), so a recipe file written out by one run keeps following the
    step budget of the next run that reads it."""
    end = cfg.start if cfg.end is None else cfg.end
    total = cfg.total_steps if cfg.total_steps is not None else total_steps
    if total is None:
        if cfg.kind != "constant" and float(cfg.start) != float(end):
            raise ValueError("a changing schedule with total_steps null needs the run's "
                             "step count (schedule_from(section, total_steps=max_steps))")
        total = 1  # a constant value: the length changes nothing
    return Schedule(cfg.kind, float(cfg.start), float(end), int(cfg.warmup_steps),
                    int(total), cfg.warmup_start, float(cfg.rate), int(cfg.stages),
                    float(cfg.decay_fraction))
