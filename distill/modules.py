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
from losses import LossTerms, Objective
from teachers.base import TeacherOutput


class LMWithObjective(nn.Module):
    def __init__(self, lm: nn.Module, objective: Objective, fused: bool,
                 router_aux: bool) -> None:
        super().__init__()
        self.lm = lm
        self.objective = objective
        self.fused = fused
        self.router_aux = router_aux and getattr(lm.config, "num_local_experts", 0) > 0

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor,
                teacher: TeacherOutput | None, step: int,
                step_tokens: int) -> tuple[LossTerms, TeacherOutput]:
        """Returns the loss terms and this model's own outputs, detached, for a peer."""
        extra = {"output_router_logits": True} if self.router_aux else {}
        if self.fused:
            out = students.decoder_of(self.lm)(input_ids=input_ids, **extra)
            head = students.fused_head(self.lm)
            own: TeacherOutput = (out.last_hidden_state, head)
            mine = (out.last_hidden_state.detach(), head.detach())
        else:
            out = self.lm(input_ids=input_ids, **extra)
            own, mine = out.logits, out.logits.detach()
        aux = None
        if self.router_aux:
            aux = students.router_aux_loss(out.router_logits, self.lm.config.num_experts_per_tok)
        terms = self.objective(own, teacher, labels, step, step_tokens, router_aux=aux)
        return terms, mine
