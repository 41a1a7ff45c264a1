"""On-policy positions: tokens the student sampled itself (rollouts), graded by the teacher.

A position is *generated* when its label is the student's own sample y. There the label is
not data, so the hard cross-entropy is off; the soft term is, by ``on_policy_loss``:

- ``full``: the recipe's divergence between the two distributions, as on data positions;
- ``sampled``: the sampled reverse-KL estimator, per token, at temperature 1:

      surrogate = (log q(y) - log p(y)).detach() * log q(y)

  With y ~ q its gradient, (log q(y) - log p(y)) * grad log q(y), is the REINFORCE
  estimate of grad KL(q || p) (advantage -(log q - log p); the score's own term
  E[grad log q] is 0). Its advantage is detached, so the chunk loss stays linear in the
  upstream gradient and the fused path stays exact. It needs the teacher's log-probability
  of every sampled token: full logits, hidden states, or a TopK with ``label_log_probs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor
ON_POLICY_LOSSES = ("full", "sampled")


@dataclass
class OnPolicyTokens:
    """All (n,). ``on``: valid generated positions; ``log_ratio``: log q(y) - log p(y) at
    T = 1, detached, 0 off ``on`` and where p(y) is -inf; ``infinite``: positions of ``on``
    whose teacher log-probability is -inf (unknown to a TopK, or banned by the teacher);
    ``surrogate``: the sampled estimator's per-token loss (``sampled``), else None."""

    on: Tensor
    log_ratio: Tensor
    infinite: Tensor
    surrogate: Tensor | None


def sampled_reverse_kl(student_log_q: Tensor, teacher_log_p: Tensor) -> Tensor:
    """The per-token surrogate (log q(y) - log p(y)).detach() * log q(y); both (n,) at
    T = 1, ``student_log_q`` with its graph."""
    return (student_log_q - teacher_log_p).detach() * student_log_q


def on_policy_tokens(ce: Tensor, teacher_gold: Tensor, valid: Tensor, generated: Tensor,
                     mode: str) -> OnPolicyTokens:
    """ce: the student's cross-entropy of each label at T = 1, i.e. -log q(y) (n,);
    teacher_gold: the teacher's log p(y) at T = 1 (n,); valid, generated: bool (n,)."""
    on = generated.to(valid.device) & valid
    known = on & torch.isfinite(teacher_gold)
    log_q = -ce
    zeros = torch.zeros_like(ce)
    log_ratio = torch.where(known, log_q.detach() - teacher_gold, zeros)
    surrogate = None
    if mode == "sampled":
        surrogate = torch.where(known, sampled_reverse_kl(log_q, teacher_gold), zeros)
    return OnPolicyTokens(on=on, log_ratio=log_ratio, infinite=on & ~known,
                          surrogate=surrogate)


def finish_step_terms(terms: dict[str, float]) -> dict[str, float]:
    """The step's logged terms, summed over micro-batches and processes -> what is logged.

    Every term is additive (a share of the step mean, or a count), except the sampled
    reverse KL, a mean over the step's *generated* tokens: the objective hands its sum as
    ``reverse_kl_samples_sum``; this divides it by ``generated_tokens`` (0 when the step
    generated nothing) into ``reverse_kl_samples``. Without on-policy terms it changes
    nothing."""
    if "reverse_kl_samples_sum" not in terms:
        return terms
    finished = {k: v for k, v in terms.items() if k != "reverse_kl_samples_sum"}
    count = terms.get("generated_tokens", 0.0)
    finished["reverse_kl_samples"] = terms["reverse_kl_samples_sum"] / count if count else 0.0
    return finished
