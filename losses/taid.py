"""``taid``: Temporally Adaptive Interpolated Distillation (Shing, Misaki, Bao, Yokoi &
Akiba, ICLR 2025, arXiv 2501.16937).

The soft target is not the teacher's p but an intermediate distribution between the
student's own q (detached) and p, interpolated in log-probability space, both at the
temperature T:

    p_t = softmax((1 - t) * log q.detach() + t * log p)

so t = 0 asks nothing of the student and t = 1 is plain distillation. The divergence (the
recipe's, normally forward KL) is taken against p_t. t moves towards 1 once per optimizer
step, faster while the soft term J (the step's logged ``kd``) is falling. With steps
counted from 0 as the schedules count them, t_0 = t_start, J_n the soft term of step n
(computed with t_n), and after step n:

    delta_n = (J_{n-1} - J_n) / (J_{n-1} + eps)          (delta_0 = 0: there is no J_{-1})
    m_n     = momentum * m_{n-1} + (1 - momentum) * delta_n        (m_{-1} = 0)
    t_{n+1} = min(t_end, max(t_lin(n + 1), t_n + rate * sigmoid(m_n) * (1 - t_n)))

with the linear floor t_lin(k) = t_start + (t_end - t_start) * min(k / total_steps, 1), a
linear schedule's value at step k; so t keeps up with the ramp whatever J does and is
t_end once total_steps steps are done. ``total_steps`` None: no floor. n counts the
updates, so a step skipped for a non-finite loss does not move t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from losses.strategy import ConstantWeights

Tensor = torch.Tensor
_EPS = 1e-8  # keeps delta finite when J_{n-1} is 0 (a student equal to its target)


@dataclass(frozen=True)
class TaidSettings:
    t_start: float = 0.4
    t_end: float = 1.0
    rate: float = 5e-4
    momentum: float = 0.99
    total_steps: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.t_start < 1.0:
            raise ValueError(f"taid t_start must be in [0, 1), got {self.t_start}")
        if not 0.0 < self.t_end <= 1.0:
            raise ValueError(f"taid t_end must be in (0, 1], got {self.t_end}")
        if not self.t_start < self.t_end:
            raise ValueError(f"taid t_start ({self.t_start}) must be below t_end ({self.t_end})")
        if not self.rate >= 0.0:
            raise ValueError(f"taid rate must be >= 0, got {self.rate}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"taid momentum must be in [0, 1), got {self.momentum}")
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"taid total_steps must be >= 1, got {self.total_steps}")

    def floor(self, steps: int) -> float:
        """t_lin(steps): the floor at step ``steps`` (t_start without a horizon)."""
        if self.total_steps is None:
            return self.t_start
        return self.t_start + (self.t_end - self.t_start) * min(steps / self.total_steps, 1.0)


def interpolate(log_q: Tensor, log_p: Tensor, t: float) -> Tensor:
    """log p_t over the last dim: log_softmax((1 - t) * log_q.detach() + t * log_p).

    log_q, log_p: (n, outcomes), any form's (full vocabulary, or top-k plus the tail).
    Exactly log_q (detached) at t = 0 and log_p at t = 1; a zero probability on either side
    stays zero (never 0 * -inf). A row whose sides share no outcome (every entry -inf)
    falls back to the teacher's."""
    if t >= 1.0:
        return log_p
    if t <= 0.0:
        return log_q.detach()
    mixed = (1.0 - t) * log_q.detach() + t * log_p
    shared = torch.isfinite(mixed).any(dim=-1, keepdim=True)
    return torch.log_softmax(torch.where(shared, mixed, log_p), dim=-1)


class Taid(ConstantWeights):
    """The weights stay the schedule's; the soft target moves from the student towards the
    teacher (module docstring). State in buffers, so a checkpoint holds it."""

    def __init__(self, settings: TaidSettings) -> None:
        super().__init__()
        self.settings = settings
        float64 = {"dtype": torch.float64}
        self.register_buffer("t", torch.tensor(settings.t_start, **float64))
        self.register_buffer("momentum", torch.zeros((), **float64))
        self.register_buffer("previous", torch.zeros((), **float64))   # the last step's J
        self.register_buffer("steps", torch.zeros((), **float64))      # updates so far

    def teacher_share(self) -> float:
        return float(self.t)

    def step_scalars(self) -> dict[str, float]:
        return {"taid_t": float(self.t)}

    def update(self, step_terms: dict[str, float]) -> None:
        if "kd" not in step_terms:
            return
        s = self.settings
        soft = float(step_terms["kd"])
        steps = int(self.steps.item())
        delta = 0.0 if steps == 0 else (float(self.previous) - soft) / (float(self.previous)
                                                                          + _EPS)
        momentum = s.momentum * float(self.momentum) + (1.0 - s.momentum) * delta
        t = float(self.t)
        moved = t + s.rate * _sigmoid(momentum) * (1.0 - t)
        self.t.fill_(min(s.t_end, max(s.floor(steps + 1), moved)))
        self.momentum.fill_(momentum)
        self.previous.fill_(soft)
        self.steps.add_(1)


def _sigmoid(x: float) -> float:
    """1 / (1 + e^-x) without overflow for large |x| (delta is unbounded when J_{n-1} ~ 0)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
