"""Running a causal LM to the outputs a loss takes, and a causal LM with its objective as
one module. Shared by the student, the frozen teachers and a teacher that trains.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import students
from losses import LossTerms, Objective
from losses.outputs import HiddenStates, Logits, ModelOutput, TeacherOutput


def lm_outputs(lm: nn.Module, input_ids: torch.Tensor, hidden: bool,
               vocab_rows: int | None = None, **kwargs: Any) -> tuple[ModelOutput, Any]:
    """Run ``lm`` on ``input_ids`` (batch, seq). Returns its :class:`HiddenStates` (final
    hidden states and output head, for the fused loss) when ``hidden`` is true and the
    model's logits are exactly ``hidden @ head.T``, else its :class:`Logits`; cut to
    ``vocab_rows`` output rows; and transformers' own output (router logits, ...).
    ``kwargs`` go to the forward (e.g. ``output_router_logits``)."""
    if getattr(getattr(lm, "config", None), "use_cache", None) is not None:
        # one forward over whole blocks: a KV cache would only copy every layer's keys and
        # values (transformers builds one whenever the config's use_cache is on)
        kwargs.setdefault("use_cache", False)
    head = students.fused_head(lm) if hidden else None
    if head is not None:
        out = students.decoder_of(lm)(input_ids=input_ids, **kwargs)
        own: ModelOutput = HiddenStates(out.last_hidden_state, head)
    else:
        out = lm(input_ids=input_ids, **kwargs)
        own = Logits(out.logits)
    return (own if vocab_rows is None else own.limit_vocab(vocab_rows)), out


class LMWithObjective(nn.Module):
    """A causal LM and its objective as one module.

    The loss is computed inside ``forward`` so that DDP, FSDP and DeepSpeed see the whole
    computation (the fused path reads the output head's weight, which a sharded wrapper
    only gathers during forward), and so that the objective's own parameters (learned
    uncertainty weights) train and synchronise with the model's.
    """

    def __init__(self, lm: nn.Module, objective: Objective, fused: bool, router_aux: bool,
                 vocab_rows: int) -> None:
        super().__init__()
        self.lm = lm
        self.objective = objective
        self.fused = fused
        self.vocab_rows = vocab_rows
        self.router_aux = router_aux and getattr(lm.config, "num_local_experts", 0) > 0

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None,
                teacher: TeacherOutput | None, step: int, step_tokens: int,
                outputs_only: bool = False, generated: torch.Tensor | None = None,
                ) -> tuple[LossTerms | None, ModelOutput]:
        """Returns the loss terms and this model's own outputs, detached, for a peer
        (``outputs_only``: the outputs alone, without gradients). ``generated``: bool
        (batch, seq), True where the label is a token the student sampled (on-policy
        rows), or None."""
        if outputs_only:
            with torch.no_grad():
                own, _ = lm_outputs(self.lm, input_ids, self.fused, self.vocab_rows)
            return None, own
        extra = {"output_router_logits": True} if self.router_aux else {}
        own, out = lm_outputs(self.lm, input_ids, self.fused, self.vocab_rows, **extra)
        aux = None
        if self.router_aux:
            aux = students.router_aux_loss(out.router_logits, self.lm.config.num_experts_per_tok)
        terms = self.objective(own, teacher, labels, step, step_tokens, router_aux=aux,
                               generated=generated)
        return terms, own.detach()
