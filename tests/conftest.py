"""Shared fixtures: tiny models, a small corpus, a per-session tokenizer cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# No test downloads anything: every model, tokenizer and dataset is made locally.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

# Tiny Llama-4-style models: same layer pattern as the presets, a few thousand parameters.
TINY_MODEL = {"hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1,
              "head_dim": 16, "num_local_experts": 4, "intermediate_size": 32,
              "intermediate_size_mlp": 64}


def tiny_overrides(output_dir: Path, cache_dir: Path, **extra: object) -> list[str]:
    """Dotted overrides that shrink the quickstart recipe to a few seconds of training."""
    values: dict[str, object] = {
        "output_dir": str(output_dir), "data.cache_dir": str(cache_dir),
        "data.max_chars": 150_000, "data.vocab_size": 512, "data.block_size": 32,
        "data.validation_fraction": 0.05,
        "train.max_steps": 12, "train.micro_batch_size": 4, "train.eval_every": 6,
        "train.eval_batches": 2, "train.checkpoint_every": 6, "train.warmup_steps": 2, "train.lr": 0.01,
    }
    for prefix in ("student.overrides", "teacher.codistill.model.overrides"):
        values.update({f"{prefix}.{k}": v for k, v in TINY_MODEL.items()})
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distill-cache")


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env)


QUICKSTART = str(REPO / "recipes" / "quickstart.yaml")


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, cache_dir) -> Path:
    """One uninterrupted tiny codistillation run through the CLI, shared by many tests:
    its student/ also serves as a small local checkpoint (teacher, pretrained student)."""
    out = tmp_path_factory.mktemp("runs") / "full"
    result = run_cli("run", QUICKSTART, *tiny_overrides(out, cache_dir, **{"train.max_steps": 24}))
    assert result.returncode == 0, result.stderr[-3000:]
    return out
