"""A causal LM and its objective as one module.

The loss is computed inside ``forward`` so that DDP, FSDP and DeepSpeed see the whole
computation (the fused path reads the output head's weight, which a sharded wrapper only
gathers during forward), and so that the objective's own parameters (learned uncertainty
weights) train and synchronise with the model's.
"""

from __future__ import annotations

import torch
from torch import nn

import students
from losses import LossTerms, Objective, TopK
from teachers.base import TeacherOutput


def limit_vocab(outputs: TeacherOutput | None, rows: int) -> TeacherOutput | None:
    """Drop output-head rows past the shared vocabulary (padding rows of a padded head)."""
    if outputs is None or isinstance(outputs, TopK):
        return outputs  # a cache is built within the limit
    if isinstance(outputs, tuple):
        hidden, head = outputs
        return hidden, head[:rows]
    return outputs[..., :rows]


class LMWithObjective(nn.Module):
    def __init__(self, lm: nn.Module, objective: Objective, fused: bool, router_aux: bool,
                 vocab_rows: int) -> None:
        super().__init__()
        self.lm = lm
        self.objective = objective
        self.fused = fused
        self.vocab_rows = vocab_rows
        config = lm.config
        self.router_aux = router_aux and getattr(config, "num_local_experts", 0) > 0

    def _outputs(self, input_ids: torch.Tensor, router: bool):
        extra = {"output_router_logits": True} if router else {}
        if self.fused:
            out = students.decoder_of(self.lm)(input_ids=input_ids, **extra)
            head = students.fused_head(self.lm)[: self.vocab_rows]
            return (out.last_hidden_state, head), out
        out = self.lm(input_ids=input_ids, **extra)
        return out.logits[..., : self.vocab_rows], out

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None,
                teacher: TeacherOutput | None, step: int, step_tokens: int,
                outputs_only: bool = False) -> tuple[LossTerms | None, TeacherOutput]:
        """Returns the loss terms and this model's own outputs, detached, for a peer
        (``outputs_only``: the outputs alone, without gradients)."""
        if outputs_only:
            with torch.no_grad():
                own, _ = self._outputs(input_ids, router=False)
            return None, own
        own, out = self._outputs(input_ids, router=self.router_aux)
        aux = None
        if self.router_aux:
            aux = students.router_aux_loss(out.router_logits, self.lm.config.num_experts_per_tok)
        terms = self.objective(own, limit_vocab(teacher, self.vocab_rows), labels, step,
                               step_tokens, router_aux=aux)
        mine = (own[0].detach(), own[1].detach()) if isinstance(own, tuple) else own.detach()
        return terms, mine
