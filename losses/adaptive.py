"""Adaptive weighting strategies: adjust the scheduled weights from detached signals.

A strategy acts at three points of the objective, all fixed before the memory-bounded
pass so that the fused path stays exact:
  - ``token_weights``: per-token hard and soft weights (teacher_confidence);
  - ``scales``: one factor for the whole hard term and one for the soft term
    (loss_balance, uncertainty);
  - ``extra_loss``: terms outside the token sums (uncertainty's regulariser).
``update`` runs once per optimizer step with the step's logged means.
"""

from __future__ import annotations

import torch
from torch import nn

from losses.terms import TokenTerms

Tensor = torch.Tensor


class ConstantWeights(nn.Module):
    """``none``: the scheduled weights, the same for every token."""

    needs_teacher_gold = False

    def token_weights(self, terms: TokenTerms, hard: float, soft: float) -> tuple[Tensor, Tensor]:
        ones = terms.valid.float()
        return ones * hard, ones * soft

    def scales(self) -> tuple[float | Tensor, float | Tensor]:
        return 1.0, 1.0

    def extra_loss(self, stats: dict[str, Tensor], share: Tensor, temperature: float) -> Tensor:
        return torch.zeros((), device=share.device)

    def log_values(self) -> dict[str, Tensor]:
        return {}

    def update(self, step_terms: dict[str, float]) -> None:
        return None


class TeacherConfidence(ConstantWeights):
    """Per token, trust the teacher as much as it believes the gold token: with c the
    teacher's probability of the label (at T = 1), the soft weight is alpha * c and the
    weight the teacher loses goes to the hard target: hard + alpha * (1 - c). A teacher
    that is right and sure is followed; a confidently wrong one (c near 0) is ignored in
    favour of the data. (In the spirit of confidence-aware KD, e.g. Zhou et al. 2021's
    "Rethinking soft labels"; the logged weights are means over tokens.)"""

    needs_teacher_gold = True

    def token_weights(self, terms: TokenTerms, hard: float, soft: float) -> tuple[Tensor, Tensor]:
        if terms.teacher_gold is None:
            return super().token_weights(terms, hard, soft)
        confidence = terms.teacher_gold.exp()  # (n,), detached
        return hard + soft * (1.0 - confidence), soft * confidence


class LossBalance(ConstantWeights):
    """Rescale the soft term to the hard term's magnitude: the soft term is multiplied by
    EMA(CE) / EMA(T^2 * D), bias-corrected running averages over optimizer steps (1 until
    the first step), clamped to [1e-2, 1e2]."""

    def __init__(self, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("ema", torch.zeros(2, dtype=torch.float64))  # CE, T^2 * D
        self.register_buffer("updates", torch.zeros((), dtype=torch.float64))

    def _scale(self) -> float:
        if self.updates.item() == 0:
            return 1.0
        correction = 1.0 - self.momentum ** self.updates.item()
        ce, soft = (self.ema / correction).tolist()
        return float(min(max(ce / max(soft, 1e-12), 1e-2), 1e2))

    def scales(self) -> tuple[float, float]:
        return 1.0, self._scale()

    def log_values(self) -> dict[str, Tensor]:
        return {"balance_scale": torch.tensor(self._scale())}

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
    total = exp(-s_hard) * hard term + exp(-s_soft) * soft term + s_hard + s_soft."""

    def __init__(self) -> None:
        super().__init__()
        self.log_var = nn.Parameter(torch.zeros(2))  # hard, soft

    def scales(self) -> tuple[Tensor, Tensor]:
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


ADAPTIVE = ("none", "teacher_confidence", "loss_balance", "uncertainty")


def make_strategy(name: str, balance_momentum: float = 0.9) -> ConstantWeights:
    if name == "teacher_confidence":
        return TeacherConfidence()
    if name == "loss_balance":
        return LossBalance(balance_momentum)
    if name == "uncertainty":
        return Uncertainty()
    return ConstantWeights()
