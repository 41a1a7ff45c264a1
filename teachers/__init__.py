"""Teachers: where the soft targets come from. Knows nothing of losses or schedules.

Public interface: ``Teacher`` (the protocol), ``TEACHERS`` (name -> factory), ``build``.
"""

from __future__ import annotations

from typing import Callable

from teachers.base import Teacher
from teachers.codistill import CodistillTeacher
from teachers.hf import HFTeacher

__all__ = ["TEACHERS", "Teacher", "build"]


def _codistill(cfg, *, model_config, train) -> Teacher:
    import students

    return CodistillTeacher(students.build_model(model_config), lr=cfg.lr,
                            weight_decay=train.weight_decay, warmup_steps=train.warmup_steps,
                            total_steps=train.max_steps, lr_schedule=train.lr_schedule)


def _hf(cfg, *, model_config, train) -> Teacher:
    return HFTeacher(cfg.name_or_path, dtype=cfg.dtype)


TEACHERS: dict[str, Callable[..., Teacher]] = {"codistill": _codistill, "hf": _hf}


def build(cfg, *, model_config, train) -> Teacher:
    """The teacher named by ``cfg.kind``. ``model_config`` is the transformers config a
    teacher built from scratch uses; ``train`` gives the step budget and LR schedule shape."""
    return TEACHERS[cfg.kind](cfg, model_config=model_config, train=train)
