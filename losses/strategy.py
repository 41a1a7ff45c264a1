"""The interface of an adaptive weighting strategy, and ``none`` (the scheduled weights).

A strategy acts at these points of the objective, all fixed before the memory-bounded pass
so that the fused path stays exact:
  - ``scales``: one factor for the whole hard term and one for the soft term
    (loss_balance, uncertainty);
  - ``token_weights``: per-token hard and soft weights for a whole micro-batch, from the
    teacher's log-probability of each label when ``needs_teacher_gold`` (teacher_confidence);
  - ``teacher_share``: the soft target is an interpolation between the student and the
    teacher (taid), or None for the teacher itself;
  - ``extra_loss``: terms outside the token sums (uncertainty's regulariser).
``log_values`` are logged as shares of the step (they add up over micro-batches),
``step_scalars`` as the step's values; ``update`` runs once per optimizer step with the
step's logged means. Whatever must survive a resume lives in buffers or parameters: the
objective sits inside the student's module, so they go into every checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

Tensor = torch.Tensor


class ConstantWeights(nn.Module):
    """``none``: the scheduled weights, the same for every token."""

    needs_teacher_gold = False

    def scales(self, hard: float, soft: float) -> tuple[float | Tensor, float | Tensor]:
        """Factors for the whole hard and soft terms, given the scheduled weights."""
        return 1.0, 1.0

    def token_weights(self, teacher_gold: Tensor | None, valid: Tensor, hard: float,
                      soft: float) -> tuple[Tensor, Tensor]:
        """Per-token (hard, soft) weights (tokens,), 0 at ignored positions; teacher_gold:
        the teacher's log-probability of each label at T = 1 (tokens,), detached, or None."""
        ones = valid.float()
        return ones * hard, ones * soft

    def teacher_share(self) -> float | None:
        return None

    def extra_loss(self, stats: dict[str, Tensor], share: Tensor, temperature: float) -> Tensor:
        return torch.zeros((), device=share.device)

    def log_values(self) -> dict[str, Tensor]:
        return {}

    def step_scalars(self) -> dict[str, float]:
        return {}

    def update(self, step_terms: dict[str, float]) -> None:
        return None
