"""Per-token hard and soft terms for one chunk of tokens: the computation shared by the
plain path (all tokens at once) and the fused path (chunk by chunk).

The teacher's rows of a chunk come as :class:`~losses.outputs.Logits` or
:class:`~losses.outputs.TopK` (a :class:`~losses.outputs.HiddenStates` teacher gives
``Logits`` per chunk); each form turns itself into the two distributions compared. With
``teacher_share`` (TAID's t) the teacher's side is first moved to the interpolation between
the two (``losses.taid.interpolate``), in whatever outcomes the form compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from losses.closed_form import CLOSED_FORM, closed_form_divergence
from losses.divergences import DIVERGENCES, DivergenceParams
from losses.outputs import Logits, TeacherOutput, TopK
from losses.taid import interpolate

Tensor = torch.Tensor


@dataclass(frozen=True)
class TermSpec:
    kind: str = "forward_kl"
    temperature: float = 1.0
    params: DivergenceParams = DivergenceParams()
    ignore_index: int = -100
    need_teacher_gold: bool = False   # teacher's log-prob of the label (on-policy grading)
    need_ce: bool = True               # the hard cross-entropy (the divergence API skips it)
    teacher_share: float | None = None  # taid's t: the target is p_t, not p (None: p)

    def __post_init__(self) -> None:
        if self.kind not in DIVERGENCES:
            raise ValueError(f"unknown divergence {self.kind!r}; "
                             f"allowed: {', '.join(DIVERGENCES)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.teacher_share is not None and not 0.0 <= self.teacher_share <= 1.0:
            raise ValueError(f"teacher_share must be in [0, 1], got {self.teacher_share}")


@dataclass
class TokenTerms:
    """All (n,), zero at ignored positions; ``teacher_gold`` is detached (or None)."""

    valid: Tensor
    ce: Tensor | None
    kd: Tensor | None
    teacher_gold: Tensor | None


def _tempered(logits: Tensor, temperature: float) -> Tensor:
    """float32 logits / T, without a copy when neither changes anything."""
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def token_terms(student_logits: Tensor, teacher: Logits | TopK | None, labels: Tensor,
                spec: TermSpec) -> TokenTerms:
    """student_logits (n, V); teacher: the chunk's rows (n tokens) or None; labels (n,)."""
    valid = labels != spec.ignore_index
    zeros = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    # Full teacher logits and a divergence with a closed-form gradient: value, gradient and
    # log q in one pass (losses.closed_form). Top-k teachers (folded outcomes) and TAID's
    # interpolated target keep autograd through the formulas.
    closed = (isinstance(teacher, Logits) and spec.teacher_share is None
              and spec.kind in CLOSED_FORM)
    kd = targets = None
    if closed:
        targets = teacher.soft_targets(None, labels.clamp(min=0), spec.temperature,
                                       spec.need_teacher_gold)
        kd, log_q = closed_form_divergence(_tempered(student_logits, spec.temperature),
                                           targets.log_p, spec.kind, spec.params.beta)
    else:
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
    if not closed:
        targets = teacher.soft_targets(log_q, labels.clamp(min=0), spec.temperature,
                                       spec.need_teacher_gold)
        log_p = targets.log_p if spec.teacher_share is None else \
            interpolate(targets.log_q, targets.log_p, spec.teacher_share)
        kd = DIVERGENCES[spec.kind](targets.log_q, log_p, spec.params)
    kd = torch.where(valid, kd, zeros)
    gold = None if targets.gold is None else torch.where(valid, targets.gold.detach(), zeros)
    return TokenTerms(valid=valid, ce=ce, kd=kd, teacher_gold=gold)


def teacher_gold(teacher: TeacherOutput, labels: Tensor, chunk_size: int,
                 ignore_index: int = -100) -> Tensor:
    """The teacher's log-probability of every label at T = 1, before the loss's pass: for
    strategies whose per-token weights depend on the whole micro-batch.

    teacher: flattened (tokens, ...); labels: (tokens,). Chunk by chunk, without gradient,
    so a HiddenStates teacher never forms more than a chunk's logits; no student pass.
    Returns (tokens,) float32, 0 at ignored positions."""
    gold = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    with torch.no_grad():
        for start in range(0, labels.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            gold[rows] = teacher.rows(rows).gold(labels[rows].clamp(min=0)).to(gold.device)
    return torch.where(labels != ignore_index, gold, torch.zeros_like(gold))
