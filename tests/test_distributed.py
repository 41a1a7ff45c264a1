"""DDP on CPU: `torchrun --nproc_per_node 2 -m distill run ...` with no other setting."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import students
from distill.checkpoint import complete_checkpoints
from distill.errors import UserError
from distill.metrics import read_metrics
from distill.recipe import load_recipe
from tests.conftest import QUICKSTART, REPO, run_cli, tiny_overrides


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "-m", "distill", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)


def _evals(out: Path) -> list[float]:
    return [r["val_loss"] for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r]


def test_two_processes_match_one_and_resume(tmp_path: Path, cache_dir: Path):
    common = {"train.max_steps": 6, "train.checkpoint_every": 3, "train.eval_every": 3}
    ddp = tmp_path / "ddp"
    result = _torchrun("run", QUICKSTART, *tiny_overrides(ddp, cache_dir, **common,
                                                         **{"train.micro_batch_size": 2}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done:") == 1  # one process reports
    # and its start-up summary says that the launch doubled the recipe's batch (2 x 1 x 2)
    assert result.stdout.count("distill: device cpu, 2 processes") == 1
    assert "global batch 4 sequences x 32 tokens = 128 tokens per step (2 per micro-batch x 1 " \
           "accumulation x 2 processes: the launch's 2 processes multiply the recipe's 2 " \
           "sequences per step by 2)" in result.stdout
    rows = read_metrics(ddp / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 7))  # one log, each step once
    assert train_rows[0]["tokens"] == 2 * 2 * 32  # global token count: 2 processes x 2 x 32
    assert [p.name for p in complete_checkpoints(ddp)] == ["step-00000003", "step-00000006"]
    assert {p.name for p in (ddp / "checkpoints" / "step-00000006").glob("random_states_*")} == \
        {"random_states_0.pkl", "random_states_1.pkl"}
    assert (ddp / "student" / "config.json").is_file()

    # the same global batch in one process gives the same training
    single = tmp_path / "single"
    alone = run_cli("run", QUICKSTART, *tiny_overrides(single, cache_dir, **common,
                                                       **{"train.micro_batch_size": 4}))
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert _evals(ddp) == pytest.approx(_evals(single), rel=1e-4)

    # resume under torchrun from the step-3 checkpoint ends where the uninterrupted run did
    resumed = tmp_path / "resumed"
    shutil.copytree(ddp, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000006")
    shutil.rmtree(resumed / "student")
    again = _torchrun("run", QUICKSTART, *tiny_overrides(resumed, cache_dir, **common,
                                                        **{"train.micro_batch_size": 2}),
                      "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _evals(resumed)[-1] == pytest.approx(_evals(ddp)[-1], rel=1e-6)


def test_a_sharded_frozen_teacher_trains_the_student_as_a_whole_one_does(
        finished_run: Path, tmp_path: Path, cache_dir: Path):
    teacher_dir = str(finished_run / "student")
    common = {"teacher.kind": "hf", "teacher.hf.name_or_path": teacher_dir,
              "data.tokenizer": teacher_dir, "train.max_steps": 4, "train.eval_every": 2,
              "train.checkpoint_every": 0, "train.micro_batch_size": 2}
    whole = _torchrun("run", QUICKSTART, *tiny_overrides(tmp_path / "whole", cache_dir, **common))
    assert whole.returncode == 0, whole.stderr[-3000:]
    sharded = _torchrun("run", QUICKSTART, *tiny_overrides(tmp_path / "sharded", cache_dir,
                                                           **common, **{"teacher.hf.shard": True}))
    assert sharded.returncode == 0, sharded.stderr[-3000:]

    # each process holds half of every decoder layer, plus the unsharded rest
    teacher = students.load_pretrained(teacher_dir)
    total = sum(p.numel() for p in teacher.parameters())
    in_layers = sum(p.numel() for p in teacher.model.layers.parameters())
    line = f"{total - in_layers // 2:,} of {total:,} parameters held by each process"
    assert f"teacher sharded over 2 processes (FSDP2): {line}" in sharded.stdout
    assert _evals(tmp_path / "sharded") == pytest.approx(_evals(tmp_path / "whole"), rel=1e-5)


@pytest.mark.parametrize("settings, message", [
    ({"teacher.kind": "cached", "teacher.hf.name_or_path": "x", "teacher.hf.shard": True},
     r"teacher\.hf\.shard: a cached teacher is filled by one process"),
    ({"teacher.kind": "hf", "teacher.hf.name_or_path": "x", "teacher.hf.shard": True,
      "teacher.hf.device_map": "auto"}, r"teacher\.hf\.shard: choose one of shard .* and device_map"),
    ({"teacher.kind": "hf", "teacher.hf.name_or_path": "x", "teacher.hf.shard": True,
      "teacher.prefetch": "on"}, r"teacher\.prefetch: 'on' cannot run with teacher\.hf\.shard"),
])
def test_sharding_settings_that_cannot_work_are_refused(settings, message, tmp_path, cache_dir):
    with pytest.raises(UserError, match=message):
        load_recipe(QUICKSTART, tiny_overrides(tmp_path, cache_dir, **settings))


def test_accelerate_launch_runs_ddp_on_cpu(tmp_path: Path, cache_dir: Path):
    """accelerate's own launcher (its multi-GPU path, torchrun underneath) on a CPU machine:
    the run goes distributed over gloo with no other setting."""
    out = tmp_path / "accelerate"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
         "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "distill", "run", str(QUICKSTART),
         *tiny_overrides(out, cache_dir, **{"train.max_steps": 2, "train.eval_every": 0,
                                            "train.checkpoint_every": 2,
                                            "train.micro_batch_size": 2})],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done:") == 1
    train_rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert train_rows[0]["tokens"] == 2 * 2 * 32  # two processes' share of the global batch
    assert {p.name for p in (out / "checkpoints" / "step-00000002").glob("random_states_*")} == \
        {"random_states_0.pkl", "random_states_1.pkl"}
