"""The comparison's final evaluation: every run's student against the shared frozen
teacher (KL, top-1 agreement, calibration), and the teacher's own validation loss, on the
positions where the runs measured their final ``val_loss``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distill.compare_plan import Plan

# Why a teacher has no loss of its own in the table, by kind.
_NO_TEACHER_LOSS = {
    "codistill": "n/a: a codistill teacher trains inside each run (its loss is in each "
                 "run's metrics.jsonl as teacher_val_loss)",
    "served": "n/a: a served teacher answers top-k log-probabilities, not a loss",
    "none": "n/a: the runs have no teacher"}


@dataclass
class FinalEval:
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by run directory
    teacher_loss: float | None = None
    teacher_tokens: int | None = None
    teacher: str = ""             # what the teacher is, or why it has no loss
    val_batches: int | None = None     # train.eval_batches: the val_loss positions
    final_batches: int | None = None   # batches of the KL / agreement / ECE pass
    batch_size: int = 16


def evaluate_runs(plan: Plan) -> FinalEval:
    import students
    from distill.corpus import load_corpus
    from distill.data import prepare_data
    from distill.evaluation import evaluate_lm

    recipe = plan.runs[0].recipe  # every run shares data, tokenizer and eval batches
    train = recipe.train
    final_batches = plan.base.compare.eval_batches or train.eval_batches
    result = FinalEval(val_batches=train.eval_batches, final_batches=final_batches,
                       batch_size=train.eval_batch_size)
    # the validation blocks the runs evaluated (the split does not depend on the seed),
    # read from the block cache they filled
    blocks = prepare_data(recipe.data, load_corpus(recipe.data),
                          recipe.trust_remote_code).validation
    pretrained = recipe.teacher.pretrained()
    teacher = None
    if pretrained:
        trusted = students.sources.is_trusted(pretrained, recipe.trust_remote_code)
        teacher = students.load_pretrained(pretrained, trust_remote_code=trusted).eval()
        # once, on exactly the runs' val_loss positions (train.eval_batches)
        scored = evaluate_lm(teacher, blocks, None, train.eval_batch_size, train.eval_batches)
        result.teacher_loss, result.teacher_tokens = scored["val_loss"], scored["tokens"]
        result.teacher = f"`{pretrained}`, frozen"
    else:
        result.teacher = _NO_TEACHER_LOSS.get(recipe.teacher.kind,
                                              f"n/a for a {recipe.teacher.kind} teacher")
    for run in plan.runs:
        student = students.load_pretrained(str(run.directory / "student")).eval()
        row = evaluate_lm(student, blocks, None, train.eval_batch_size, final_batches,
                          reference=teacher)
        config = student.config
        row["experts"] = getattr(config, "num_local_experts", 0) or None
        row["experts_per_token"] = getattr(config, "num_experts_per_tok", None)
        result.runs[str(run.directory)] = row
    return result
