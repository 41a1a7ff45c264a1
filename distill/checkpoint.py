"""Atomic checkpoints: complete or absent, the newest K kept, resume from the newest
complete one.

A checkpoint is accelerate's state (models, optimizers, schedulers, RNG states of every
process) plus ``trainer_state.json`` (step, tokens, data position). It is written into a
hidden staging directory and renamed into place only once whole; ``trainer_state.json``
is written last, so a directory without it is never taken for a checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from distill.errors import CheckpointError

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict[str, Any],
                    keep: int) -> Path:
    """Every process calls this (accelerate writes per-process RNG states)."""
    root = checkpoint_dir(output_dir)
    final = root / f"step-{step:08d}"
    staging = root / f".staging-step-{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)  # left over from a killed run
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (staging / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=2))
            _fsync_tree(staging)
    except (OSError, RuntimeError) as exc:
        previous = (complete_checkpoints(output_dir) or ["none"])[-1]
        raise CheckpointError(f"could not write the checkpoint of step {step} ({exc}); "
                              f"the previous complete checkpoint is intact: {previous}") from None
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for old in complete_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_latest_checkpoint(accelerator, output_dir: Path) -> dict[str, Any] | None:
    """Restore the newest checkpoint that loads into the prepared objects; returns its
    trainer state, or None when there is none. A corrupted newest checkpoint (a truncated
    file, a missing piece) is reported and the previous complete one is used."""
    for path in reversed(complete_checkpoints(output_dir)):
        try:
            state = json.loads((path / STATE_FILE).read_text())
            accelerator.load_state(str(path))
        except Exception as exc:  # torch, safetensors and pickle raise many kinds
            print(f"distill: checkpoint {path} cannot be loaded ({type(exc).__name__}: "
                  f"{str(exc)[:200]}); falling back to the previous one")
            continue
        state["path"] = str(path)
        return state
    return None
