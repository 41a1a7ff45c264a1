"""The loop's policies that keep state between steps: what to do with a step whose terms are
not finite, and evaluation on the validation split (with its log rows)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from distill.checkpoint import last_complete
from distill.errors import TrainingStopped
from distill.evaluation import evaluate_lm
from distill.metrics import MetricsLog


class NonFiniteGuard:
    """Decides whether a step may reach the optimizer. A step without valid targets is
    skipped; a NaN or infinite term stops the run (``on_nonfinite: stop``) or skips the
    step, until ``max_skipped`` steps in a row were skipped."""

    def __init__(self, on_nonfinite: str, max_skipped: int, output_dir: Path) -> None:
        self.stop_on_nonfinite = on_nonfinite == "stop"
        self.max_skipped = max_skipped
        self.output_dir = output_dir
        self.skipped_in_a_row = 0

    def skip_reason(self, terms: dict[str, float], step_tokens: int, step: int) -> str | None:
        """None when the step may go on; else why it is skipped. Raises TrainingStopped
        when the run must stop (before the optimizer step: the last checkpoint is good)."""
        bad = next(((k, v) for k, v in terms.items() if not math.isfinite(v)), None)
        if bad is None and step_tokens > 0:
            self.skipped_in_a_row = 0
            return None
        reason = "no valid target tokens" if bad is None else f"non-finite {bad[0]} ({bad[1]})"
        self.skipped_in_a_row += 1
        if bad is not None and (self.stop_on_nonfinite
                                or self.skipped_in_a_row > self.max_skipped):
            raise TrainingStopped(f"{reason} at step {step + 1}; the run stopped before the "
                                  "optimizer step. Last good checkpoint: "
                                  f"{last_complete(self.output_dir)}")
        return reason


def eval_line(step: int, row: dict) -> str:
    """``eval step 100: val_loss 5.4321 (ppl 228.7); teacher val_loss 4.9876 (ppl 146.6)``"""
    def loss(value: float) -> str:
        return f"val_loss {value:.4f} (ppl {math.exp(min(value, 700)):.1f})"

    teacher = row.get("teacher_val_loss")
    return f"eval step {step}: {loss(row['val_loss'])}" + \
        (f"; teacher {loss(teacher)}" if teacher is not None else "")


class Validator:
    """Evaluates the student (and a model the teacher trains) on the validation split, writes
    the row to the metrics log and says its losses on one line (``say``, the main process's
    progress writer); ``last`` keeps the latest row."""

    def __init__(self, accelerator, blocks: torch.Tensor, batch_size: int,
                 max_batches: int | None, log: MetricsLog, teacher,
                 say: Callable[[str], None] | None = None) -> None:
        self.accelerator = accelerator
        self.blocks = blocks
        self.batch_size = batch_size
        self.max_batches = max_batches
        self.log = log
        self.teacher = teacher
        self.say = say
        self.last: dict = {}

    def __call__(self, student, step: int, tokens: int) -> float:
        """The student's validation loss at ``step``; the student (a prepared
        LMWithObjective) is back in training mode afterwards."""
        student.eval()
        row = evaluate_lm(self.accelerator.unwrap_model(student).lm, self.blocks,
                          self.accelerator, self.batch_size, self.max_batches, expert_load=True)
        row["val_tokens"] = row.pop("tokens")  # a row's "tokens" counts training tokens seen
        trained = self.teacher.trained_model()
        if trained is not None:
            trained.eval()
            row["teacher_val_loss"] = evaluate_lm(
                trained, self.blocks, self.accelerator, self.batch_size,
                self.max_batches)["val_loss"]
            trained.train()
        student.train()
        self.log.write({"step": step, "tokens": tokens, **row})
        if self.say is not None:
            self.say(eval_line(step, row))
        self.last = row
        return row["val_loss"]
