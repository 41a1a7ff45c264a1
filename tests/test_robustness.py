"""Each failure gets a clear message and loses nothing."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distill.checkpoint import complete_checkpoints
from distill.errors import CheckpointError, DiskFull, TrainingStopped, UserError
from distill.lock import OutputDirLock
from distill.metrics import read_metrics
from distill.recipe import load_recipe
from distill.train import run
from tests.conftest import QUICKSTART, REPO, run_cli, tiny_overrides, untimed


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
    import distill.steps as steps_module  # where each step's blocks are split

    real_split = steps_module.split_block
    calls = []

    def no_targets_on_step_two(blocks):
        batch = real_split(blocks)
        calls.append(1)
        if len(calls) == 2:
            batch["labels"] = torch.full_like(batch["labels"], -100)
        return batch

    monkeypatch.setattr(steps_module, "split_block", no_targets_on_step_two)
    out = tmp_path / "empty"
    run(_recipe(out, cache_dir, **{"train.checkpoint_every": 0}))
    rows = read_metrics(out / "metrics.jsonl")
    assert {"step": 2, "tokens": 128, "skipped": "no valid target tokens"} in untimed(rows)
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


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_checkpointing_says_so_and_frees_the_staging(tmp_path, cache_dir,
                                                                       monkeypatch):
    """Failure 4: torch reports a full disk as a RuntimeError of its own words, and the
    staging directory stayed on the full disk for the next --resume to trip over."""
    from accelerate import Accelerator

    real = Accelerator.save_state
    calls = []

    def full(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint: part written, then the disk is full
            Path(output_dir, "optimizer.bin").write_bytes(bytes(4096))
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter "
                               "failed writing file data/3: file write failed")
        return real(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", full)
    out = tmp_path / "run"
    with pytest.raises(DiskFull) as stopped:
        run(_recipe(out, cache_dir))
    staging = out / "checkpoints" / ".staging-step-00000006"
    assert str(stopped.value).startswith(
        f"no space left on device while writing the checkpoint of step 6 ({staging}) ")
    assert str(stopped.value).endswith(
        f"; the last complete checkpoint is intact: {out / 'checkpoints' / 'step-00000003'}; "
        "free space and run again with --resume")
    assert not staging.exists()
    assert [p.name for p in complete_checkpoints(out)] == ["step-00000003"]


def test_a_full_disk_while_saving_the_student_says_so_and_resume_saves_it(tmp_path, cache_dir,
                                                                          monkeypatch):
    """Failure 4: a failed student save was a traceback and left .staging-student-*."""
    from transformers import PreTrainedModel

    real = PreTrainedModel.save_pretrained

    def full(self, directory, *args, **kwargs):
        Path(directory, "model.safetensors").write_bytes(bytes(1024))
        raise _no_space()

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "run"
    last = out / "checkpoints" / "step-00000006"
    with pytest.raises(DiskFull, match=f"^no space left on device while writing {out}/student/ "
                                       r"\(OSError: \[Errno 28\] No space left on device\); "
                                       f"the last complete checkpoint is intact: {last}; "):
        run(_recipe(out, cache_dir))
    assert not list(out.glob(".staging-*")) and not (out / "student").exists()
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real)
    run(_recipe(out, cache_dir), resume=True)
    assert (out / "student" / "config.json").is_file()


def test_a_full_disk_while_logging_tears_a_line_that_resume_repairs(tmp_path, cache_dir,
                                                                    monkeypatch):
    """Failures 3 and 4: the disk fills while a metrics row is appended; the torn line used
    to make every later --resume crash with a JSONDecodeError."""
    import distill.metrics as metrics_module

    appends = []

    def full_at_the_sixth_row(path, mode="r", **kwargs):
        handle = open(path, mode, **kwargs)
        if mode == "a":
            appends.append(path)
            if len(appends) == 6:  # rows: evaluation at step 0, then steps 1-5
                handle.write('{"step": 5, "tokens": 640, "lr": 0.0')
                handle.close()
                raise _no_space()
        return handle

    monkeypatch.setattr(metrics_module, "open", full_at_the_sixth_row, raising=False)
    out = tmp_path / "run"
    with pytest.raises(DiskFull, match=f"while writing {out / 'metrics.jsonl'} .*intact: "
                                       f"{out / 'checkpoints' / 'step-00000003'};"):
        run(_recipe(out, cache_dir))
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    monkeypatch.undo()
    run(_recipe(out, cache_dir), resume=True)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line whole again
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_only_the_last_metrics_line_may_be_torn(tmp_path: Path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_metrics(log) == [{"step": 1}, {"step": 2}]
    log.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl: line 2 is not a JSON object"):
        read_metrics(log)


def test_leftovers_of_failed_or_killed_writes_are_removed_at_the_next_start(tmp_path, cache_dir,
                                                                            capsys):
    """Failure 4: staging directories of a write killed half way (a SIGKILL during the
    student's save, a checkpoint's) stayed for good."""
    out = tmp_path / "run"
    run(_recipe(out, cache_dir, **{"train.max_steps": 3}))
    leftovers = [out / ".staging-student-k1", out / ".staging-teacher-k2",
                 out / "checkpoints" / ".staging-step-00000006"]
    for leftover in leftovers:
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(bytes(100))
    (out / "metrics.jsonl.tmp").write_text('{"step"')
    run(_recipe(out, cache_dir, **{"train.max_steps": 3}), resume=True)
    assert not any(p.exists() for p in [*leftovers, out / "metrics.jsonl.tmp"])
    assert f"removing {leftovers[0]}, left by an interrupted or failed write" in \
        capsys.readouterr().out


def _signal_run(tmp_path: Path, args: list[str], ready, signum) -> tuple[subprocess.Popen, str]:
    """Start ``distill *args`` in a process of its own, send it ``signum`` once ``ready()``
    holds (or it ended, or 300 s passed), and return the process and its stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "distill", *args], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + 300
        while not ready() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signum)
        proc.wait(timeout=120)
    return proc, (tmp_path / "stderr.txt").read_text()


