"""Adaptive weighting strategies: adjust the scheduled weights from detached signals.

The interface is ``losses.strategy.ConstantWeights`` (``none``). A strategy either
redistributes the scheduled weights, keeping what the schedule means (teacher_confidence:
the mean soft weight; loss_balance: the total weight, with alpha as the soft term's share of
the loss; taid: the weights untouched, the soft target moved), or replaces their magnitudes
(uncertainty). The logged ``hard_weight`` and ``soft_weight`` are always the effective ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from losses.confidence import TeacherConfidence
from losses.strategy import ConstantWeights
from losses.taid import Taid, TaidSettings

Tensor = torch.Tensor


class LossBalance(ConstantWeights):
    """Keep the total weight S = h + w of the schedule and make the scheduled alpha = w / S
    the soft term's share of the loss. With C = EMA(CE) and K = EMA(T^2 * D),
    bias-corrected running averages over optimizer steps:

        w' = S * w C / (w C + h K),   h' = S - w'

    so that w' K / (w' K + h' C) = w / S. Until the first update (and where w C + h K is 0)
    the weights are the schedule's."""

    def __init__(self, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("ema", torch.zeros(2, dtype=torch.float64))  # CE, T^2 * D
        self.register_buffer("updates", torch.zeros((), dtype=torch.float64))

    def averages(self) -> tuple[float, float] | None:
        """(C, K), bias-corrected; None before the first update."""
        if self.updates.item() == 0:
            return None
        correction = 1.0 - self.momentum ** self.updates.item()
        ce, soft = (self.ema / correction).tolist()
        return ce, soft

    def scales(self, hard: float, soft: float) -> tuple[float, float]:
        averages = self.averages()
        if averages is None:
            return 1.0, 1.0
        ce, kd = averages
        denominator = soft * ce + hard * kd
        if denominator <= 0:
            return 1.0, 1.0
        total = hard + soft
        soft_new = total * soft * ce / denominator
        # As factors of the scheduled weights; a weight of 0 stays 0 (its factor is moot).
        return ((total - soft_new) / hard if hard > 0 else 1.0,
                soft_new / soft if soft > 0 else 1.0)

    def update(self, step_terms: dict[str, float]) -> None:
        if "kd" not in step_terms:
            return
        soft = step_terms["temperature"] ** 2 * step_terms["kd"]
        current = torch.tensor([step_terms["ce"], soft], dtype=torch.float64)
        self.ema.mul_(self.momentum).add_((1.0 - self.momentum) * current.to(self.ema.device))
        self.updates.add_(1)


class Uncertainty(ConstantWeights):
    """Learned homoscedastic-uncertainty weights (Kendall, Gal & Cipolla, CVPR 2018): with
    log-variances s_hard, s_soft trained with the student,
    total = exp(-s_hard) * hard term + exp(-s_soft) * soft term + s_hard + s_soft.
    This replaces the schedule's magnitudes: the effective weights are the scheduled ones
    times exp(-s), which is what ``hard_weight`` / ``soft_weight`` log."""

    def __init__(self) -> None:
        super().__init__()
        self.log_var = nn.Parameter(torch.zeros(2))  # hard, soft

    def scales(self, hard: float, soft: float) -> tuple[Tensor, Tensor]:
        factors = torch.exp(-self.log_var.detach())
        return factors[0], factors[1]

    def extra_loss(self, stats: dict[str, Tensor], share: Tensor, temperature: float) -> Tensor:
        # The token sums already carry exp(-s) (detached); this adds the gradient of
        # exp(-s) * term with respect to s, with zero value, plus the regulariser's share.
        factors = torch.exp(-self.log_var)
        terms = torch.stack([stats["hard_ce"], temperature ** 2 * stats["soft_kd"]])
        terms = terms.to(factors.device)
        return ((factors - factors.detach()) * terms).sum() + self.log_var.sum() * share.to(
            factors.device)

    def log_values(self) -> dict[str, Tensor]:
        values = self.log_var.detach().float().cpu()
        return {"log_var_hard": values[0], "log_var_soft": values[1]}


@dataclass(frozen=True)
class StrategySettings:
    """What the strategies that take settings read."""

    balance_momentum: float = 0.9
    taid: TaidSettings = field(default_factory=TaidSettings)


# name -> factory: the names a recipe's ``loss.adaptive`` may use.
ADAPTIVE: dict[str, Callable[[StrategySettings], ConstantWeights]] = {
    "none": lambda s: ConstantWeights(),
    "teacher_confidence": lambda s: TeacherConfidence(),
    "loss_balance": lambda s: LossBalance(s.balance_momentum),
    "uncertainty": lambda s: Uncertainty(),
    "taid": lambda s: Taid(s.taid),
}


def make_strategy(name: str, settings: StrategySettings = StrategySettings()) -> ConstantWeights:
    if name not in ADAPTIVE:
        raise ValueError(f"unknown adaptive strategy {name!r}; allowed: {', '.join(ADAPTIVE)}")
    return ADAPTIVE[name](settings)
