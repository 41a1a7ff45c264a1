"""The math of sparse teacher outputs (``losses.outputs.TopK``): the teacher's top-k
log-probabilities plus a tail bucket.

A teacher (or a cache of one) may keep only its k most likely tokens per position. The
probability outside them is not renormalised away: it becomes one extra bucket, and the
student's distribution is folded the same way (its top-k entries at the teacher's indices,
plus the sum of the rest), so both sides are distributions over k + 1 outcomes. With
k = vocabulary size the tail is empty and the result equals the full computation.

At temperature T the top-k logits are divided by T as usual. The tail's own logits are
unknown, so its tempered mass assumes its m = V - k tokens share the tail mass t equally
(the maximum-entropy guess): m * (t / m)^(1/T), i.e. a bucket log-weight of
(log t - log m) / T + log m. This is exact at T = 1 and for an empty tail (k = V); treating
the tail as one token instead would shrink its tempered mass by a factor of about
m^(1 - 1/T) and push the student to starve its tail.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def masked_logsumexp(values: Tensor, indices: Tensor) -> Tensor:
    """logsumexp over the last dim, leaving out ``indices``: (..., V), (..., k) -> (...).

    An empty remainder gives -inf with a zero gradient (torch.logsumexp's backward is NaN
    when every input is -inf, which k = V always hits)."""
    masked = values.scatter(-1, indices, float("-inf"))
    peak = masked.amax(dim=-1, keepdim=True).detach()
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = (masked - peak).exp().sum(dim=-1)
    nonempty = total > 0
    safe = torch.where(nonempty, total, torch.ones_like(total))
    return torch.where(nonempty, safe.log() + peak.squeeze(-1),
                       torch.full_like(total, float("-inf")))


def fold(student_log_probs: Tensor, log_probs: Tensor, indices: Tensor, log_tail: Tensor,
         temperature: float) -> tuple[Tensor, Tensor]:
    """Both sides as log-distributions over the teacher's k tokens plus the tail bucket.

    student_log_probs: (n, V) at temperature ``temperature``; the teacher's top-k
    ``log_probs`` and ``indices`` (n, k) and ``log_tail`` (n,) at temperature 1. Returns
    (log_q, log_p), each (n, k + 1), at temperature ``temperature``.
    """
    q_top = student_log_probs.gather(-1, indices)
    q_tail = masked_logsumexp(student_log_probs, indices)
    log_q = torch.cat([q_top, q_tail.unsqueeze(-1)], dim=-1)
    tail_tokens = student_log_probs.shape[-1] - indices.shape[-1]
    log_tail = log_tail.float()
    if tail_tokens > 0 and temperature != 1.0:  # uniform-tail tempering (module docstring)
        log_m = math.log(tail_tokens)
        log_tail = (log_tail - log_m) / temperature + log_m
    else:
        log_tail = log_tail / temperature
    tempered = torch.cat([log_probs.float() / temperature, log_tail.unsqueeze(-1)], dim=-1)
    log_p = torch.log_softmax(tempered, dim=-1)
    return log_q, log_p
