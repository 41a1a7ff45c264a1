"""The Objective: hard and soft terms of one micro-batch, weighted by schedules.

    total = hard_weight * CE + soft_weight * T^2 * divergence_T

Every sum over tokens is divided by ``step_tokens``, the number of valid target tokens of
the whole optimizer step (all micro-batches, all processes), so the step's gradient does
not depend on how it is split into micro-batches. The T^2 factor (Hinton et al. 2015)
keeps the soft term's gradient scale independent of the temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from losses.divergences import per_token_divergence, token_cross_entropy
from losses.schedules import Schedule

Tensor = torch.Tensor


@dataclass
class LossTerms:
    """``total`` carries the graph; ``terms`` are detached and already divided by the
    step's token count, so summing them over a step's micro-batches gives the step mean."""

    total: Tensor
    terms: dict[str, Tensor]
    weights: dict[str, float]


class Objective:
    def __init__(self, divergence: str, soft_weight: Schedule, temperature: Schedule,
                 hard_weight: Schedule | None = None, ignore_index: int = -100) -> None:
        self.divergence = divergence
        self.soft_weight = soft_weight
        self.hard_weight = hard_weight
        self.temperature = temperature
        self.ignore_index = ignore_index

    def weights(self, step: int) -> dict[str, float]:
        alpha = self.soft_weight(step)
        hard = 1.0 - alpha if self.hard_weight is None else self.hard_weight(step)
        return {"soft_weight": alpha, "hard_weight": hard, "temperature": self.temperature(step)}

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor,
                 step: int, step_tokens: int | Tensor) -> LossTerms:
        """student_logits, teacher_logits: (batch, seq, vocab); labels: (batch, seq)."""
        w = self.weights(step)
        valid = labels != self.ignore_index
        ce = token_cross_entropy(student_logits, labels, self.ignore_index).sum() / step_tokens
        total = w["hard_weight"] * ce
        terms = {"ce": ce.detach()}
        if teacher_logits is not None:
            per_token = per_token_divergence(student_logits, teacher_logits.detach(),
                                             self.divergence, w["temperature"])
            kd = torch.where(valid, per_token, torch.zeros_like(per_token)).sum() / step_tokens
            total = total + w["soft_weight"] * w["temperature"] ** 2 * kd
            terms["kd"] = kd.detach()
        return LossTerms(total=total, terms=terms, weights=w)
