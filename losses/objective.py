"""The Objective: hard and soft terms of one micro-batch, weighted dynamically.

    total = hard_weight * CE + soft_weight * T^2 * D_T(p || q) + router_aux_weight * aux

soft_weight (alpha), hard_weight (1 - alpha unless scheduled on its own), the temperature
T, jsd's beta and router_aux_weight are schedules of the optimizer step; an adaptive
strategy (``losses.adaptive``) adjusts the weights from detached signals. Every sum over
tokens is divided by ``step_tokens``, the valid target tokens of the whole optimizer step
(all micro-batches, all processes), so the step's gradient does not depend on how it is
split. Logged terms are this micro-batch's share of the step mean: summed over a step's
micro-batches (and processes) they give the step's values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from losses.adaptive import ADAPTIVE, make_strategy
from losses.divergences import DivergenceParams
from losses.fused import chunked_linear_loss, plain_loss
from losses.schedules import Schedule
from losses.outputs import HiddenStates, ModelOutput, TeacherOutput, as_output
from losses.terms import TermSpec, token_terms

Tensor = torch.Tensor
# Order of the per-chunk statistics the objective sums.
_STATS = ("ce", "kd", "hard_ce", "soft_kd", "hard_weight", "soft_weight", "tokens")


@dataclass
class LossTerms:
    """``total`` carries the graph; ``terms`` are detached shares of the step means;
    ``scalars`` are the step's scheduled values (the same for every micro-batch)."""

    total: Tensor
    terms: dict[str, Tensor]
    scalars: dict[str, float] = field(default_factory=dict)


class Objective(nn.Module):
    def __init__(self, divergence: str, soft_weight: Schedule, temperature: Schedule,
                 hard_weight: Schedule | None = None, beta: Schedule | None = None,
                 skew: float = 0.1, head_mass: float = 0.5, adaptive: str = "none",
                 balance_momentum: float = 0.9, router_aux_weight: Schedule | None = None,
                 chunk_size: int = 256, ignore_index: int = -100) -> None:
        super().__init__()
        TermSpec(kind=divergence)  # validates the name early
        if adaptive not in ADAPTIVE:
            raise ValueError(f"unknown adaptive strategy {adaptive!r}; "
                             f"allowed: {', '.join(ADAPTIVE)}")
        self.divergence = divergence
        self.soft_weight = soft_weight
        self.hard_weight = hard_weight
        self.temperature = temperature
        self.beta = beta
        self.skew = skew
        self.head_mass = head_mass
        self.router_aux_weight = router_aux_weight
        self.chunk_size = chunk_size
        self.ignore_index = ignore_index
        self.strategy = make_strategy(adaptive, balance_momentum)

    def scalars(self, step: int) -> dict[str, float]:
        """The scheduled values at ``step``."""
        alpha = self.soft_weight(step)
        values = {"soft_weight": alpha,
                  "hard_weight": 1.0 - alpha if self.hard_weight is None else self.hard_weight(step),
                  "temperature": self.temperature(step)}
        if self.beta is not None:
            values["beta"] = self.beta(step)
        if self.router_aux_weight is not None and (self.router_aux_weight.start
                                                   or self.router_aux_weight.end):
            values["router_aux_weight"] = self.router_aux_weight(step)
        return values

    def forward(self, student: ModelOutput, teacher: TeacherOutput | None,
                labels: Tensor, step: int, step_tokens: int | Tensor,
                router_aux: Tensor | None = None, generated: Tensor | None = None) -> LossTerms:
        """student: its Logits, or its HiddenStates for the fused path; teacher: any
        teacher output of the same leading shape, or None for a hard-target-only loss;
        labels: (...); generated: a bool mask (...) of labels the student sampled (their
        hard weight is 0), or None. Plain tensors and (hidden, head) pairs are accepted too."""
        student, teacher = as_output(student), as_output(teacher)
        s = self.scalars(step)
        spec = TermSpec(kind=self.divergence, temperature=s["temperature"],
                        params=DivergenceParams(beta=s.get("beta", 0.5), skew=self.skew,
                                                head_mass=self.head_mass),
                        ignore_index=self.ignore_index,
                        need_teacher_gold=self.strategy.needs_teacher_gold)
        hard_scale, soft_scale = self.strategy.scales()  # fixed before the pass
        denominator = torch.as_tensor(step_tokens, dtype=torch.float32).clamp(min=1)
        # Minimal on-policy support (the loss side's fuller version replaces it): both paths
        # call chunk_fn on consecutive chunks of the flattened tokens, in order, so a running
        # offset finds each chunk's slice of the mask.
        flat_generated = None if generated is None else generated.reshape(-1)
        offset = [0]

        def chunk_fn(student_logits: Tensor, teacher_rows, chunk_labels: Tensor):
            terms = token_terms(student_logits, teacher_rows, chunk_labels, spec)
            hard_w, soft_w = self.strategy.token_weights(terms, s["hard_weight"],
                                                         s["soft_weight"])
            if flat_generated is not None:  # a sampled token is no data target: no hard CE
                n = chunk_labels.shape[0]
                sampled = flat_generated[offset[0]:offset[0] + n].to(chunk_labels.device)
                offset[0] += n
                hard_w = hard_w * (~sampled).float()
            valid = terms.valid.float()
            hard_ce = (hard_w * terms.ce).sum()
            kd = terms.kd if terms.kd is not None else torch.zeros_like(terms.ce)  # no teacher
            soft_kd = (soft_w * kd).sum()
            loss = (hard_scale * hard_ce + soft_scale * s["temperature"] ** 2 * soft_kd
                    ) / denominator.to(hard_ce.device)
            stats = torch.stack([terms.ce.sum(), kd.sum(), hard_ce, soft_kd,
                                 (hard_w * valid).sum(), (soft_w * valid).sum(), valid.sum()])
            return loss, stats.detach()

        if isinstance(student, HiddenStates):  # the fused path: logits chunk by chunk
            total, stats = chunked_linear_loss(student.hidden, student.head, labels, teacher,
                                               chunk_fn, self.chunk_size)
        else:
            total, stats = plain_loss(student.logits, labels, teacher, chunk_fn)
        stats = dict(zip(_STATS, (stats / denominator.to(stats.device)).unbind()))
        share = stats["tokens"]  # this micro-batch's share of the step's valid tokens
        total = total + self.strategy.extra_loss(stats, share, s["temperature"])
        terms = {"ce": stats["ce"], "kd": stats["kd"],
                 "hard_weight": stats["hard_weight"] * hard_scale,
                 "soft_weight": stats["soft_weight"] * soft_scale}
        if router_aux is not None and s.get("router_aux_weight", 0.0) > 0:
            total = total + s["router_aux_weight"] * router_aux * share.to(router_aux.device)
        if router_aux is not None:
            terms["router_aux"] = router_aux.detach().float().cpu() * share
        terms["loss"] = total.detach().float().cpu()
        terms.update({k: v * share for k, v in self.strategy.log_values().items()})
        scalars = {k: v for k, v in s.items() if k not in ("soft_weight", "hard_weight")}
        scalars["soft_weight_scheduled"] = s["soft_weight"]
        return LossTerms(total=total, terms={k: v.detach().float().cpu() for k, v in terms.items()},
                         scalars=scalars)

    def update(self, step_terms: dict[str, float]) -> None:
        """Once per optimizer step, with the step's logged means (for running averages)."""
        self.strategy.update(step_terms)
