"""Losses: pure tensor math plus schedules. No transformers models, no accelerate, no I/O.

Public interface: ``divergence``, ``per_token_divergence``, ``token_cross_entropy``,
``DIVERGENCES``, ``Schedule``, ``Objective``, ``build_objective``.
"""

from __future__ import annotations

from losses.divergences import DIVERGENCES, divergence, per_token_divergence, token_cross_entropy
from losses.objective import LossTerms, Objective
from losses.schedules import SHAPES, Schedule, schedule_from

__all__ = ["DIVERGENCES", "SHAPES", "LossTerms", "Objective", "Schedule", "build_objective",
           "divergence", "per_token_divergence", "schedule_from", "token_cross_entropy"]


def build_objective(cfg) -> Objective:
    """An :class:`Objective` from a recipe's ``loss`` section (any object with its fields)."""
    hard = None if cfg.hard_weight is None else schedule_from(cfg.hard_weight)
    return Objective(divergence=cfg.divergence, soft_weight=schedule_from(cfg.soft_weight),
                     temperature=schedule_from(cfg.temperature), hard_weight=hard)
