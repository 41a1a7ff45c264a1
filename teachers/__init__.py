"""Teachers: where the soft targets come from. Knows nothing of losses or schedules.

Public interface: ``Teacher`` (the protocol), ``TEACHERS`` (name -> factory), ``build``.
"""

from __future__ import annotations

from typing import Callable

from teachers.base import Teacher
from teachers.codistill import CodistillTeacher
from teachers.hf import HFTeacher

__all__ = ["TEACHERS", "Teacher", "build"]


def _codistill(cfg, *, model_config, make_optimizer) -> Teacher:
    import students

    model = students.build_model(model_config)
    return CodistillTeacher(model, *make_optimizer(model, cfg.lr))


def _hf(cfg, *, model_config, make_optimizer) -> Teacher:
    return HFTeacher(cfg.name_or_path, dtype=cfg.dtype)


TEACHERS: dict[str, Callable[..., Teacher]] = {"codistill": _codistill, "hf": _hf}


def build(cfg, *, model_config, make_optimizer) -> Teacher:
    """The teacher named by ``cfg.kind``. ``model_config`` is the transformers config a
    teacher built from scratch uses; ``make_optimizer(model, lr)`` returns the
    (optimizer, LR scheduler) pair of a teacher that trains."""
    return TEACHERS[cfg.kind](cfg, model_config=model_config, make_optimizer=make_optimizer)
