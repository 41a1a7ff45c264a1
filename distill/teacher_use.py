"""Whether a run's student ever reads its teacher's outputs, decided from the recipe alone:
the teacher's build (not built when unused), the teacher path's existence check, and the
model card's title all ask this one question."""

from __future__ import annotations

from distill.config import Recipe, ScheduleConfig

# Kinds whose only work is to answer the student: with soft weight 0 they are not built.
# (A codistill teacher trains a model of its own: it is built, and its outputs are not
# handed to the student's loss; `none` has nothing to build.)
ANSWER_ONLY = ("hf", "cached", "served")


def _zero_throughout(schedule: ScheduleConfig) -> bool:
    """Whether a schedule is 0 at every step: every shape moves between its warmup start,
    start and end (a constant one stays at its start), so all of those being 0 is exact."""
    values = [schedule.start, schedule.warmup_start]
    if schedule.kind != "constant":
        values.append(schedule.end)
    return all(not v for v in values if v is not None)


def unused_teacher_reason(recipe: Recipe) -> str | None:
    """Why the student's loss never reads the teacher's outputs in this run, or None when
    it may: the soft weight is 0 at every step, no adaptive strategy reads the teacher's
    outputs (they weight terms by them), and no on-policy rows need grading."""
    if not _zero_throughout(recipe.loss.soft_weight):
        return None
    if recipe.loss.adaptive != "none" or recipe.on_policy.active():
        return None
    return "loss.soft_weight is 0 for the whole run"


def teacher_skipped(recipe: Recipe) -> str | None:
    """Why the run builds no teacher at all (an answer-only teacher nobody reads, and no
    student initialised from its weights), or None when it builds one."""
    if recipe.teacher.kind not in ANSWER_ONLY or recipe.student.init == "from_teacher":
        return None
    return unused_teacher_reason(recipe)
