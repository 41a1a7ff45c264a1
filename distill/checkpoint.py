"""Atomic, verified checkpoints: complete or absent, checked before they are loaded, the
newest K kept, resume from the newest complete one that verifies and loads.

A checkpoint is accelerate's state (models, optimizers, schedulers, RNG states of every
process) plus ``checksums.json`` (the sha256 of every other file) and ``trainer_state.json``
(step, tokens, data position). It is written into a hidden staging directory and renamed
into place only once whole; ``checksums.json`` is written after the files it covers and
``trainer_state.json`` last, so a directory without it is never taken for a checkpoint.
Older checkpoints are deleted only once a newer one is in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from distill.errors import CheckpointError, DiskFull, UserError, is_disk_full
from distill.files import write_atomic

STATE_FILE = "trainer_state.json"
CHECKSUMS_FILE = "checksums.json"
_NAME = re.compile(r"^step-(\d+)$")
# What failed or killed writes leave behind: partial by construction (see remove_leftovers).
_LEFTOVERS = ("checkpoints/.staging-step-*", "checkpoints/.old-step-*", ".staging-student-*",
              ".staging-teacher-*", "metrics.jsonl.tmp", "config.yaml.tmp",
              "run_fingerprint.json.tmp", "metrics.png.tmp")


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


def last_complete(output_dir: Path) -> str:
    """The newest complete checkpoint, for messages that promise it is intact."""
    found = complete_checkpoints(output_dir)
    return str(found[-1]) if found else "none (no checkpoint was written yet)"


@contextmanager
def writes_to(what: str, output_dir: Path) -> Iterator[list[Path]]:
    """Guard a write into the run's directory. A failure removes the paths the caller added
    to the yielded list (a partial write: on a full disk its space is needed back, and it
    must not be taken for output), and an OSError, or a full disk reported inside a
    RuntimeError by torch or safetensors, becomes one message naming ``what`` and the last
    complete checkpoint (exit status 1) instead of a traceback."""
    partial: list[Path] = []
    try:
        yield partial
    except BaseException as exc:
        for path in partial:
            shutil.rmtree(path, ignore_errors=True)
        last = last_complete(output_dir)
        if is_disk_full(exc):
            raise DiskFull(what, exc, last) from None
        if isinstance(exc, OSError):
            raise CheckpointError(f"could not write {what} ({type(exc).__name__}: {exc}); the "
                                  f"last complete checkpoint is intact: {last}") from None
        raise


def remove_leftovers(output_dir: Path) -> None:
    """Remove the staging directories and temporary files of writes that failed or were
    killed (``checkpoints/.staging-step-*``, ``.staging-student-*``, ``.staging-teacher-*``,
    the ``.tmp`` files of the run's own records): never complete, and on a full disk they
    hold the space the run needs. Called by the main process under the output directory's
    lock, before the run writes."""
    for pattern in _LEFTOVERS:
        for path in Path(output_dir).glob(pattern):
            print(f"distill: removing {path}, left by an interrupted or failed write")
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _sha256(path: Path, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        if sync:  # while the file is open anyway: flush it to disk before it is renamed
            os.fsync(handle.fileno())
    return digest.hexdigest()


def _checksums(directory: Path, sync: bool = False) -> dict[str, str]:
    """sha256 of every file of a checkpoint but the two written after them."""
    files = sorted(p for p in directory.rglob("*")
                   if p.is_file() and p.name not in (STATE_FILE, CHECKSUMS_FILE))
    return {str(p.relative_to(directory)): _sha256(p, sync) for p in files}


def verify(path: Path) -> str | None:
    """None when every file of checkpoint ``path`` has the sha256 it was written with; else
    what differs. A checkpoint written before checksums existed loads unverified."""
    listed = path / CHECKSUMS_FILE
    if not listed.is_file():
        print(f"distill: checkpoint {path} has no {CHECKSUMS_FILE} (written by an older "
              "distill): loading it unverified")
        return None
    expected, actual = json.loads(listed.read_text()), _checksums(path)
    bad = [name + (" missing" if name not in actual else " not listed" if name not in expected
                   else "") for name in sorted(expected.keys() | actual.keys())
           if expected.get(name) != actual.get(name)]
    return f"sha256 mismatch: {', '.join(bad)}" if bad else None


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict[str, Any],
                    keep: int) -> Path:
    """Every process calls this (accelerate writes per-process RNG states)."""
    root = checkpoint_dir(output_dir)
    final = root / f"step-{step:08d}"
    staging = root / f".staging-step-{step:08d}"
    main = accelerator.is_main_process
    with writes_to(f"the checkpoint of step {step} ({staging})", output_dir) as partial:
        if main:
            partial.append(staging)
            shutil.rmtree(staging, ignore_errors=True)  # left over from a killed run
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if main:
            # Hashing reads every file once, and fsyncs it on the way (see docs/reliability.md).
            write_atomic(staging / CHECKSUMS_FILE, json.dumps(_checksums(staging, sync=True),
                                                              indent=2))
            write_atomic(staging / STATE_FILE, json.dumps({"step": step, **state}, indent=2))
    if main:
        replaced = None
        if final.exists():  # this step again, after a resume from an older checkpoint because
            # this one did not load: set it aside, delete it once the new one is in place
            replaced = root / f".old-step-{step:08d}"
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        os.replace(staging, final)
        for old in [*complete_checkpoints(output_dir)[:-keep], *([replaced] if replaced else [])]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def require_checkpoint(output_dir: Path) -> None:
    """--resume needs a complete checkpoint; without one it stops before changing anything."""
    if not complete_checkpoints(output_dir):
        raise UserError(f"--resume: {output_dir} holds no complete checkpoint "
                        f"(checkpoints/step-*/{STATE_FILE}), so there is nothing to resume "
                        "from; nothing was changed. Start the run without --resume in another "
                        "output_dir (or remove this one to start it over).")


def _try_load(accelerator, path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(trainer state, None) when ``path`` verified (on the main process: one read of each
    file) and loaded here; (None, why not) otherwise."""
    try:
        problem = verify(path) if accelerator.is_main_process else None
        if problem is not None:
            return None, problem
        state = json.loads((path / STATE_FILE).read_text())
        accelerator.load_state(str(path))
    except Exception as exc:  # torch, safetensors and pickle raise many kinds
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"
    return state, None


def load_latest_checkpoint(accelerator, output_dir: Path) -> dict[str, Any]:
    """Restore the newest checkpoint that verifies and loads into the prepared objects and
    return its trainer state. A corrupted one (a changed byte, a truncated file, a missing
    piece) is reported and the previous complete one is used; when none loads, the run
    stops (UserError) having changed nothing."""
    import torch

    require_checkpoint(output_dir)
    failures = []
    for path in reversed(complete_checkpoints(output_dir)):
        state, problem = _try_load(accelerator, path)
        # Every process must continue from the same checkpoint: a failure anywhere moves all.
        failed = accelerator.reduce(torch.tensor(int(problem is not None),
                                                 device=accelerator.device), "sum")
        if int(failed) == 0:
            state["path"] = str(path)
            return state
        if problem is not None or accelerator.is_main_process:
            problem = problem or "it failed on another process"
            print(f"distill: checkpoint {path} cannot be loaded ({problem}); falling back to "
                  "the previous one")
        failures.append(f"{path.name}: {problem or 'it failed on another process'}")
    raise UserError(f"--resume: none of the {len(failures)} checkpoints in "
                    f"{checkpoint_dir(output_dir)} can be loaded ({'; '.join(failures)}); "
                    "nothing was changed or deleted. If the run's recipe changed, resume with "
                    f"its own ({output_dir}/config.yaml); to start over, choose another "
                    "output_dir.")
