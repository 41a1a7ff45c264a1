"""`distill eval`: which model, data and teacher to evaluate; the metrics come from
:func:`distill.evaluation.evaluate_lm`, the evaluator the training loop uses too."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import students
from distill.config import DataConfig
from distill.corpus import load_corpus
from distill.data import prepare_data
from distill.errors import UserError
from distill.evaluation import evaluate_lm
from distill.recipe import load_recipe

_DEFAULT_BATCH_SIZE = 16
_DEFAULT_BATCHES = 16  # a saved model on the default corpus: a quick look, not a yardstick


@dataclass
class _Yardstick:
    """What to evaluate on: a data section, whether it is split (else every document is
    evaluated), and the batches (size, and how many: None for all)."""

    data: DataConfig
    holdout: bool
    batch_size: int
    batches: int | None
    what: str


def _yardstick(target_is_run: bool, run_recipe, data: str | None) -> _Yardstick:
    """--data RECIPE: its validation split, as its runs evaluate it; --data FILE (or folder,
    or glob): every document of it (in a run's blocks and batches); a run directory: exactly the run's own final
    evaluation (its validation blocks, train.eval_batch_size, train.eval_batches); else the
    default corpus's validation split, 16 batches of 16."""
    if data is not None and Path(data).suffix in (".yaml", ".yml"):
        recipe = load_recipe(data)
        return _Yardstick(recipe.data, True, recipe.train.eval_batch_size,
                          recipe.train.eval_batches, f"the validation split of {data}")
    if data is not None:  # a run's block and batch sizes; else the defaults
        block_size = run_recipe.data.block_size if target_is_run else DataConfig.block_size
        batch_size = run_recipe.train.eval_batch_size if target_is_run else _DEFAULT_BATCH_SIZE
        return _Yardstick(DataConfig(source="files", files=[data], block_size=block_size),
                          False, batch_size, None, f"every document of {data}")
    if target_is_run:
        train = run_recipe.train
        return _Yardstick(run_recipe.data, True, train.eval_batch_size, train.eval_batches,
                          "the run's validation split, as its final evaluation")
    return _Yardstick(DataConfig(), True, _DEFAULT_BATCH_SIZE, _DEFAULT_BATCHES,
                      "the default corpus's validation split")


def _load(path: str, trusted: Sequence[str], key: str):
    return students.load_pretrained(path, trust_remote_code=students.sources.is_trusted(
        path, trusted), key=key).eval()


def evaluate_target(target: str, teacher: str | None = None, data: str | None = None,
                    batches: int | None = None,
                    trust_remote_code: Sequence[str] = ()) -> dict[str, Any]:
    """``distill eval``: ``target`` is a run directory (its student, data and teacher) or a
    saved model directory. ``batches`` caps the batches (default: see :func:`_yardstick`).
    One process, on the CPU (where the models load). Code shipped with a model runs only
    for the paths in ``trust_remote_code`` (and a run's own recipe's)."""
    path = Path(target)
    is_run = (path / "config.yaml").is_file() and (path / "student").is_dir()
    model_dir = path / "student" if is_run else path
    if not (model_dir / "config.json").is_file() and not (model_dir / "adapter_config.json").is_file():
        raise UserError(f"{target}: neither a run directory (config.yaml and student/) nor a "
                        "saved model directory (config.json).")
    recipe = load_recipe(path / "config.yaml") if is_run else None
    if teacher is None and recipe is not None:
        teacher = recipe.teacher.pretrained()  # the frozen teacher it learned from
    trusted = [*trust_remote_code, *(recipe.trust_remote_code if recipe is not None else ())]
    yardstick = _yardstick(is_run, recipe, data)
    cfg = replace(yardstick.data, tokenizer=str(model_dir))  # always the model's tokenizer
    packed = prepare_data(cfg, load_corpus(cfg, holdout=yardstick.holdout), trusted)
    blocks = packed.validation
    try:
        student = _load(str(model_dir), trusted, "")
        teacher_model = _load(teacher, trusted, "--teacher") if teacher else None
    except (OSError, ValueError) as exc:  # unreadable weights, code that may not run
        raise UserError(f"could not load a model: {exc}") from None
    limit = batches if batches is not None else yardstick.batches
    result = evaluate_lm(student, blocks, batch_size=yardstick.batch_size, max_batches=limit,
                         reference=teacher_model)
    available = -(-len(blocks) // yardstick.batch_size)
    return {"model": str(model_dir), "teacher": teacher, "data": packed.description,
            "evaluated_on": yardstick.what, "val_blocks": len(blocks),
            "batch_size": yardstick.batch_size,
            "batches": available if limit is None else min(limit, available), **result}
