"""Building the run's models from the recipe: student, teacher, shared vocabulary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import students
import teachers
from distill.config import Recipe
from distill.errors import UserError
from distill.vocab import shared_vocab_rows


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


def build_models(recipe: Recipe, tokenizer, make_optimizer: Callable, cache_root: Path) -> Models:
    efficient = recipe.train.efficient_moe
    teacher_cfg, student_cfg = recipe.teacher, recipe.student
    teacher_config = model_config(teacher_cfg.model, tokenizer) \
        if teacher_cfg.kind == "codistill" else None
    try:
        teacher = teachers.build(teacher_cfg, model_config=teacher_config,
                                 make_optimizer=make_optimizer, efficient_moe=efficient,
                                 cache_root=cache_root)
    except OSError as exc:
        raise UserError(f"teacher.name_or_path: could not load {teacher_cfg.name_or_path!r}: "
                        f"{exc}") from None
    init_report = None
    if student_cfg.init == "pretrained":
        try:
            student = students.load_pretrained(student_cfg.name_or_path, efficient)
        except OSError as exc:
            raise UserError(f"student.name_or_path: could not load "
                            f"{student_cfg.name_or_path!r}: {exc}") from None
    else:
        student = students.build_model(model_config(student_cfg, tokenizer), efficient)
        if student_cfg.init == "from_teacher":
            try:
                init_report = students.init_from_teacher(
                    student, teacher.model, student_cfg.teacher_layers,
                    student_cfg.teacher_experts)
            except ValueError as exc:
                raise UserError(str(exc)) from None
    rows = shared_vocab_rows(
        tokenizer, student.get_output_embeddings().weight.shape[0], teacher.vocab_size,
        teacher_cfg.name_or_path if teacher_cfg.kind in ("hf", "cached") else None)
    if teacher_cfg.kind == "cached":
        teacher.vocab_limit = rows
    teacher_config = getattr(teacher, "config", None) or getattr(teacher.model, "config", None)
    _check_positions(recipe.data.block_size, {"student": student.config,
                                              "teacher": teacher_config})
    if student_cfg.peft is not None:
        student = students.apply_peft(student, student_cfg.peft)
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
