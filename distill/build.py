"""Building the run's models from the recipe: student, teacher, shared vocabulary; which
training blocks the run reads (what a teacher cache must hold), and whether the student's
loss reads the teacher at all."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import students
import teachers
from distill.config import Recipe, TrainConfig
from distill.data import BlockOrder
from distill.errors import UserError
from distill.teacher_use import ANSWER_ONLY, unused_teacher_reason
from distill.vocab import shared_vocab_rows

def blocks_read(num_blocks: int, train: TrainConfig, seed: int,
                num_processes: int) -> torch.Tensor:
    """The training blocks a run reads, each once, in the order it first reads them: every
    micro-batch of steps 0 .. train.max_steps - 1 of every process (the loop draws no step
    past the last; a resumed run reads a subset of these).

    At each position of the data order the processes' micro-batches are consecutive slices
    of one permutation, which is what BlockOrder with one process and the global
    micro-batch (micro_batch_size x processes) returns: one replay rather than one per
    process (a test checks it against per-process replays). Stops once every block is seen.
    Returns (n,) int64."""
    order = BlockOrder(num_blocks, train.micro_batch_size * num_processes, seed)
    seen = torch.zeros(num_blocks, dtype=torch.bool)
    parts, count = [], 0
    for _ in range(train.max_steps * train.grad_accum_steps):
        indices = order.next_indices()
        fresh = indices[~seen[indices]]  # a micro-batch holds no block twice
        if len(fresh):
            seen[fresh] = True
            parts.append(fresh)
            count += len(fresh)
            if count == num_blocks:
                break
    return torch.cat(parts).long()


@dataclass
class Models:
    student: Any                  # the transformers model (peft-wrapped with adapters)
    teacher: teachers.Teacher
    vocab_rows: int               # output-head rows the losses compare
    init_report: dict | None      # what from_teacher copied


def model_config(model_cfg, tokenizer):
    """The transformers config of a recipe's model section, sized to the tokenizer."""
    try:
        return students.model_config(model_cfg.preset, model_cfg.overrides, len(tokenizer),
                                     eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id,
                                     config_file=model_cfg.config_file)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def build_models(recipe: Recipe, tokenizer, make_optimizer: Callable, cache_root: Path,
                 announce: bool = True) -> Models:
    """The teacher (first: a codistilled teacher's initialisation follows the seed), then
    the student, checked against each other: one vocabulary, positions for block_size. A
    frozen teacher whose outputs the loss weights by 0 throughout is not built (or, for a
    student initialised from it, dropped once its weights are copied); ``announce``: print
    the line that says so (the main process)."""
    efficient = recipe.train.efficient_moe
    student_cfg = recipe.student
    rows = len(tokenizer)  # the shared vocabulary; checked against both heads below
    setup = teachers.TeacherSetup(
        vocab_rows=rows, efficient_moe=efficient, cache_root=Path(cache_root),
        model_config=lambda section: model_config(section, tokenizer),
        make_optimizer=make_optimizer, chunk_size=recipe.loss.chunk_size,
        max_grad_norm=recipe.train.max_grad_norm,
        trust_remote_code=tuple(recipe.trust_remote_code), tokenizer=tokenizer,
        block_size=recipe.data.block_size, output_dir=Path(recipe.output_dir))
    unused = unused_teacher_reason(recipe) if recipe.teacher.kind in ANSWER_ONLY else None
    if unused and announce:
        print(f"teacher: not built: {unused}" + (" (loaded only to initialise the student)"
              if student_cfg.init == "from_teacher" else ""))
    if unused and student_cfg.init != "from_teacher":
        teacher: teachers.Teacher = teachers.NoTeacher(f"the {recipe.teacher.kind} teacher "
                                                       f"was not built: {unused}")
    else:
        try:
            teacher = teachers.build(recipe.teacher, setup)
        except (OSError, ValueError) as exc:
            raise UserError(f"teacher ({recipe.teacher.kind}): could not build it: "
                            f"{exc}") from None
    init_report = None
    if student_cfg.init == "pretrained":
        try:
            student = students.load_pretrained(
                student_cfg.name_or_path, efficient,
                students.sources.is_trusted(student_cfg.name_or_path, recipe.trust_remote_code),
                key="student.name_or_path")
        except (FileNotFoundError, students.sources.CustomCodeRefused) as exc:  # key named
            raise UserError(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise UserError(f"student.name_or_path: could not load "
                            f"{student_cfg.name_or_path!r}: {exc}") from None
    else:
        student = students.build_model(model_config(student_cfg, tokenizer), efficient)
        if student_cfg.init == "from_teacher":
            try:
                init_report = students.init_from_teacher(
                    student, teacher.load_weights(), student_cfg.teacher_layers,
                    student_cfg.teacher_experts)
            except ValueError as exc:
                raise UserError(str(exc)) from None
    shared_vocab_rows(tokenizer, student.get_output_embeddings().weight.shape[0],
                      teacher.vocab_size, teacher.name_or_path, recipe.data.tokenizer,
                      recipe.trust_remote_code)
    _check_positions(recipe.data.block_size, {"student": student.config,
                                              "teacher": teacher.config})
    if student_cfg.peft is not None:
        student = students.apply_peft(student, student_cfg.peft)
    if unused and student_cfg.init == "from_teacher":  # built for its weights: copied now
        teacher = teachers.NoTeacher(f"the {recipe.teacher.kind} teacher initialised the "
                                     f"student and then went: {unused}")
    return Models(student=student, teacher=teacher, vocab_rows=rows, init_report=init_report)


def _check_positions(block_size: int, configs: dict) -> None:
    """Sequences longer than a model's positions would fail (or silently degrade) later."""
    for name, config in configs.items():
        limit = getattr(config, "max_position_embeddings", None)
        if config is not None and limit is not None and block_size > limit:
            raise UserError(f"data.block_size: got {block_size}, but the {name} handles at most "
                            f"{limit} positions (max_position_embeddings); use a block_size "
                            f"<= {limit}.")


def write_init_report(report: dict | None, output_dir: Path) -> None:
    if report is not None:
        (output_dir / "student_init.json").write_text(json.dumps(report, indent=2))
