"""Each failure gets a clear message and loses nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from distill.checkpoint import complete_checkpoints
from distill.errors import CheckpointError, TrainingStopped, UserError
from distill.lock import OutputDirLock
from distill.metrics import read_metrics
from distill.recipe import load_recipe
from distill.train import run
from tests.conftest import QUICKSTART, tiny_overrides


def _recipe(out: Path, cache_dir: Path, **extra):
    return load_recipe(QUICKSTART, tiny_overrides(out, cache_dir, **{
        "train.max_steps": 6, "train.checkpoint_every": 3, "train.eval_every": 0, **extra}))


def _final(out: Path) -> float:
    return [r["val_loss"] for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r][-1]


def test_corrupted_or_partial_newest_checkpoint_falls_back(tmp_path: Path, cache_dir: Path, capsys):
    full = tmp_path / "full"
    run(_recipe(full, cache_dir))
    broken = tmp_path / "broken"
    shutil.copytree(full, broken)
    shutil.rmtree(broken / "student")
    weights = broken / "checkpoints" / "step-00000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    partial = broken / "checkpoints" / "step-00000009"  # no trainer_state.json: not complete
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"")
    run(_recipe(broken, cache_dir), resume=True)
    assert "falling back to the previous one" in capsys.readouterr().out
    assert _final(broken) == pytest.approx(_final(full), rel=1e-6)


def test_failure_while_writing_a_checkpoint_keeps_the_previous(tmp_path: Path, cache_dir, monkeypatch):
    from accelerate import Accelerator

    real = Accelerator.save_state
    calls = []

    def failing(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint: fail half way, as a full disk would
            Path(output_dir, "model.safetensors").write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return real(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", failing)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"step 6 .*No space left.*intact: .*step-00000003"):
        run(_recipe(out, cache_dir))
    assert [p.name for p in complete_checkpoints(out)] == ["step-00000003"]
    monkeypatch.setattr(Accelerator, "save_state", real)
    run(_recipe(out, cache_dir), resume=True)  # the survivor resumes
    assert (out / "student" / "config.json").is_file()


def test_steps_without_valid_targets_are_skipped(tmp_path: Path, cache_dir, monkeypatch):
    import distill.train as train_module

    real_split = train_module.split_block
    calls = []

    def no_targets_on_step_two(blocks):
        batch = real_split(blocks)
        calls.append(1)
        if len(calls) == 2:
            batch["labels"] = torch.full_like(batch["labels"], -100)
        return batch

    monkeypatch.setattr(train_module, "split_block", no_targets_on_step_two)
    out = tmp_path / "empty"
    run(_recipe(out, cache_dir, **{"train.checkpoint_every": 0}))
    rows = read_metrics(out / "metrics.jsonl")
    assert {"step": 2, "tokens": 128, "skipped": "no valid target tokens"} in rows
    assert all(all(v == v for v in r.values() if isinstance(v, float)) for r in rows)  # no NaN


def _nan_teacher(monkeypatch, bad_call: int):
    from teachers.hf import HFTeacher

    real = HFTeacher.outputs
    calls = []

    def outputs(self, batch):
        out = real(self, batch)  # Logits or HiddenStates: the first tensor is per token
        calls.append(1)
        if len(calls) == bad_call:
            first, *rest = out.tensors()
            return type(out)(first * float("nan"), *rest)
        return out

    monkeypatch.setattr(HFTeacher, "outputs", outputs)


def test_teacher_producing_nan_is_skipped_or_stops(finished_run: Path, tmp_path: Path, cache_dir,
                                                   monkeypatch):
    teacher = {"teacher.kind": "hf", "teacher.hf.name_or_path": str(finished_run / "student"),
               "data.tokenizer": str(finished_run / "student"), "train.checkpoint_every": 0}
    _nan_teacher(monkeypatch, bad_call=3)
    out = tmp_path / "skip"
    run(_recipe(out, cache_dir, **teacher, **{"train.on_nonfinite": "skip"}))
    rows = read_metrics(out / "metrics.jsonl")
    skipped = [r for r in rows if "skipped" in r]
    assert len(skipped) == 1 and skipped[0]["step"] == 3 and "non-finite kd" in skipped[0]["skipped"]
    assert (out / "student" / "config.json").is_file()
    _nan_teacher(monkeypatch, bad_call=2)
    with pytest.raises(TrainingStopped, match="non-finite kd .* at step 2"):
        run(_recipe(tmp_path / "stop", cache_dir, **teacher))


def test_sequences_longer_than_the_model_are_refused(tmp_path: Path, cache_dir):
    with pytest.raises(UserError, match="data.block_size: got 64, but the student handles at "
                                        "most 48 positions"):
        run(_recipe(tmp_path / "long", cache_dir, **{
            "data.block_size": 64, "student.overrides.max_position_embeddings": 48}))


def test_output_dir_in_use_by_a_running_run_is_refused(tmp_path: Path, cache_dir):
    out = tmp_path / "busy"
    with OutputDirLock(out):
        with pytest.raises(UserError, match="in use by a running run"):
            run(_recipe(out, cache_dir), resume=True)
    # released on leaving the block: the run may start now
    run(_recipe(out, cache_dir, **{"train.max_steps": 1, "train.checkpoint_every": 0}))
