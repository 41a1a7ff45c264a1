"""What a model hands the loss: the one set of output types, declared once.

A teacher answers in one of three forms, and the student's own outputs take the first two:

- :class:`Logits`: full logits ``(..., V)``;
- :class:`HiddenStates`: final hidden states ``(..., H)`` with the output head ``(V, H)``,
  whose logits the fused path forms chunk by chunk (never the whole ``(tokens, V)``);
- :class:`TopK`: top-k log-probabilities with a tail bucket (a cache, or a served teacher).

Each type knows how to move itself to a device, flatten itself to token-major form, give
the rows of a chunk of tokens, cut its vocabulary to the rows the loss compares, list its
tensors (for CUDA stream bookkeeping), give its log-probability of each label and turn
itself into the two distributions a divergence compares; so neither the loss nor the loop
branches on the form. Teachers import these types and nothing else of ``losses/``
internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F

from losses.sparse import fold, masked_logsumexp

Tensor = torch.Tensor


@dataclass
class SoftTargets:
    """Both sides of a divergence for n tokens, at temperature T: ``log_q`` (student) and
    ``log_p`` (teacher), each (n, outcomes); ``gold`` (n,) is the teacher's log-probability
    of the label at T = 1 (None when not asked for)."""

    log_q: Tensor
    log_p: Tensor
    gold: Tensor | None


def _tempered(logits: Tensor, temperature: float) -> Tensor:
    """float32 logits / T, without a copy when neither changes anything."""
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


@dataclass
class Logits:
    """Full logits (..., V)."""

    logits: Tensor

    @property
    def shape(self) -> torch.Size:
        return self.logits.shape[:-1]

    def tensors(self) -> list[Tensor]:
        return [self.logits]

    def limit_vocab(self, rows: int) -> "Logits":
        """Drop output-head rows past the shared vocabulary (padding rows of a padded head)."""
        return self if self.logits.shape[-1] == rows else Logits(self.logits[..., :rows])

    def detach(self) -> "Logits":
        return Logits(self.logits.detach())

    def to(self, device: torch.device) -> "Logits":
        return Logits(self.logits.to(device))

    def flatten(self) -> "Logits":
        """Token-major (tokens, V), detached: teacher outputs carry no gradient."""
        return Logits(self.logits.reshape(-1, self.logits.shape[-1]).detach())

    def rows(self, rows: slice) -> "Logits":
        return Logits(self.logits[rows])

    def gold(self, labels: Tensor, log_p: Tensor | None = None) -> Tensor:
        """The teacher's log-probability of each label at T = 1: (n,) for labels (n,),
        clamped to valid ids. ``log_p``: the T = 1 log-softmax when already computed."""
        if log_p is None:
            log_p = F.log_softmax(self.logits.float(), dim=-1)
        return log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)

    def soft_targets(self, student_log_q: Tensor, labels: Tensor, temperature: float,
                     need_gold: bool) -> SoftTargets:
        """student_log_q: (n, V) at temperature T; labels: (n,), clamped to valid ids."""
        log_p = F.log_softmax(_tempered(self.logits, temperature), dim=-1)
        gold = None
        if need_gold:
            gold = self.gold(labels, log_p if temperature == 1.0 else None)
        return SoftTargets(student_log_q, log_p, gold)


@dataclass
class HiddenStates:
    """Final hidden states (..., H) and the output head (V, H): logits = hidden @ head.T."""

    hidden: Tensor
    head: Tensor

    @property
    def shape(self) -> torch.Size:
        return self.hidden.shape[:-1]

    def tensors(self) -> list[Tensor]:
        return [self.hidden, self.head]

    def limit_vocab(self, rows: int) -> "HiddenStates":
        return self if self.head.shape[0] == rows else HiddenStates(self.hidden, self.head[:rows])

    def detach(self) -> "HiddenStates":
        return HiddenStates(self.hidden.detach(), self.head.detach())

    def to(self, device: torch.device) -> "HiddenStates":
        return HiddenStates(self.hidden.to(device), self.head.to(device))

    def flatten(self) -> "HiddenStates":
        return HiddenStates(self.hidden.reshape(-1, self.hidden.shape[-1]).detach(),
                            self.head.detach())

    def rows(self, rows: slice) -> Logits:
        """The logits of a chunk of tokens, formed here and only here (no gradient)."""
        with torch.no_grad():
            return Logits(self.hidden[rows].to(self.head.dtype) @ self.head.t())  # (n, V)

    def gold(self, labels: Tensor) -> Tensor:
        return self.rows(slice(None)).gold(labels)

    def soft_targets(self, student_log_q: Tensor, labels: Tensor, temperature: float,
                     need_gold: bool) -> SoftTargets:
        return self.rows(slice(None)).soft_targets(student_log_q, labels, temperature, need_gold)


@dataclass
class TopK:
    """log_probs, indices: (..., k); log_tail: (...), the log of the mass outside the top-k
    (-inf when there is none). Log-probabilities are normalised over the full vocabulary.
    ``label_log_probs`` (...), when the source knows it (a served teacher scores every prompt
    token), is the teacher's log-probability of each position's label, inside the top-k or
    not; without it a label outside the top-k counts as probability 0."""

    log_probs: Tensor
    indices: Tensor
    log_tail: Tensor
    label_log_probs: Tensor | None = None

    @classmethod
    def from_logits(cls, logits: Tensor, k: int) -> "TopK":
        """The sparse form of full logits (..., V): exact tail mass, float32."""
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        top_values, top_indices = log_probs.topk(min(k, logits.shape[-1]), dim=-1)
        return cls(top_values, top_indices, masked_logsumexp(log_probs, top_indices))

    @property
    def shape(self) -> torch.Size:
        return self.indices.shape[:-1]

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.log_probs, self.indices, self.log_tail, self.label_log_probs)
                if t is not None]

    def _map(self, fn) -> "TopK":
        """The same fields, each through ``fn`` (leading dims only)."""
        label = None if self.label_log_probs is None else fn(self.label_log_probs, 0)
        return TopK(fn(self.log_probs, 1), fn(self.indices, 1), fn(self.log_tail, 0), label)

    def limit_vocab(self, rows: int) -> "TopK":
        return self  # built within the shared vocabulary

    def detach(self) -> "TopK":
        return self  # carries no gradient

    def to(self, device: torch.device) -> "TopK":
        return self._map(lambda t, _: t.to(device))

    def flatten(self) -> "TopK":
        """Flatten the leading dims: (tokens, k) and (tokens,)."""
        return self._map(lambda t, trailing: t.reshape(-1, *t.shape[t.dim() - trailing:]))

    def rows(self, rows) -> "TopK":
        return self._map(lambda t, _: t[rows])

    __getitem__ = rows

    def soft_targets(self, student_log_q: Tensor, labels: Tensor, temperature: float,
                     need_gold: bool) -> SoftTargets:
        """Both sides folded onto the teacher's k tokens plus the tail bucket."""
        log_q, log_p = fold(student_log_q, self.log_probs, self.indices, self.log_tail,
                            temperature)
        return SoftTargets(log_q, log_p, self.gold(labels) if need_gold else None)

    def gold(self, labels: Tensor) -> Tensor:
        """The teacher's log-probability of each label (n,) at T = 1: ``label_log_probs``
        when the source gave them, else from the top-k (-inf for a label outside it)."""
        if self.label_log_probs is not None:
            return self.label_log_probs.float()
        hit = self.indices == labels.unsqueeze(-1)
        return torch.where(hit, self.log_probs.float(),
                           torch.full_like(self.log_probs, float("-inf"), dtype=torch.float32)
                           ).amax(dim=-1)


# A teacher's answer for a micro-batch (None: no teacher); the student's own outputs are
# the first two forms.
TeacherOutput = Union[Logits, HiddenStates, TopK]
ModelOutput = Union[Logits, HiddenStates]


def as_output(value: Tensor | tuple[Tensor, Tensor] | TeacherOutput | None) -> TeacherOutput | None:
    """The functional API also takes plain forms: a logits tensor, or a (hidden, head)
    pair. Everything inside the package passes the typed forms."""
    if value is None or isinstance(value, (Logits, HiddenStates, TopK)):
        return value
    if isinstance(value, tuple):
        return HiddenStates(*value)
    return Logits(value)
