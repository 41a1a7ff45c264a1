"""Whether what already lies in a comparison's output_dir is what is asked for now.

A finished run (``result.json``) records the resolved recipe it ran and the resolved recipe
of the teacher it learned from; an unfinished one has its ``recipe.yaml`` (and
``teacher.yaml``); the trained teacher has its ``config.yaml``. Each is compared key by key
with the recipe asked for now. Anything that differs is refused before any work, naming
the run and the keys, unless ``--rerun-changed`` asks to delete and rerun it: a report
never mixes results of other settings in, and no finished work is thrown away unasked.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.compare_plan import Plan
from distill.config import Recipe
from distill.errors import UserError, quote
from distill.recipe_yaml import load_yaml
from distill.schema import flatten, to_dict

RESULT = "result.json"
TEACHER_RECORD = "teacher.yaml"  # in a run's directory: the resolved teacher recipe
_ABSENT = object()
_SHOWN = 8  # changed keys listed per group of runs; the rest are counted
# What a run directory of the layout before seeds held directly (now in seed-<s>/).
_OLD_LAYOUT = (RESULT, "recipe.yaml", "metrics.jsonl", "config.yaml", "student")


def canonical(recipe: Recipe | None) -> dict[str, Any] | None:
    """The resolved recipe as plain JSON data (what result.json records)."""
    return None if recipe is None else json.loads(json.dumps(to_dict(recipe)))


def _read_yaml(path: Path) -> Any:
    return json.loads(json.dumps(load_yaml(path.read_text(encoding="utf-8"))))


def changes(recorded: Any, asked: Any, state: str, prefix: str = "") -> list[str]:
    """One line per dotted key whose value differs: ``train.max_steps: 60 in the finished
    run, 100 asked for``."""
    if recorded is None or asked is None:  # e.g. a run taught by no trained teacher
        label = prefix.rstrip(": ") or "recipe"
        return [] if recorded is asked else [
            f"{label}: {'none' if recorded is None else 'one'} in the {state} run, "
            f"{'none' if asked is None else 'one'} asked for"]
    old, new = flatten(recorded, keep_empty=True), flatten(asked, keep_empty=True)

    def show(values: dict[str, Any], key: str) -> str:
        value = values.get(key, _ABSENT)
        if value is _ABSENT:
            return "(absent)"
        # as a recipe writes them (YAML), not as Python prints them
        return {None: "null", True: "true", False: "false"}.get(value, quote(value)) \
            if value is None or isinstance(value, bool) else quote(value)

    return [f"{prefix}{key}: {show(old, key)} in the {state} run, {show(new, key)} asked for"
            for key in sorted(old.keys() | new.keys())
            if old.get(key, _ABSENT) != new.get(key, _ABSENT)]


@dataclass
class Stale:
    directory: Path
    state: str              # "finished", "unfinished" or "older layout"
    changes: list[str]


def _check_run(directory: Path, recipe: dict, teacher: dict | None) -> Stale | None:
    result = directory / RESULT
    if result.is_file():
        recorded = json.loads(result.read_text())
        if "recipe" not in recorded:
            return Stale(directory, "finished", ["records no resolved recipe (written by an "
                                                 "older distill compare)"])
        lines = changes(recorded["recipe"], recipe, "finished") + changes(
            recorded.get("teacher_recipe"), teacher, "finished", "teacher recipe: ")
        return Stale(directory, "finished", lines) if lines else None
    if (directory / "recipe.yaml").is_file():
        record = directory / TEACHER_RECORD
        lines = changes(_read_yaml(directory / "recipe.yaml"), recipe, "unfinished") + changes(
            _read_yaml(record) if record.is_file() else None, teacher, "unfinished",
            "teacher recipe: ")
        return Stale(directory, "unfinished", lines) if lines else None
    return None


def _check_teacher(directory: Path, asked: dict) -> Stale | None:
    finished = (directory / "student" / "config.json").is_file()
    state = "finished" if finished else "unfinished"
    config = directory / "config.yaml"
    if not config.is_file():
        return Stale(directory, state, ["records no config.yaml to compare"]) \
            if finished else None
    lines = changes(_read_yaml(config), asked, state)
    return Stale(directory, state, lines) if lines else None


def find_stale(plan: Plan) -> list[Stale]:
    """Every run (and the teacher) in the output directory made under other settings than
    ``plan`` asks for."""
    stale: list[Stale] = []
    teacher = canonical(plan.teacher.recipe) if plan.teacher else None
    if plan.teacher is not None:
        found = _check_teacher(plan.teacher.directory, teacher)
        if found:
            stale.append(found)
    for variant in plan.variants:
        held = [name for name in _OLD_LAYOUT if (variant.directory / name).exists()]
        if held:
            stale.append(Stale(variant.directory, "older layout", [
                f"holds a run directly ({', '.join(held)}), from before runs lived in "
                "seed-<s>/ directories"]))
    for run in plan.runs:
        found = _check_run(run.directory, canonical(run.recipe), teacher)
        if found:
            stale.append(found)
    return stale


def refusal(stale: list[Stale], out: Path) -> UserError:
    """One message naming every stale run and what differs, runs with the same differences
    grouped."""
    groups: dict[tuple[str, tuple[str, ...]], list[Path]] = {}
    for item in stale:
        groups.setdefault((item.state, tuple(item.changes)), []).append(item.directory)
    lines = [f"{out} holds {len(stale)} run(s) made under other settings than asked for now:"]
    for (state, changed), directories in groups.items():
        names = ", ".join(str(d.relative_to(out)) if d.is_relative_to(out) else str(d)
                          for d in directories)
        lines.append(f"  {names} ({state}):")
        lines += [f"    {line}" for line in changed[:_SHOWN]]
        if len(changed) > _SHOWN:
            lines.append(f"    ... and {len(changed) - _SHOWN} more keys")
    lines.append("Pass --rerun-changed to delete these runs and run them again, or choose "
                 "another output_dir. Nothing was changed.")
    return UserError("\n".join(lines))


def remove(stale: list[Stale], out: Path) -> None:
    """--rerun-changed: delete the stale runs, so that they run again from the start."""
    for item in stale:
        print(f"--rerun-changed: removing {item.directory} ({item.state}; "
              f"{item.changes[0]}{' ...' if len(item.changes) > 1 else ''})")
        if item.directory.exists():  # a seed-<s>/ inside an older layout's directory is gone
            shutil.rmtree(item.directory)
