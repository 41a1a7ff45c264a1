"""What makes a run's checkpoints meaningful, recorded when the run starts
(``output_dir/run_fingerprint.json``) and compared by ``--resume``, which refuses any
difference, naming each changed key with its old and new value.

Two parts. ``recipe``: every key of the resolved recipe but those in SAFE_TO_CHANGE, compared
before anything is built. ``built``: what the run made from the recipe, compared once it is
built, because it can change while the recipe does not (an edited config file or corpus
file, another Python's standard library, another tokenizer): the student's and teacher's
model configs, the tokenizer's vocabulary and the packed training and validation blocks.

``train.max_steps`` belongs to the fingerprint only where something follows it: the cosine
and linear learning rates decay over it, and a loss schedule whose ``total_steps`` is null
ends at it. With a constant learning rate and loss schedules that end at a step of their
own, a resumed run may run longer (or shorter, down to its checkpoint's step): no value
jumps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from distill.config import Recipe, ScheduleConfig
from distill.errors import UserError
from distill.files import write_atomic
from distill.schema import flatten, to_dict

FINGERPRINT_FILE = "run_fingerprint.json"
# Keys a resumed run may change: where files go, when to log, evaluate and checkpoint, how
# much of the validation split an evaluation reads, whether the teacher runs ahead, where a
# served teacher is and how it is asked (its model is checked by its identity), how
# failures are handled; none changes what a training step computes. (The evaluation keys
# change which sequences later val_loss rows measure.) `compare` is read by `distill compare`.
SAFE_TO_CHANGE = ("output_dir", "data.cache_dir", "teacher.cached.cache_dir", "teacher.prefetch",
                  "teacher.served.urls", "teacher.served.batch_size", "teacher.served.timeout_s",
                  "teacher.served.retries", "teacher.served.api_key_env",
                  "train.log_every", "train.eval_every", "train.eval_at_start",
                  "train.eval_at_end", "train.eval_batches",
                  "train.eval_batch_size", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.on_nonfinite", "train.max_skipped_steps", "compare")
# Config entries that describe the file, not the model.
_CONFIG_METADATA = ("transformers_version", "architectures", "torch_dtype", "dtype")
_ABSENT = object()


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """The values as they read back from JSON (tuples become lists), so that a fingerprint
    just computed compares equal to the same one written and read again."""
    return json.loads(json.dumps(values, default=str))


def _follows_max_steps(schedule: ScheduleConfig) -> bool:
    """Whether a loss schedule's value changes between its warmup and ``total_steps``."""
    return schedule.kind != "constant" and schedule.start != schedule.end


def recipe_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe's keys that a resumed run must keep (schedules' null
    ``total_steps`` replaced by ``train.max_steps``, which they follow)."""
    keys = _without_safe(flatten(to_dict(recipe), ""))
    for key, value in keys.items():  # a null total_steps ends at train.max_steps
        if key.endswith(".total_steps") and value is None:
            keys[key] = recipe.train.max_steps
    if recipe.train.lr_schedule == "constant":
        del keys["train.max_steps"]
    for field in dataclasses.fields(recipe.loss):
        schedule = getattr(recipe.loss, field.name)
        if isinstance(schedule, ScheduleConfig) and not _follows_max_steps(schedule):
            del keys[f"loss.{field.name}.total_steps"]
    # Keys of a divergence or strategy the run does not use change nothing a step computes;
    # left out, runs from before these keys existed still resume.
    if recipe.loss.adaptive != "taid":
        keys = {k: v for k, v in keys.items() if not k.startswith("loss.taid.")}
    if recipe.loss.divergence != "todi":
        keys.pop("loss.todi_sharpness", None)
    if not recipe.on_policy.active():
        # Off, it changes nothing a step computes, and a run from before the section
        # existed must still resume: it fingerprints as if absent.
        keys = {k: v for k, v in keys.items() if not k.startswith("on_policy.")}
    elif not _follows_max_steps(recipe.on_policy.fraction):
        del keys["on_policy.fraction.total_steps"]
    return _plain(keys)


def _without_safe(keys: dict[str, Any]) -> dict[str, Any]:
    """``keys`` but SAFE_TO_CHANGE (applied to a saved fingerprint too: one written before a
    key became safe still resumes)."""
    return {key: value for key, value in keys.items()
            if not any(key == safe or key.startswith(safe + ".") for safe in SAFE_TO_CHANGE)}


def _sha256(data) -> str:
    """Short sha256 of a bytes-like object (a numpy array is read in place, not copied)."""
    return hashlib.sha256(data).hexdigest()[:16]


def _blocks(blocks: torch.Tensor, digest: str | None = None) -> str:
    """The blocks' shape and digest: ``digest`` when the block cache recorded it, else
    computed in chunks (the same value: sha256 of the blocks as contiguous int64 rows)."""
    from distill.blocks import blocks_sha256

    rows, width = blocks.shape
    return f"{rows} blocks of {width} tokens, sha256 {digest or blocks_sha256(blocks)}"


def _identity(values: dict[str, Any], role: str) -> dict[str, Any]:
    """A model's identity flattened under ``role``, without what describes the file."""
    return {key: value for key, value in flatten(values, role).items()
            if not key.rsplit(".", 1)[-1].startswith("_")
            and key.rsplit(".", 1)[-1] not in _CONFIG_METADATA}


