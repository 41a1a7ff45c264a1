"""Losses: pure tensor math plus schedules. No transformers models, no accelerate, no I/O.

Public interface:
- ``divergence`` / ``fused_divergence``: mean divergence over non-ignored positions, from
  logits or (memory-bounded) from hidden states and an output head;
- ``Logits``, ``HiddenStates``, ``TopK`` (``losses.outputs``): the forms a model's outputs
  take on their way to the loss, declared once; ``TopK.from_logits`` makes the sparse form;
- ``Schedule``, ``Objective``, ``build_objective``: the dynamic soft/hard weighting;
  ``TaidSettings``: the knobs of the ``taid`` strategy;
- ``finish_step_terms``: a step's summed logged terms -> the logged values (on-policy);
- ``DIVERGENCES``, ``SCHEDULES``, ``ADAPTIVE``, ``ON_POLICY_LOSSES``: the names a recipe
  may use.
"""

from __future__ import annotations

from losses.adaptive import ADAPTIVE
from losses.divergences import DIVERGENCES, DivergenceParams
from losses.functional import (
    divergence,
    fused_divergence,
    per_token_divergence,
    token_cross_entropy,
)
from losses.objective import LossTerms, Objective
from losses.on_policy import ON_POLICY_LOSSES, finish_step_terms
from losses.outputs import HiddenStates, Logits, ModelOutput, TeacherOutput, TopK
from losses.schedules import SCHEDULES, Schedule, schedule_from
from losses.taid import TaidSettings

__all__ = ["ADAPTIVE", "DIVERGENCES", "ON_POLICY_LOSSES", "SCHEDULES", "DivergenceParams",
           "HiddenStates", "Logits", "LossTerms", "ModelOutput", "Objective", "Schedule",
           "TaidSettings", "TeacherOutput", "TopK", "build_objective", "divergence",
           "finish_step_terms",
           "fused_divergence", "hard_target_objective", "per_token_divergence",
           "schedule_from", "token_cross_entropy", "topk_from_logits"]


def topk_from_logits(logits, k: int) -> TopK:
    """The sparse form of full teacher logits (..., V): ``TopK.from_logits``."""
    return TopK.from_logits(logits, k)


def build_objective(cfg, on_policy_loss: str = "full",
                    max_steps: int | None = None) -> Objective:
    """An :class:`Objective` from a recipe's ``loss`` section (any object with its fields);
    ``on_policy_loss`` ("full" | "sampled", the recipe's ``on_policy.loss``): the soft term
    on positions the student generated; ``max_steps``: where schedules whose
    ``total_steps`` is null end (the run's ``train.max_steps``)."""
    def schedule(section):
        return schedule_from(section, max_steps)

    def optional(section):
        return None if section is None else schedule(section)

    return Objective(divergence=cfg.divergence, soft_weight=schedule(cfg.soft_weight),
                     temperature=schedule(cfg.temperature),
                     hard_weight=optional(cfg.hard_weight),
                     beta=schedule(cfg.beta) if cfg.divergence == "jsd" else None,
                     skew=cfg.skew, head_mass=cfg.akl_head_mass, adaptive=cfg.adaptive,
                     balance_momentum=cfg.balance_momentum,
                     router_aux_weight=optional(cfg.router_aux_weight),
                     chunk_size=cfg.chunk_size, on_policy_loss=on_policy_loss,
                     taid=TaidSettings(t_start=cfg.taid.t_start, t_end=cfg.taid.t_end,
                                       rate=cfg.taid.rate, momentum=cfg.taid.momentum,
                                       total_steps=cfg.taid.total_steps
                                       if cfg.taid.total_steps is not None else max_steps),
                     todi_sharpness=cfg.todi_sharpness)


def hard_target_objective(chunk_size: int = 256, peer_weight: float = 0.0) -> Objective:
    """For a teacher training beside its student: cross-entropy on the data with weight 1,
    plus ``peer_weight`` times forward KL towards the student's outputs (mutual learning,
    Zhang et al. 2018) when it is given them."""
    return Objective(divergence="forward_kl",
                     soft_weight=Schedule("constant", peer_weight, peer_weight),
                     hard_weight=Schedule("constant", 1.0, 1.0),
                     temperature=Schedule("constant", 1.0, 1.0), chunk_size=chunk_size)
