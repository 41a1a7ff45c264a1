"""`distill eval` measures with the run's own yardstick: a run directory on exactly the
blocks, batch size and batch count of the run's final evaluation; --data FILE on every
document of the file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from distill.eval_command import evaluate_target
from distill.metrics import read_metrics
from distill.recipe import load_recipe


def test_eval_of_a_run_equals_its_logged_final_val_loss(finished_run: Path):
    final = [r for r in read_metrics(finished_run / "metrics.jsonl") if "val_loss" in r][-1]
    recipe = load_recipe(finished_run / "config.yaml")
    result = evaluate_target(str(finished_run))
    assert result["val_loss"] == pytest.approx(final["val_loss"], rel=1e-5)
    assert result["tokens"] == final["val_tokens"]
    train = recipe.train
    assert (result["batches"], result["batch_size"]) == (train.eval_batches,
                                                         train.eval_batch_size)
    assert result["tokens"] == train.eval_batches * train.eval_batch_size * \
        recipe.data.block_size  # every position of a packed block is a target
    capped = evaluate_target(str(finished_run), batches=1)
    assert capped["batches"] == 1
    assert capped["tokens"] == train.eval_batch_size * recipe.data.block_size


def test_eval_with_a_file_scores_every_document_of_it(finished_run: Path, tmp_path: Path,
                                                      monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    text = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(300))
    (tmp_path / "notes.py").write_text(text)
    tokenizer = AutoTokenizer.from_pretrained(finished_run / "student")
    stream = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + end-of-text
    # a saved model: the default block size (128) and batches of 16
    blocks = (stream - 1) // 128
    result = evaluate_target(str(finished_run / "student"), data=str(tmp_path / "notes.py"))
    assert result["val_blocks"] == blocks and result["tokens"] == blocks * 128
    assert result["batches"] == math.ceil(blocks / 16)
    limited = evaluate_target(str(finished_run / "student"), data=str(tmp_path / "notes.py"),
                              batches=1)
    assert limited["tokens"] == 16 * 128
    # a run directory: the run's block size and evaluation batch size
    recipe = load_recipe(finished_run / "config.yaml")
    block_size, batch_size = recipe.data.block_size, recipe.train.eval_batch_size
    blocks = (stream - 1) // block_size
    result = evaluate_target(str(finished_run), data=str(tmp_path / "notes.py"))
    assert result["val_blocks"] == blocks and result["tokens"] == blocks * block_size
    assert result["batches"] == math.ceil(blocks / batch_size)
