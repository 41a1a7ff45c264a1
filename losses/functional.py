"""The functional API: one call, one mean divergence (or cross-entropy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from losses.divergences import DivergenceParams
from losses.fused import chunked_linear_loss
from losses.outputs import TeacherOutput, as_output
from losses.terms import TermSpec, token_terms

Tensor = torch.Tensor


def _spec(kind: str, temperature: float, beta: float, skew: float, head_mass: float,
          ignore_index: int, sharpness: float = 1.0) -> TermSpec:
    return TermSpec(kind=kind, temperature=temperature, ignore_index=ignore_index,
                    params=DivergenceParams(beta=beta, skew=skew, head_mass=head_mass,
                                            sharpness=sharpness),
                    need_ce=False)


def _flat_terms(student_logits: Tensor, teacher: Tensor | TeacherOutput, labels: Tensor,
                spec: TermSpec):
    """token_terms over (..., V) inputs flattened to (tokens, V)."""
    flat_teacher = as_output(teacher).flatten()
    return token_terms(student_logits.reshape(-1, student_logits.shape[-1]),
                       flat_teacher.rows(slice(None)), labels.reshape(-1), spec)


def per_token_divergence(student_logits: Tensor, teacher: Tensor | TeacherOutput, kind: str = "forward_kl",
                         temperature: float = 1.0, beta: float = 0.5, skew: float = 0.1,
                         head_mass: float = 0.5, sharpness: float = 1.0) -> Tensor:
    """The divergence at every position: logits (..., V) -> (...)."""
    spec = _spec(kind, temperature, beta, skew, head_mass, -100, sharpness)
    shape = student_logits.shape[:-1]
    labels = torch.zeros(shape, dtype=torch.long, device=student_logits.device)
    return _flat_terms(student_logits, teacher, labels, spec).kd.reshape(shape)


def divergence(student_logits: Tensor, teacher: Tensor | TeacherOutput, labels: Tensor,
               kind: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5,
               skew: float = 0.1, ignore_index: int = -100, head_mass: float = 0.5,
               sharpness: float = 1.0) -> Tensor:
    """Mean over positions whose label is not ``ignore_index`` (0 when there are none) of
    the divergence between softmax(teacher / T) and softmax(student / T).

    student_logits: (..., V); teacher: logits (..., V), a :class:`TopK` or any teacher
    output (``losses.outputs``); labels: (...),
    aligned with the logits. No T^2 factor: the objective applies it. ``beta`` (jsd),
    ``skew`` (skew_kl, skew_reverse_kl), ``head_mass`` (akl) and ``sharpness`` (todi) are
    the divergences' own knobs (``DivergenceParams``).
    """
    spec = _spec(kind, temperature, beta, skew, head_mass, ignore_index, sharpness)
    terms = _flat_terms(student_logits, teacher, labels, spec)
    return terms.kd.sum() / terms.valid.sum().clamp(min=1)


def fused_divergence(student_hidden: Tensor, student_head_weight: Tensor,
                     teacher: Tensor | tuple[Tensor, Tensor] | TeacherOutput,
                     labels: Tensor, kind: str = "forward_kl", temperature: float = 1.0,
                     beta: float = 0.5, skew: float = 0.1, ignore_index: int = -100,
                     head_mass: float = 0.5, chunk_size: int = 256,
                     sharpness: float = 1.0) -> Tensor:
    """:func:`divergence` from hidden states, never holding (tokens, V) float32 tensors for
    the whole batch. student_hidden: (..., H); student_head_weight: (V, H) as in nn.Linear;
    teacher: logits (..., V), a TopK, or a (teacher_hidden, teacher_head_weight) pair.
    Same value and gradients as the plain path."""
    spec = _spec(kind, temperature, beta, skew, head_mass, ignore_index, sharpness)

    def chunk_fn(logits, teacher_rows, chunk_labels, _per_token):
        terms = token_terms(logits, teacher_rows, chunk_labels, spec)
        return terms.kd.sum(), terms.valid.sum().float().unsqueeze(0)

    total, count = chunked_linear_loss(student_hidden, student_head_weight, labels,
                                       as_output(teacher), chunk_fn, chunk_size)
    return total / count[0].clamp(min=1)


def token_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Hard-target cross-entropy per position in float32, 0 where ignored: (...)."""
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=ignore_index, reduction="none")
    return flat.reshape(labels.shape)
