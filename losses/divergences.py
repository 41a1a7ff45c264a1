"""Token-level divergences between the teacher's p and the student's q.

Every function takes log-probabilities ``(..., vocab)`` in float32 (already at temperature)
and returns the per-position divergence ``(...)``. Each is a true divergence: zero when
p == q, positive otherwise, with no entropy constant dropped. Entries where a distribution
is exactly zero (a banned token's -inf logit) contribute nothing and give no NaN, in the
value or the gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class DivergenceParams:
    """The knobs some divergences take; the others ignore them."""

    beta: float = 0.5           # jsd: weight of the teacher in the mixture
    skew: float = 0.1           # skew_kl / skew_reverse_kl: share of the first argument
    head_mass: float = 0.5      # akl: teacher mass that defines the head
    sharpness: float = 1.0      # todi: s in the per-outcome gate sigmoid(s * log(p / q))

    def __post_init__(self) -> None:
        if not self.sharpness > 0:
            raise ValueError(f"todi sharpness must be > 0, got {self.sharpness}")


def kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a || b) per position; terms where a == 0 are 0 whatever b is."""
    a = log_a.exp()
    # Masking the log-ratio (not the product) keeps 0 * (-inf) = NaN out of both the value
    # and the gradient; the backward of a subtraction never multiplies by the inf.
    log_ratio = (log_a - log_b).masked_fill_(a == 0, 0.0)
    return (a * log_ratio).sum(dim=-1)


def _log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(weight_a * a + (1 - weight_a) * b), stably, for 0 <= weight_a <= 1.

    Where both are zero the result is -inf with a zero gradient (torch.logaddexp's
    backward is NaN there, which a banned token would hit)."""
    if weight_a <= 0.0:
        return log_b
    if weight_a >= 1.0:
        return log_a
    a = log_a + math.log(weight_a)
    b = log_b + math.log1p(-weight_a)
    peak = torch.maximum(a, b).detach()
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = (a - peak).exp() + (b - peak).exp()
    nonzero = total > 0
    safe = torch.where(nonzero, total, torch.ones_like(total))
    return torch.where(nonzero, safe.log() + peak, torch.full_like(total, float("-inf")))


def forward_kl(log_q: Tensor, log_p: Tensor, params: DivergenceParams) -> Tensor:
    """KL(p || q): mean-seeking (Hinton et al. 2015)."""
    return kl(log_p, log_q)


def reverse_kl(log_q: Tensor, log_p: Tensor, params: DivergenceParams) -> Tensor:
    """KL(q || p): mode-seeking (MiniLLM, Gu et al. 2024)."""
    return kl(log_q, log_p)


def jsd(log_q: Tensor, log_p: Tensor, params: DivergenceParams) -> Tensor:
    """Generalised JSD (GKD, Agarwal et al. 2024, as in TRL): with M = beta p + (1-beta) q,
    beta KL(p || M) + (1 - beta) KL(q || M). As in GKD, beta = 0 is defined as forward KL
    and beta = 1 as reverse KL (the mixture formula itself vanishes at both ends)."""
    beta = params.beta
    if beta <= 0.0:
        return kl(log_p, log_q)
    if beta >= 1.0:
        return kl(log_q, log_p)
    log_m = _log_mixture(log_p, log_q, beta)
    return beta * kl(log_p, log_m) + (1.0 - beta) * kl(log_q, log_m)


def skew_kl(log_q: Tensor, log_p: Tensor, params: DivergenceParams) -> Tensor:
    """KL(p || a p + (1 - a) q), a = skew (DistiLLM, Ko et al. 2024)."""
    return kl(log_p, _log_mixture(log_p, log_q, params.skew))


def skew_reverse_kl(log_q: Tensor, log_p: Tensor, params: DivergenceParams) -> Tensor:
    """KL(q || a q + (1 - a) p), a = skew (DistiLLM)."""
    return kl(log_q, _log_mixture(log_q, log_p, params.skew))


def tvd(log_q: Tensor, log_p: Tensor, params: DivergenceParams) -> Tensor:
    """Total variation distance, 1/2 sum |p - q|."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)


