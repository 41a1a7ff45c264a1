"""The start-up summary: what a run is about to do, printed once before its first step.

Device and processes, the student's and the teacher's parameters, the global batch (a
launch with several processes multiplies the recipe's batch: the summary says so), the
steps and tokens planned and how many epochs of the training blocks they are, and when the
run evaluates. Counts of a model that is not in memory (a cached teacher, say) come from its
config, as ``distill inspect`` counts them (distill/plan.py), so nothing is loaded for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distill.config import Recipe
from distill.plan_report import _count as compact


@dataclass(frozen=True)
class Counts:
    """Parameters of one model; ``active``: those one token uses (MoE), None when the model
    has no routed experts or they could not be counted."""

    total: int
    trainable: int | None = None
    active: int | None = None

    def text(self) -> str:
        parts = [f"{compact(self.total)} parameters"]
        if self.trainable is not None:
            parts.append(f"{compact(self.trainable)} trainable")
        if self.active is not None:
            parts.append(f"{compact(self.active)} active per token")
        return parts[0] + (f" ({', '.join(parts[1:])})" if parts[1:] else "")


def config_counts(config: Any) -> Counts | None:
    """Total and active parameters from a transformers config, as ``distill inspect`` counts
    them (analytic for Llama 4, else built on the meta device); None when that fails. The
    summary is information only: a config it cannot count must not stop the run."""
    from transformers import Llama4TextConfig

    from distill import plan

    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        model = plan.llama4_model(text, "", "") if isinstance(text, Llama4TextConfig) \
            else plan.meta_model(config, "", "")
    except Exception:  # noqa: BLE001 - any failure of an optional count leaves it out
        return None
    return Counts(model.total, active=model.active if model.active != model.total else None)


def model_counts(model: Any) -> Counts:
    """The parameters of a model in memory (adapters included under PEFT), the trainable
    ones, and the active ones per token read off its config."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counted = config_counts(getattr(model, "config", None))
    return Counts(total, trainable, counted.active if counted else None)


def _number(n: float) -> str:
    return f"{n:,.0f}" if n >= 1e4 else f"{n:g}"


def startup_lines(*, device: str, processes: int, mixed_precision: str, student: Counts,
                  student_name: str, teacher_line: str, teacher: Counts | None,
                  micro_batch_size: int, grad_accum_steps: int, block_size: int,
                  max_steps: int, start_step: int, train_blocks: int, validation_blocks: int,
                  eval_every: int, eval_batches: int | None, eval_batch_size: int,
                  eval_at_start: bool = True, eval_at_end: bool = True) -> list[str]:
    """The summary's lines (without the ``distill:`` prefix)."""
    lines = [f"device {device}, {processes} process{'es' if processes > 1 else ''}, "
             f"mixed precision {mixed_precision}",
             f"student {student_name}: {student.text()}",
             f"teacher: {teacher_line}" + (f"; {teacher.text()}" if teacher else "")]
    sequences = micro_batch_size * grad_accum_steps * processes
    tokens = sequences * block_size
    parts = f"{micro_batch_size} per micro-batch x {grad_accum_steps} accumulation"
    if processes > 1:
        lines.append(f"global batch {sequences} sequences x {block_size} tokens = "
                     f"{_number(tokens)} tokens per step ({parts} x {processes} processes: the "
                     f"launch's {processes} processes multiply the recipe's "
                     f"{micro_batch_size * grad_accum_steps} sequences per step by {processes})")
    else:
        lines.append(f"global batch {sequences} sequences x {block_size} tokens = "
                     f"{_number(tokens)} tokens per step ({parts})")
    steps = max_steps - start_step
    epochs = steps * sequences / train_blocks if train_blocks else 0.0
    resumed = f" (resuming at step {start_step} of {max_steps})" if start_step else ""
    lines.append(f"plan {steps} steps{resumed}, {_number(steps * tokens)} tokens = "
                 f"{epochs:.2f} epochs of the {train_blocks:,} training blocks")
    scored = validation_blocks if eval_batches is None \
        else min(validation_blocks, eval_batches * eval_batch_size)
    which = f"all {validation_blocks:,}" if scored == validation_blocks \
        else f"the first {scored:,} of {validation_blocks:,}"
    when = ["at step 0"] if eval_at_start and not start_step else []
    when += [f"every {eval_every} steps"] if eval_every else []
    when += ["at the end"] if eval_at_end else []
    if not when:
        lines.append("evaluation off (train.eval_every: 0, train.eval_at_start: false, "
                     "train.eval_at_end: false)")
        return lines
    listed = when[0] if len(when) == 1 else f"{', '.join(when[:-1])} and {when[-1]}"
    lines.append(f"evaluation {listed}, on {which} validation blocks")
    return lines


def run_summary(recipe: Recipe, accelerator, student_lm, teacher, data,
                start_step: int) -> list[str]:
    """The summary's lines for a run: its accelerator, its student (the causal LM, adapters
    included), its teacher (through the teacher contract: ``describe()`` and ``config``) and
    its prepared data (``train`` and ``validation`` blocks)."""
    train = recipe.train
    return startup_lines(
        device=accelerator.device.type, processes=accelerator.num_processes,  # cpu, cuda, ...
        mixed_precision=str(accelerator.mixed_precision),
        student=model_counts(student_lm), student_name=f"`{type(student_lm).__name__}`",
        teacher_line=teacher.describe(), teacher=config_counts(teacher.config),
        micro_batch_size=train.micro_batch_size, grad_accum_steps=train.grad_accum_steps,
        block_size=data.train.shape[1] - 1, max_steps=train.max_steps, start_step=start_step,
        train_blocks=len(data.train), validation_blocks=len(data.validation),
        eval_every=train.eval_every, eval_batches=train.eval_batches,
        eval_batch_size=train.eval_batch_size, eval_at_start=train.eval_at_start,
        eval_at_end=train.eval_at_end)


def print_startup_summary(lines: list[str]) -> None:
    for line in lines:
        print(f"distill: {line}", flush=True)
