"""The Objective: hard and soft terms of one micro-batch, weighted dynamically.

    total = hard_weight * CE + soft_weight * T^2 * D_T(p || q) + router_aux_weight * aux

soft_weight (alpha), hard_weight (1 - alpha unless scheduled on its own), the temperature
T, jsd's beta and router_aux_weight are schedules of the optimizer step; an adaptive
strategy (``losses.adaptive``) adjusts the weights from detached signals, or (taid) the
soft target. Per-token weights are fixed for the whole micro-batch before the pass (a
strategy that needs the teacher's confidence gets it from a teacher-only pre-pass), and
reach ``chunk_fn`` as per-token rows, so the fused path stays exact. Every sum over
tokens is divided by ``step_tokens``, the valid target tokens of the whole optimizer step
(all micro-batches, all processes), so the step's gradient does not depend on how it is
split. Logged terms are this micro-batch's share of the step mean: summed over a step's
micro-batches (and processes) they give the step's values.

On-policy positions (``generated``: the student sampled the label) have no hard term and
get the soft term of ``on_policy_loss`` (``losses.on_policy``); ``ce`` and ``kd`` then log
the data positions, ``kd_on_policy`` the generated ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from losses.adaptive import ADAPTIVE, StrategySettings, make_strategy
from losses.divergences import DivergenceParams
from losses.fused import chunked_linear_loss, plain_loss
from losses.on_policy import ON_POLICY_LOSSES, on_policy_tokens
from losses.schedules import Schedule
from losses.outputs import HiddenStates, ModelOutput, TeacherOutput, as_output
from losses.taid import TaidSettings
from losses.terms import TermSpec, teacher_gold, token_terms

Tensor = torch.Tensor
# Order of the per-chunk statistics the objective sums.
_STATS = ("ce", "kd", "hard_ce", "soft_kd", "hard_weight", "soft_weight", "tokens")
# With a ``generated`` mask: a share of the step mean, then sums (logged as they are).
_ON_POLICY_SHARES = ("kd_on_policy",)
_ON_POLICY_SUMS = ("reverse_kl_samples_sum", "generated_tokens", "infinite_gold")


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
                 chunk_size: int = 256, ignore_index: int = -100,
                 on_policy_loss: str = "full", taid: TaidSettings | None = None,
                 todi_sharpness: float = 1.0) -> None:
        super().__init__()
        # validates the name and the divergence's knobs early
        TermSpec(kind=divergence, params=DivergenceParams(sharpness=todi_sharpness))
        if adaptive not in ADAPTIVE:
            raise ValueError(f"unknown adaptive strategy {adaptive!r}; "
                             f"allowed: {', '.join(ADAPTIVE)}")
        if on_policy_loss not in ON_POLICY_LOSSES:
            raise ValueError(f"unknown on_policy_loss {on_policy_loss!r}; "
                             f"allowed: {', '.join(ON_POLICY_LOSSES)}")
        self.on_policy_loss = on_policy_loss
        self.divergence = divergence
        self.soft_weight = soft_weight
        self.hard_weight = hard_weight
        self.temperature = temperature
        self.beta = beta
        self.skew = skew
        self.head_mass = head_mass
        self.todi_sharpness = todi_sharpness
        self.router_aux_weight = router_aux_weight
        self.chunk_size = chunk_size
        self.ignore_index = ignore_index
        self.strategy = make_strategy(adaptive, StrategySettings(
            balance_momentum=balance_momentum, taid=taid or TaidSettings()))

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
        labels: (...); generated: bool (...), True where the label is the student's own
        sample (on-policy), or None. Plain tensors and (hidden, head) pairs are accepted
        too."""
        student, teacher = as_output(student), as_output(teacher)
        if generated is not None and teacher is None:
            raise ValueError("on-policy positions (generated) need a teacher to grade them")
        s = self.scalars(step)
        spec = TermSpec(kind=self.divergence, temperature=s["temperature"],
                        params=DivergenceParams(beta=s.get("beta", 0.5), skew=self.skew,
                                                head_mass=self.head_mass,
                                                sharpness=self.todi_sharpness),
                        ignore_index=self.ignore_index,
                        need_teacher_gold=generated is not None,
                        teacher_share=None if teacher is None
                        else self.strategy.teacher_share())
        # Everything the strategy decides is fixed here, before the pass.
        hard_scale, soft_scale = self.strategy.scales(s["hard_weight"], s["soft_weight"])
        per_token = self._token_weights(teacher, labels, s)
        if generated is not None:
            per_token["generated"] = generated
        denominator = torch.as_tensor(step_tokens, dtype=torch.float32).clamp(min=1)

        squared_t = s["temperature"] ** 2

        def chunk_fn(student_logits: Tensor, teacher_rows, chunk_labels: Tensor,
                     rows: dict[str, Tensor]):
            terms = token_terms(student_logits, teacher_rows, chunk_labels, spec)
            hard_w, soft_w = rows["hard_weight"], rows["soft_weight"]
            chunk_generated = rows.get("generated")
            valid = terms.valid.float()
            kd = terms.kd if terms.kd is not None else torch.zeros_like(terms.ce)  # no teacher
            ce_logged, kd_logged, kd_soft, sampled, on_stats = terms.ce, kd, kd, None, []
            if chunk_generated is not None:
                op = on_policy_tokens(terms.ce, terms.teacher_gold, terms.valid,
                                      chunk_generated, self.on_policy_loss)
                zeros = torch.zeros_like(kd)
                hard_w = torch.where(op.on, zeros, hard_w)  # a sample is no hard target
                ce_logged = torch.where(op.on, zeros, terms.ce)  # ce, kd: data positions
                kd_logged = torch.where(op.on, zeros, kd)
                if op.surrogate is None:  # full: the divergence, as on data positions
                    kd_on_policy = torch.where(op.on, kd, zeros)
                else:  # sampled: the estimator replaces the divergence there
                    kd_on_policy, kd_soft = op.log_ratio, kd_logged
                    sampled = (soft_w * op.surrogate).sum()
                on_stats = [kd_on_policy.sum(), op.log_ratio.sum(), op.on.sum(),
                            op.infinite.sum()]
            hard_ce = (hard_w * terms.ce).sum()
            soft_kd = (soft_w * kd_soft).sum()
            numerator = hard_scale * hard_ce + soft_scale * squared_t * soft_kd
            if sampled is not None:
                numerator = numerator + soft_scale * sampled
                # the strategies read the soft term's value as T^2 * soft_kd: the
                # estimator's value (the sampled log-ratio) carries no T^2
                soft_kd = soft_kd + (soft_w * op.log_ratio).sum() / squared_t
            loss = numerator / denominator.to(hard_ce.device)
            stats = torch.stack([ce_logged.sum(), kd_logged.sum(), hard_ce, soft_kd,
                                 (hard_w * valid).sum(), (soft_w * valid).sum(), valid.sum(),
                                 *[x.float() for x in on_stats]])
            return loss, stats.detach()

        if isinstance(student, HiddenStates):  # the fused path: logits chunk by chunk
            total, stats = chunked_linear_loss(student.hidden, student.head, labels, teacher,
                                               chunk_fn, self.chunk_size, per_token)
        else:
            total, stats = plain_loss(student.logits, labels, teacher, chunk_fn, per_token)
        sums = dict(zip(_ON_POLICY_SUMS, stats[len(_STATS) + 1:].unbind()))
        stats = dict(zip(_STATS + _ON_POLICY_SHARES,
                         (stats[:len(_STATS) + 1] / denominator.to(stats.device)).unbind()))
        infinite = sums.pop("infinite_gold", None)
        if infinite is not None and self.on_policy_loss == "sampled" and infinite.item() > 0:
            raise ValueError(
                "on_policy_loss 'sampled' needs the teacher's log-probability of every "
                "sampled token, and it is -inf for some: a TopK teacher without "
                "label_log_probs whose top-k misses the token, or a token the teacher "
                "bans. Use a teacher with full logits or hidden states, a served teacher "
                "(it gives label_log_probs), or on_policy_loss 'full'.")
        share = stats["tokens"]  # this micro-batch's share of the step's valid tokens
        total = total + self.strategy.extra_loss(stats, share, s["temperature"])
        terms = {"ce": stats["ce"], "kd": stats["kd"],
                 "hard_weight": stats["hard_weight"] * hard_scale,
                 "soft_weight": stats["soft_weight"] * soft_scale}
        if router_aux is not None and s.get("router_aux_weight", 0.0) > 0:
            total = total + s["router_aux_weight"] * router_aux * share.to(router_aux.device)
        if generated is not None:
            terms.update({"kd_on_policy": stats["kd_on_policy"], **sums})
        if router_aux is not None:
            terms["router_aux"] = router_aux.detach().float().cpu() * share
        terms["loss"] = total.detach().float().cpu()
        terms.update({k: v * share for k, v in self.strategy.log_values().items()})
        scalars = {k: v for k, v in s.items() if k not in ("soft_weight", "hard_weight")}
        scalars["soft_weight_scheduled"] = s["soft_weight"]
        scalars.update(self.strategy.step_scalars())
        return LossTerms(total=total, terms={k: v.detach().float().cpu() for k, v in terms.items()},
                         scalars=scalars)

    def _token_weights(self, teacher: TeacherOutput | None, labels: Tensor,
                       s: dict[str, float]) -> dict[str, Tensor]:
        """The strategy's per-token (hard, soft) weights for the whole micro-batch, shaped
        like ``labels``; from the teacher's log-probability of each label when it asks."""
        flat = labels.reshape(-1)
        gold = None
        if self.strategy.needs_teacher_gold and teacher is not None:
            gold = teacher_gold(teacher.flatten(), flat, self.chunk_size, self.ignore_index)
        hard_w, soft_w = self.strategy.token_weights(gold, flat != self.ignore_index,
                                                     s["hard_weight"], s["soft_weight"])
        return {"hard_weight": hard_w.reshape(labels.shape),
                "soft_weight": soft_w.reshape(labels.shape)}

    def update(self, step_terms: dict[str, float]) -> None:
        """Once per optimizer step, with the step's logged means (for running averages)."""
        self.strategy.update(step_terms)
