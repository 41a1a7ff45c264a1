"""teacher.prefetch: a frozen teacher's outputs for the next micro-batch computed in a worker
thread while the student trains; the training must be exactly what it is without."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import torch

from distill.checkpoint import complete_checkpoints
from distill.errors import UserError
from distill.metrics import read_metrics
from distill.recipe import load_recipe
from distill.prefetch import TeacherPrefetch
from distill.train import run
from losses.outputs import Logits
from teachers import MicroBatch
from tests.conftest import QUICKSTART, TIMED_KEYS, tiny_overrides


class _RecordingTeacher:
    """Answers ``input_ids * 2`` and notes the thread that computed each answer."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.threads: list[str] = []
        self.fail_on = fail_on

    def outputs(self, batch: MicroBatch) -> Logits:
        self.threads.append(threading.current_thread().name)
        if self.fail_on is not None and int(batch.input_ids[0]) == self.fail_on:
            raise RuntimeError("teacher failed")
        return Logits(batch.input_ids * 2)


def _batches(n: int) -> list[MicroBatch]:
    return [MicroBatch(torch.tensor([i]), torch.tensor([i]), torch.tensor([i]))
            for i in range(n)]


def test_submitted_batches_are_computed_in_the_worker_and_returned_in_order():
    teacher = _RecordingTeacher()
    prefetch = TeacherPrefetch(teacher, enabled=True)
    batches = _batches(4)
    results = []
    for batch, following in zip(batches, [*batches[1:], None]):
        results.append(int(prefetch.get(batch).logits))
        prefetch.submit(following)
    prefetch.close()
    assert results == [0, 2, 4, 6]
    # the first is computed on the spot, every later one ahead in the worker
    assert teacher.threads[0] == threading.current_thread().name
    assert all(name.startswith("teacher") for name in teacher.threads[1:])


def test_a_batch_not_submitted_is_computed_on_the_spot_and_disabled_never_uses_a_thread():
    teacher = _RecordingTeacher()
    batches = _batches(2)
    prefetch = TeacherPrefetch(teacher, enabled=True)
    prefetch.submit(batches[0])
    assert int(prefetch.get(batches[1]).logits) == 2  # not the one submitted: computed here
    prefetch.close()
    off = TeacherPrefetch(_RecordingTeacher(), enabled=False)
    off.submit(batches[0])
    assert int(off.get(batches[0]).logits) == 0
    assert off.teacher.threads == [threading.current_thread().name]


def test_a_failure_in_the_worker_is_raised_by_get():
    prefetch = TeacherPrefetch(_RecordingTeacher(fail_on=1), enabled=True)
    batches = _batches(2)
    prefetch.get(batches[0])
    prefetch.submit(batches[1])
    with pytest.raises(RuntimeError, match="teacher failed"):
        prefetch.get(batches[1])
    prefetch.close()


def test_prefetch_on_a_training_teacher_is_refused(tmp_path: Path, cache_dir: Path):
    with pytest.raises(UserError, match=r"teacher\.prefetch: 'on' needs a frozen teacher"):
        load_recipe(QUICKSTART, tiny_overrides(tmp_path, cache_dir, **{"teacher.prefetch": "on"}))


def _rows(out: Path) -> list[tuple[int, str, float]]:
    """Every scalar logged, as (step, name, value), leaving out the timing."""
    return [(row["step"], key, float(value)) for row in read_metrics(out / "metrics.jsonl")
            for key, value in sorted(row.items())
            if isinstance(value, (int, float)) and key not in TIMED_KEYS]


def _same(a: list[tuple[int, str, float]], b: list[tuple[int, str, float]]) -> None:
    assert [row[:2] for row in a] == [row[:2] for row in b]
    assert [row[2] for row in a] == pytest.approx([row[2] for row in b], rel=1e-5)


def test_prefetch_trains_exactly_as_without_and_resumes(finished_run: Path, tmp_path: Path,
                                                          cache_dir: Path):
    teacher_dir = str(finished_run / "student")

    def recipe(out: Path, prefetch: str):
        return load_recipe(QUICKSTART, tiny_overrides(out, cache_dir, **{
            "teacher.kind": "hf", "teacher.hf.name_or_path": teacher_dir,
            "data.tokenizer": teacher_dir, "teacher.prefetch": prefetch,
            "train.max_steps": 6, "train.checkpoint_every": 3, "train.eval_every": 3,
            "train.micro_batch_size": 2, "train.grad_accum_steps": 2}))

    run(recipe(tmp_path / "off", "off"))
    run(recipe(tmp_path / "on", "on"))
    _same(_rows(tmp_path / "on"), _rows(tmp_path / "off"))

    # The next step's batches are drawn ahead; the checkpoint must still hold the data
    # position after its own step, so a resumed run ends where the uninterrupted one did.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "on", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000006")
    shutil.rmtree(resumed / "student")
    assert [p.name for p in complete_checkpoints(resumed)] == ["step-00000003"]
    run(recipe(resumed, "on"), resume=True)
    _same(_rows(resumed), _rows(tmp_path / "on"))
