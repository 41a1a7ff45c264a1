"""`distill eval`: which model, data and teacher to evaluate; the metrics come from
:func:`distill.evaluation.evaluate_lm`, the evaluator the training loop uses too."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import students
from distill.config import DataConfig
from distill.corpus import load_corpus
from distill.data import load_tokenizer, pack
from distill.errors import UserError
from distill.evaluation import evaluate_lm
from distill.recipe import load_recipe


def _data_config(target_is_run: bool, run_recipe, data: str | None, tokenizer_dir: str):
    """The data section to evaluate on: --data (a recipe or text/JSON-lines/parquet files),
    else the run's own recipe, else the default corpus; always with the model's tokenizer."""
    if data is not None and Path(data).suffix in (".yaml", ".yml"):
        cfg = load_recipe(data).data
    elif data is not None:
        cfg = DataConfig(source="files", files=[data])
    elif target_is_run:
        cfg = run_recipe.data
    else:
        cfg = DataConfig()
    return replace(cfg, tokenizer=tokenizer_dir)


def _load(path: str, trusted: Sequence[str], key: str):
    return students.load_pretrained(path, trust_remote_code=students.sources.is_trusted(
        path, trusted), key=key).eval()


def evaluate_target(target: str, teacher: str | None = None, data: str | None = None,
                    batches: int = 16, trust_remote_code: Sequence[str] = ()) -> dict[str, Any]:
    """``distill eval``: ``target`` is a run directory (its student, data and teacher) or a
    saved model directory. One process, on the CPU (where the models load). Code shipped
    with a model runs only for the paths in ``trust_remote_code`` (and a run's own
    recipe's)."""
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
    cfg = _data_config(is_run, recipe, data, str(model_dir))
    corpus = load_corpus(cfg)
    tokenizer = load_tokenizer(cfg, corpus, trusted)
    blocks = pack(corpus.validation, tokenizer, cfg.block_size, "validation")
    try:
        student = _load(str(model_dir), trusted, "")
        teacher_model = _load(teacher, trusted, "--teacher") if teacher else None
    except (OSError, ValueError) as exc:  # unreadable weights, code that may not run
        raise UserError(f"could not load a model: {exc}") from None
    result = evaluate_lm(student, blocks, batch_size=16, max_batches=batches,
                         reference=teacher_model)
    return {"model": str(model_dir), "teacher": teacher, "data": corpus.description, **result}