def built_fingerprint(tokenizer, train_blocks: torch.Tensor, validation_blocks: torch.Tensor,
                      student_config, teacher_identity: dict[str, Any],
                      digests: dict[str, str] | None = None) -> dict[str, Any]:
    """What the run built: the student's config, the teacher's identity
    (``Teacher.identity``: its config, or what a served teacher answered), the tokenizer's
    vocabulary and the packed data (``digests``, by split, as the block cache recorded
    them; without them hashing reads every token once)."""
    digests = digests or {}
    vocab = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
    keys: dict[str, Any] = {"tokenizer": f"{len(tokenizer)} tokens, sha256 {_sha256(vocab)}",
                            "data.train_blocks": _blocks(train_blocks, digests.get("train")),
                            "data.validation_blocks": _blocks(validation_blocks,
                                                              digests.get("validation"))}
    keys.update(_identity({"config": student_config.to_dict()}, "student"))
    keys.update(_identity(teacher_identity, "teacher"))
    return _plain(keys)


def write_fingerprint(output_dir: Path, recipe: Recipe, built: dict[str, Any]) -> None:
    write_atomic(Path(output_dir) / FINGERPRINT_FILE, json.dumps(
        {"recipe": recipe_fingerprint(recipe), "built": built}, indent=1))


def _saved(output_dir: Path) -> dict[str, Any] | None:
    path = Path(output_dir) / FINGERPRINT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def check_recipe(output_dir: Path, recipe: Recipe) -> None:
    """Refuse to resume the run in ``output_dir`` under a recipe that changes its
    fingerprint. A run from before fingerprints is compared with its config.yaml."""
    saved = _saved(output_dir)
    if saved is not None:
        _refuse_changes(output_dir, _without_safe(saved["recipe"]), recipe_fingerprint(recipe))
        return
    print(f"distill: {output_dir} has no {FINGERPRINT_FILE} (a run from an older distill): "
          "its config.yaml is compared, its data and models are not")
    if (Path(output_dir) / "config.yaml").is_file():
        from distill.recipe import load_recipe

        _refuse_changes(output_dir, recipe_fingerprint(load_recipe(output_dir / "config.yaml")),
                        recipe_fingerprint(recipe))


def check_built(output_dir: Path, built: dict[str, Any]) -> None:
    """Refuse to resume when what the run built (models, tokenizer, data) differs."""
    saved = _saved(output_dir)
    if saved is not None:
        _refuse_changes(output_dir, saved["built"], built)


def _refuse_changes(output_dir: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """UserError listing every key whose value differs (old -> new); nothing when none."""
    changed = [key for key in sorted(old.keys() | new.keys())
               if old.get(key, _ABSENT) != new.get(key, _ABSENT)]
    if not changed:
        return
    def show(values: dict[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "(absent)"

    lines = [f"  {key}: {show(old, key)} -> {show(new, key)}" for key in changed]
    if any(key.endswith(("max_steps", "total_steps")) for key in changed):
        lines.append("train.max_steps may change on resume only where nothing follows it: "
                     "with train.lr_schedule 'constant' and every changing loss schedule's "
                     "total_steps set to a number (null follows train.max_steps); otherwise "
                     "the learning rate or a loss weight would jump where the run resumes.")
    raise UserError(
        f"--resume: {output_dir} was trained under other settings, which its checkpoints "
        "cannot continue. Changed (the run's -> now):\n" + "\n".join(lines) + "\nResume "
        f"with the run's own recipe (`distill run {output_dir}/config.yaml --resume`; only "
        f"{', '.join(SAFE_TO_CHANGE)} may change) or start a new run in another output_dir. "
        "Nothing was changed.")
