"""Token-level divergences between teacher and student next-token distributions.

All math runs in float32 and in log space. Shapes: logits ``(..., vocab)``, labels ``(...)``;
the per-token functions return ``(...)``. Positions whose label is ``ignore_index`` count
as zero and are left out of every mean.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _kl_from_log_probs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per position; 0 * log 0 terms (including -inf logits) contribute 0."""
    p = log_p.exp()
    # Where p == 0 the term is 0 whatever log_q is. Zeroing the logs *before* the product
    # keeps -inf out of both the forward value and the backward pass (0 * inf = NaN).
    support = p > 0
    zero = torch.zeros((), dtype=log_p.dtype, device=log_p.device)
    log_ratio = torch.where(support, log_p, zero) - torch.where(support, log_q, zero)
    return (p * log_ratio).sum(dim=-1)


def forward_kl(student_log_probs: Tensor, teacher_log_probs: Tensor) -> Tensor:
    """KL(p_teacher || q_student), Hinton et al. 2015: mean-seeking."""
    return _kl_from_log_probs(teacher_log_probs, student_log_probs)


def reverse_kl(student_log_probs: Tensor, teacher_log_probs: Tensor) -> Tensor:
    """KL(q_student || p_teacher), as in MiniLLM (Gu et al. 2024): mode-seeking."""
    return _kl_from_log_probs(student_log_probs, teacher_log_probs)


DIVERGENCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
}


def per_token_divergence(student_logits: Tensor, teacher_logits: Tensor, kind: str,
                         temperature: float = 1.0) -> Tensor:
    """Divergence of softmax(z_t / T) and softmax(z_s / T) at every position: ``(...)``."""
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; allowed: {', '.join(DIVERGENCES)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return DIVERGENCES[kind](log_q, log_p)


def token_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Hard-target cross-entropy per position in float32, 0 where ignored: ``(...)``."""
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=ignore_index, reduction="none")
    return flat.reshape(labels.shape)


def divergence(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
               kind: str = "forward_kl", temperature: float = 1.0,
               ignore_index: int = -100) -> Tensor:
    """Mean divergence over positions whose label is not ``ignore_index`` (0 if none).

    No T^2 factor here: the objective applies it.
    """
    values = per_token_divergence(student_logits, teacher_logits, kind, temperature)
    valid = labels != ignore_index
    return torch.where(valid, values, torch.zeros_like(values)).sum() / valid.sum().clamp(min=1)
