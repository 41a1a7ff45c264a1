"""Per-token hard and soft terms for one chunk of tokens: the computation shared by the
plain path (all tokens at once) and the fused path (chunk by chunk).

Teacher inputs come in three forms: full logits ``(n, V)``, a :class:`TopK`, or a
``(hidden (n, H), head_weight (V, H))`` pair whose logits are formed only chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F

from losses.divergences import DIVERGENCES, DivergenceParams
from losses.sparse import TopK, fold

Tensor = torch.Tensor
TeacherInput = Union[Tensor, TopK, tuple[Tensor, Tensor], None]


@dataclass(frozen=True)
class TermSpec:
    kind: str = "forward_kl"
    temperature: float = 1.0
    params: DivergenceParams = DivergenceParams()
    ignore_index: int = -100
    need_teacher_gold: bool = False   # teacher's log-prob of the label, for confidence weights
    need_ce: bool = True               # the hard cross-entropy (the divergence API skips it)

    def __post_init__(self) -> None:
        if self.kind not in DIVERGENCES:
            raise ValueError(f"unknown divergence {self.kind!r}; "
                             f"allowed: {', '.join(DIVERGENCES)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@dataclass
class TokenTerms:
    """All (n,), zero at ignored positions; ``teacher_gold`` is detached (or None)."""

    valid: Tensor
    ce: Tensor | None
    kd: Tensor | None
    teacher_gold: Tensor | None


def teacher_rows(teacher: TeacherInput, rows: slice) -> Tensor | TopK | None:
    """The teacher's logits (or top-k) for a slice of flattened tokens, without grad."""
    if teacher is None:
        return None
    if isinstance(teacher, tuple):
        hidden, head_weight = teacher
        with torch.no_grad():
            return hidden[rows].to(head_weight.dtype) @ head_weight.t()  # (n, V)
    return teacher[rows]


def flatten_teacher(teacher: TeacherInput) -> TeacherInput:
    """(..., V) logits, TopK or (hidden (..., H), head) -> token-major 2-D forms."""
    if teacher is None:
        return None
    if isinstance(teacher, TopK):
        return teacher.reshape_tokens()
    if isinstance(teacher, tuple):
        hidden, head_weight = teacher
        return hidden.reshape(-1, hidden.shape[-1]).detach(), head_weight.detach()
    return teacher.reshape(-1, teacher.shape[-1]).detach()


def _tempered(logits: Tensor, temperature: float) -> Tensor:
    """float32 logits / T, without a copy when neither changes anything."""
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def token_terms(student_logits: Tensor, teacher: Tensor | TopK | None, labels: Tensor,
                spec: TermSpec) -> TokenTerms:
    """student_logits (n, V); teacher (n, V) logits or TopK or None; labels (n,)."""
    valid = labels != spec.ignore_index
    zeros = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    log_q = None if teacher is None else \
        F.log_softmax(_tempered(student_logits, spec.temperature), dim=-1)
    ce = None
    if spec.need_ce and log_q is not None and spec.temperature == 1.0:
        # at T = 1 the soft term's log-softmax is the hard term's: compute it once
        ce = F.nll_loss(log_q, labels, ignore_index=spec.ignore_index, reduction="none")
    elif spec.need_ce:
        ce = F.cross_entropy(student_logits.float(), labels, ignore_index=spec.ignore_index,
                             reduction="none")
    if teacher is None:
        return TokenTerms(valid=valid, ce=ce, kd=None, teacher_gold=None)
    safe_labels = labels.clamp(min=0).unsqueeze(-1)
    gold = None
    if isinstance(teacher, TopK):
        log_q, log_p = fold(log_q, teacher, spec.temperature)
        if spec.need_teacher_gold:  # a label outside the top-k counts as probability 0
            hit = teacher.indices == safe_labels
            gold = torch.where(hit, teacher.log_probs, torch.full_like(teacher.log_probs,
                               float("-inf"))).amax(dim=-1)
    else:
        log_p = F.log_softmax(_tempered(teacher, spec.temperature), dim=-1)
        if spec.need_teacher_gold:
            at_t1 = log_p if spec.temperature == 1.0 else F.log_softmax(teacher.float(), -1)
            gold = at_t1.gather(-1, safe_labels).squeeze(-1)
    kd = DIVERGENCES[spec.kind](log_q, log_p, spec.params)
    kd = torch.where(valid, kd, zeros)
    if gold is not None:
        gold = torch.where(valid, gold.detach(), zeros)
    return TokenTerms(valid=valid, ce=ce, kd=kd, teacher_gold=gold)