def akl(log_q: Tensor, log_p: Tensor, params: DivergenceParams) -> Tensor:
    """Adaptive KL (Wu et al., COLING 2025, "Rethinking KL divergence in KD for LLMs").

    The head is the smallest set of the teacher's most likely tokens holding at least
    ``head_mass`` of its probability; the rest is the tail. Per position, with the gaps
    g_head = sum_head |p - q| and g_tail = sum_tail |p - q| (detached),
    AKL = g_head / (g_head + g_tail) * KL(p||q) + g_tail / (g_head + g_tail) * KL(q||p):
    forward KL fits the head where the head is wrong, reverse KL the tail where it is.
    """
    p, q = log_p.exp().detach(), log_q.exp().detach()
    sorted_p, order = p.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(dim=-1) - sorted_p
    in_head_sorted = mass_before < params.head_mass  # includes the token that crosses it
    in_head = torch.zeros_like(in_head_sorted).scatter(-1, order, in_head_sorted)
    gap = (p - q).abs()
    g_head = torch.where(in_head, gap, torch.zeros_like(gap)).sum(dim=-1)
    g_tail = gap.sum(dim=-1) - g_head
    w_head = g_head / (g_head + g_tail).clamp(min=1e-12)
    return w_head * kl(log_p, log_q) + (1.0 - w_head) * kl(log_q, log_p)


def todi(log_q: Tensor, log_p: Tensor, params: DivergenceParams) -> Tensor:
    """Token-wise divergence control (ToDi, Jung, Yoon, Kim & Lee, EMNLP 2025): per
    outcome v, with r_v = log(p_v / q_v) and the detached gate a_v = sigmoid(s * r_v),

        sum_v  a_v * p_v * r_v  +  (1 - a_v) * q_v * (-r_v)

    i.e. forward KL's term where the student under-estimates the teacher (a_v > 1/2) and
    reverse KL's where it over-estimates, mixed smoothly; s = ``params.sharpness`` > 0.

    Each outcome's term is >= 0, so the sum is a true divergence. The term is
    r * (a p - (1 - a) q). For r > 0 (p > q): a / (1 - a) = e^(s r) > 1 > e^(-r) = q / p,
    so a p > (1 - a) q and the term is > 0. For r < 0: a / (1 - a) = e^(s r) < 1 <
    e^(-r) = q / p, so a p < (1 - a) q and the term is again > 0. It is 0 only at r = 0,
    so the sum is 0 iff p == q. (A KL's own per-outcome terms p log(p/q) can be negative.)
    At s = 1 the gate is p / (p + q), each term is (p - q) log(p/q), and the sum is
    KL(p || q) + KL(q || p) (Jeffreys).
    """
    p, q = log_p.exp(), log_q.exp()
    log_ratio = log_p - log_q
    # The gate only weighs the two terms, so it is detached; where both are 0 the ratio is
    # NaN (-inf - -inf) and both terms vanish anyway: any gate will do.
    gate = torch.sigmoid(params.sharpness * log_ratio.detach().nan_to_num(
        nan=0.0, posinf=float("inf"), neginf=float("-inf")))
    # As in kl(): mask the log-ratios (not the products) where the weighting probability
    # is 0, which keeps 0 * inf out of the value and the gradient.
    forward = p * log_ratio.masked_fill(p == 0, 0.0)            # p log(p/q)
    reverse = q * (-log_ratio).masked_fill(q == 0, 0.0)         # q log(q/p)
    return (gate * forward + (1.0 - gate) * reverse).sum(dim=-1)


DIVERGENCES: dict[str, Callable[[Tensor, Tensor, DivergenceParams], Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "skew_kl": skew_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "tvd": tvd,
    "akl": akl,
    "todi": todi,
}