def test_sigterm_stops_like_ctrl_c_and_the_run_resumes(tmp_path: Path, cache_dir: Path):
    out = tmp_path / "term"
    args = ["run", QUICKSTART, *tiny_overrides(out, cache_dir, **{"train.max_steps": 24})]
    proc, said = _signal_run(tmp_path, args, lambda: bool(complete_checkpoints(out)),
                             signal.SIGTERM)
    assert proc.returncode == 143, said[-3000:]
    assert "distill: interrupted; resume with --resume" in said and "Traceback" not in said
    assert not (out / ".lock").exists() and not (out / "student").exists()
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == \
        list(range(1, 25))


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("case", ["resume_without_checkpoint", "missing_teacher", "empty_data",
                                  "block_too_long", "ctrl_c_while_building"])
def test_a_refused_or_interrupted_start_leaves_no_lock_and_no_directory(case, tmp_path: Path,
                                                                        cache_dir, monkeypatch):
    """Each refusal, before or after the lock is taken: the run removes its .lock and the
    directories it created (here two levels of them), whatever stopped it."""
    import distill.train as train

    (tmp_path / "empty.txt").write_text("")
    extra, resume = {
        "resume_without_checkpoint": ({}, True),
        "missing_teacher": ({"teacher.kind": "hf",
                             "teacher.hf.name_or_path": str(tmp_path / "no-teacher")}, False),
        "empty_data": ({"data.source": "files", "data.files": f"[{tmp_path / 'empty.txt'}]"},
                       False),
        "block_too_long": ({"data.block_size": 64,
                            "student.overrides.max_position_embeddings": 48}, False),
        "ctrl_c_while_building": ({}, False)}[case]
    if case == "ctrl_c_while_building":
        def interrupted(*args, **kwargs):
            assert (tmp_path / "a" / "b" / ".lock").exists()  # under the lock
            raise KeyboardInterrupt
        monkeypatch.setattr(train, "build_models", interrupted)
    out = tmp_path / "a" / "b"
    with pytest.raises((UserError, KeyboardInterrupt)):
        run(_recipe(out, cache_dir, **extra), resume=resume)
    assert not (tmp_path / "a").exists(), _leftovers(tmp_path / "a")
    # in a directory the user made, the directory stays, holding nothing of the run's
    out.mkdir(parents=True)
    with pytest.raises((UserError, KeyboardInterrupt)):
        run(_recipe(out, cache_dir, **extra), resume=resume)
    assert _leftovers(out) == []


def test_sighup_stops_like_sigterm_and_leaves_no_lock(tmp_path: Path, cache_dir: Path):
    """Closing the terminal (SIGHUP) killed the run without unwinding: its .lock and the
    directories it created stayed. Now it unwinds as on Ctrl-C, with exit status 129."""
    out = tmp_path / "hup" / "run"
    args = ["run", QUICKSTART, *tiny_overrides(out, cache_dir, **{"train.max_steps": 400})]
    proc, said = _signal_run(tmp_path, args, (out / ".lock").exists, signal.SIGHUP)
    assert proc.returncode == 129, said[-3000:]
    assert "distill: interrupted;" in said and "Traceback" not in said
    assert not (out / ".lock").exists()
    if not complete_checkpoints(out):  # stopped before its first checkpoint: told so
        assert "no checkpoint was written yet" in said and "--resume" not in said
