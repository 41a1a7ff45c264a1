"""Teachers: where the soft targets come from. Knows nothing of the training loop.

Public interface: ``Teacher`` (the contract, ``teachers.base``), ``MicroBatch``,
``TeacherSetup``, ``Placement``, ``TeacherRefused`` (what ``prepare`` raises when a
setting stops it), ``TEACHERS`` (kind name -> :class:`TeacherKind`),
``build`` and ``check``; ``lm_outputs`` and ``LMWithObjective`` (``teachers.forward``),
shared with the student; ``TeacherUnavailable``, what a served teacher raises when its
server stops answering mid-run (the loop turns it into a clean stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from teachers import cached, codistill, hf, served
from teachers.base import (MicroBatch, NoTeacher, Placement, Teacher, TeacherRefused,
                           TeacherSetup)
from teachers.cached import CachedTeacher
from teachers.codistill import CodistillTeacher
from teachers.forward import LMWithObjective, lm_outputs
from teachers.hf import HFTeacher
from teachers.openai_client import TeacherUnavailable
from teachers.served import ServedTeacher

__all__ = ["TEACHERS", "CachedTeacher", "CodistillTeacher", "HFTeacher", "LMWithObjective",
           "MicroBatch", "NoTeacher", "Placement", "ServedTeacher", "Teacher", "TeacherKind",
           "TeacherRefused", "TeacherSetup", "TeacherUnavailable", "build", "check", "lm_outputs"]


@dataclass(frozen=True)
class TeacherKind:
    """One entry of the registry: how a kind is built from the recipe's teacher section
    and how that section is checked for it (ValueError naming the recipe key)."""

    summary: str
    build: Callable[[Any, TeacherSetup], Teacher]
    check: Callable[[Any], None]
    sections: tuple[str, ...]  # the teacher.* sub-sections it reads
    has_weights: bool          # a student can be initialised from it (init: from_teacher)


def _check_none(cfg) -> None:
    if cfg.prefetch == "on":
        raise ValueError("teacher.prefetch: 'on' needs a frozen teacher; kind 'none' has no "
                         "teacher to run ahead. Use 'auto' or 'off'.")


TEACHERS: dict[str, TeacherKind] = {
    "codistill": TeacherKind(
        "built from `teacher.codistill.model` and trained on the hard targets alongside the "
        "student", codistill.build, codistill.check, ("codistill",), has_weights=True),
    "hf": TeacherKind(
        "a frozen causal LM loaded with `from_pretrained(teacher.hf.name_or_path)`",
        hf.build, hf.check, ("hf",), has_weights=True),
    "cached": TeacherKind(
        "the `hf` teacher's top-k outputs computed once over the training data, stored on "
        "disk and reused", cached.build, cached.check, ("hf", "cached"), has_weights=True),
    "served": TeacherKind(
        "a frozen teacher served over HTTP by an inference engine (`vllm serve`, `distill "
        "serve-teacher`): its top-k prompt log-probabilities from `teacher.served.urls`",
        served.build, served.check, ("served",), has_weights=False),
    "none": TeacherKind(
        "no teacher (hard targets only, e.g. to pretrain a teacher)",
        lambda cfg, setup: NoTeacher(), _check_none, (), has_weights=False),
}


def build(cfg, setup: TeacherSetup) -> Teacher:
    """The teacher named by ``cfg.kind`` (a recipe's teacher section)."""
    return TEACHERS[cfg.kind].build(cfg, setup)


def check(cfg) -> None:
    """Check the recipe's teacher section for its kind; ValueError names the key."""
    TEACHERS[cfg.kind].check(cfg)
