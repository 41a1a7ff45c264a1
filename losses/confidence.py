"""``teacher_confidence``: move the scheduled soft weight towards the tokens whose label the
teacher is sure of, keeping its mean.

With c_i the teacher's probability of token i's label (at T = 1) over the m valid tokens of
a micro-batch and alpha the scheduled soft weight, the soft weights are "water-filled":

    w_i = min(lambda * c_i, 1),   lambda >= 0 such that mean_i w_i = alpha.

The mean is alpha in every micro-batch, so the step's token-weighted mean (over
micro-batches and processes) is alpha too: the schedule keeps its meaning. Where the
tokens with c > 0 cannot hold alpha * m even all at 1 (a TopK teacher gives c = 0 to
labels outside its top k), they all get 1 and the rest is spread evenly over the c = 0
tokens; with every c = 0 that is the uniform alpha. The hard weight takes what the soft
one leaves: h_i = hard * (1 - w_i) / (1 - alpha), whose mean is the scheduled hard weight
and which is never negative (h_i = hard when alpha = 1).
"""

from __future__ import annotations

import torch

from losses.strategy import ConstantWeights

Tensor = torch.Tensor


def water_fill(confidence: Tensor, mean: float) -> Tensor:
    """min(lambda * c, 1) with mean ``mean`` (in [0, 1]) over ``confidence`` (m,) >= 0.

    f(lambda) = sum_i min(lambda c_i, 1) is continuous, piecewise linear and nondecreasing:
    with the k largest c saturated, f = k + lambda * S_k (S_k: the sum of the other c).
    Sorting c in decreasing order, the answer has the smallest k for which the (k+1)-th
    largest c is not yet saturated at the lambda that solves k + lambda * S_k = target."""
    c = confidence.double().clamp(min=0.0)  # float64: the mean must come out exact
    m = c.numel()
    target = mean * m
    positive = int((c > 0).sum())
    if m == 0:
        return c.float()
    if target >= positive:  # every c > 0 saturated; the rest is spread over the zeros
        rest = (target - positive) / (m - positive) if m > positive else 0.0
        return torch.where(c > 0, torch.ones_like(c), torch.full_like(c, rest)).float()
    ordered = c.sort(descending=True).values
    tail = ordered.flip(0).cumsum(0).flip(0)           # tail[k] = sum of ordered[k:]
    k = torch.arange(m, dtype=c.dtype, device=c.device)
    # the (k+1)-th largest stays below 1: (target - k) / tail[k] * ordered[k] <= 1. It holds
    # at k = positive - 1 (there tail = ordered[k] and target - k < 1), so a k is found.
    fits = (target - k) * ordered <= tail
    first = int(fits.to(torch.int8).argmax())
    lam = (target - first) / tail[first]
    return (lam * c).clamp(max=1.0).float()


class TeacherConfidence(ConstantWeights):
    """Per token, trust the teacher as much as it believes the label (module docstring): a
    teacher that is right and sure is followed more, a confidently wrong one (c near 0) is
    left to the data, and the mean soft weight stays the scheduled alpha. (In the spirit of
    confidence-aware KD, e.g. Zhou et al. 2021's "Rethinking soft labels".) The weights
    depend on the whole micro-batch, so a step split differently gets other per-token
    weights (the same means)."""

    needs_teacher_gold = True

    def token_weights(self, teacher_gold: Tensor | None, valid: Tensor, hard: float,
                      soft: float) -> tuple[Tensor, Tensor]:
        if teacher_gold is None:
            return super().token_weights(teacher_gold, valid, hard, soft)
        soft_w = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
        soft_w[valid] = water_fill(teacher_gold[valid].exp(), soft)
        if soft >= 1.0:
            hard_w = valid.float() * hard
        else:
            hard_w = torch.where(valid, hard * (1.0 - soft_w) / (1.0 - soft),
                                 torch.zeros_like(soft_w))
        return hard_w, soft_w
