"""What a finished run leaves besides its log: the student (and a teacher it trained),
each saved with its tokenizer and model card, whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from distill.checkpoint import writes_to
from distill.config import Recipe
from distill.model_card import write_model_card
from teachers import Teacher


def _no_bar(factory, args, kwargs):
    """transformers' tqdm hook: the bar it would draw, disabled."""
    return factory(*args, **{**kwargs, "disable": True})


def save_model(model, tokenizer, target: Path, card: dict) -> None:
    """save_pretrained (and a model card) into a staging directory, then rename: the
    target is whole or absent. A failed write removes its staging directory."""
    from transformers.utils.logging import set_tqdm_hook

    with writes_to(f"{target}/", target.parent) as partial:
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".staging-{target.name}-"))
        partial.append(staging)
        # save_pretrained draws a "Writing model shards" bar per model, even for one shard
        # written in milliseconds: in a log file, two lines of carriage-return noise after
        # the run's last evaluation. Only transformers' own bars, only during the save.
        previous = set_tqdm_hook(_no_bar)
        try:
            model.save_pretrained(staging)
        finally:
            set_tqdm_hook(previous)
        tokenizer.save_pretrained(staging)
        write_model_card(staging, shown_path=target, model=model, **card)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def save_outputs(student_lm, teacher: Teacher, tokenizer, output_dir: Path, recipe: Recipe,
                 final: dict) -> None:
    """student/, and teacher/ for a teacher the run trained (so it can teach the next)."""
    trained = teacher.trained_model()
    save_model(student_lm, tokenizer, output_dir / "student",
                {"recipe": recipe, "metrics": final, "role": "student",
                 "teacher_line": teacher.describe(), "adapter": recipe.student.peft is not None,
                 "codistilled": trained is not None})
    if trained is not None:
        metrics = {"steps": final["steps"], "tokens": final["tokens"],
                   "val_loss": final.get("teacher_val_loss")}
        save_model(trained, tokenizer, output_dir / "teacher",
                    {"recipe": recipe, "metrics": metrics, "role": "teacher",
                     "teacher_line": teacher.describe(), "adapter": False,
                     "codistilled": True})
