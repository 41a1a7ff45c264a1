"""``distill compare``: one base recipe under several variants and seeds, the same data
order, step budget and validation positions for every variant; a frozen teacher's outputs
computed once and shared.

Layout of ``output_dir``:
    teacher/                          the teacher ``compare.teacher_recipe`` trains (if any)
    variants/<name>/seed-<s>/         one run: recipe.yaml, log.txt, the usual outputs
    variants/<name>/seed-<s>/result.json   written once the run finished; records the
                                      resolved recipe it ran (reused only while unchanged)
    comparison.md, comparison.csv, comparison_seeds.csv, comparison.png, report.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from distill.checkpoint import complete_checkpoints
from distill.compare_plan import Plan, Run, TeacherPlan, Variant, make_plan
from distill.compare_progress import Job, run_all
from distill.compare_state import (RESULT, TEACHER_RECORD, canonical, find_stale, refusal,
                                   remove)
from distill.config import Recipe
from distill.errors import UserError
from distill.files import write_atomic
from distill.recipe import dump_recipe



def plan(recipe_path: str, overrides: Sequence[str] = ()) -> tuple[Recipe, list[Variant]]:
    """The base recipe and every variant, validated (for tools and tests that check a
    comparison recipe without running it; ``make_plan`` has the runs and the teacher)."""
    comparison = make_plan(recipe_path, overrides)
    return comparison.base, comparison.variants


def _distill(args: list[str], log: Path, threads: int | None = None) -> int:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log, "a", encoding="utf-8") as handle:
        return subprocess.run([sys.executable, "-m", "distill", *args], stdout=handle,
                              stderr=subprocess.STDOUT, env=env).returncode


def _resume_args(directory: Path) -> list[str]:
    """``--resume`` for a run interrupted after a checkpoint; a run interrupted before its
    first has nothing to resume (--resume refuses it): its log goes and it starts over."""
    if complete_checkpoints(directory):
        return ["--resume"]
    (directory / "metrics.jsonl").unlink(missing_ok=True)
    return []


def _train_teacher(teacher: TeacherPlan) -> None:
    """Train the teacher once; a finished one (whose config.yaml find_stale found equal to
    the recipe asked for) is reused, an interrupted one resumed."""
    directory = teacher.directory
    if (directory / "student" / "config.json").is_file():
        print(f"teacher: reusing {directory / 'student'} (trained by {teacher.recipe_path})")
        return
    directory.mkdir(parents=True, exist_ok=True)
    recipe_file = directory / "recipe.yaml"
    write_atomic(recipe_file, dump_recipe(teacher.recipe))
    print(f"teacher: training with {teacher.recipe_path} (log: {directory / 'log.txt'})")
    job = Job("", "teacher",
              directory / "metrics.jsonl", teacher.recipe.train.max_steps)
    codes, failures = run_all([job], lambda _: _distill(
        ["run", str(recipe_file), *_resume_args(directory)], directory / "log.txt"), 1,
        desc="teacher")
    if failures or codes.get(0) != 0:
        raise UserError(f"the teacher recipe failed; see {directory / 'log.txt'}")


def _fill_cache(recipes: list[Recipe]) -> None:
    """Compute the frozen teacher's outputs once, before the runs read them: the union of
    the blocks every run reads (the cache's key holds the teacher and the training data,
    not the seed: every seed shares it, and each adds only the blocks the others lack)."""
    import torch
    from accelerate import Accelerator

    import teachers
    from distill.build import blocks_read
    from distill.teacher_use import unused_teacher_reason
    from distill.corpus import load_corpus
    from distill.data import cache_root, prepare_data

    readers = [r for r in recipes if unused_teacher_reason(r) is None]
    if not readers:  # every run weights the teacher by 0: none builds it
        return
    recipe = readers[0]
    data = prepare_data(recipe.data, load_corpus(recipe.data), recipe.trust_remote_code)

    def union() -> torch.Tensor:
        seen = torch.zeros(len(data.train), dtype=torch.bool)
        parts = []
        for reader in readers:  # `distill run` of each is one process
            blocks = blocks_read(len(data.train), reader.train, reader.seed, 1)
            parts.append(blocks[~seen[blocks]])
            seen[blocks] = True
        return torch.cat(parts)

    teacher = teachers.build(recipe.teacher, teachers.TeacherSetup(
        vocab_rows=len(data.tokenizer), efficient_moe=recipe.train.efficient_moe,
        cache_root=cache_root(recipe.data), trust_remote_code=tuple(recipe.trust_remote_code)))
    try:
        teacher.prepare(teachers.Placement(Accelerator(cpu=recipe.train.cpu), data.train,
                                           blocks_read=union,
                                           train_digest=data.digests["train"]))
    except teachers.TeacherRefused as exc:
        raise UserError(str(exc)) from None
    print(f"teacher outputs: {'computed into' if teacher.rebuilt else 'reusing'} {teacher.path}")


def _run_one(run: Run, teacher: Recipe | None, threads: int | None) -> dict[str, Any]:
    """Train one run (or continue it) and record what it ran in its result.json."""
    result_file = run.directory / RESULT
    if result_file.is_file():
        return json.loads(result_file.read_text())
    run.directory.mkdir(parents=True, exist_ok=True)
    recipe_file = run.directory / "recipe.yaml"
    write_atomic(recipe_file, dump_recipe(run.recipe))
    if teacher is not None:  # which teacher it learns from, for the next staleness check
        write_atomic(run.directory / TEACHER_RECORD, dump_recipe(teacher))
    args = ["run", str(recipe_file), *_resume_args(run.directory)]  # interrupted: continue
    start = time.perf_counter()
    code = _distill(args, run.directory / "log.txt", threads)
    if code != 0:
        raise UserError(f"{run.label} failed (exit {code}); see {run.directory / 'log.txt'}")
    result = {"variant": run.variant.name, "seed": run.seed,
              "wall_time_s": time.perf_counter() - start, "recipe": canonical(run.recipe),
              "teacher_recipe": canonical(teacher)}
    write_atomic(result_file, json.dumps(result, indent=1))
    return result


def _run_all(comparison: Plan, jobs: int) -> dict[str, dict[str, Any]]:
    """Every run, ``jobs`` at a time, under one progress bar; results by run directory."""
    runs = comparison.runs
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    teacher = comparison.teacher.recipe if comparison.teacher else None
    done = [(run.directory / RESULT).is_file() for run in runs]
    print(f"runs: {len(runs)} ({len(comparison.variants)} variants x "
          f"{len(comparison.seeds)} seeds; {sum(done)} already finished), {jobs} at a time; "
          "logs in variants/<name>/seed-<s>/log.txt")
    # (a cache under each run's own output_dir, `cache_dir: run`, is filled by each run)
    cached = runs[0].recipe.teacher
    if not all(done) and cached.kind == "cached" and cached.cached.cache_dir != "run":
        _fill_cache([run.recipe for i, run in enumerate(runs) if not done[i]])
    queue = [Job(f"run {i + 1} of {len(runs)}: {run.label}", run.label,
                 run.directory / "metrics.jsonl", run.recipe.train.max_steps, done[i])
             for i, run in enumerate(runs)]
    results, failures = run_all(queue, lambda i: _run_one(runs[i], teacher, threads), jobs,
                                desc="compare")
    if failures:
        raise UserError("; ".join(str(failures[i]) for i in sorted(failures)) +
                        "; run the comparison again to resume the failed runs (finished "
                        "runs are kept).")
    for i, run in enumerate(runs):
        if done[i]:
            results[i] = json.loads((run.directory / RESULT).read_text())
    return {str(runs[i].directory): results[i] for i in range(len(runs))}


def run_comparison(recipe_path: str, overrides: Sequence[str], jobs: int = 1,
                   only: Sequence[str] | None = None, rerun_changed: bool = False) -> Path:
    comparison = make_plan(recipe_path, overrides, only)
    out = Path(comparison.base.output_dir)
    stale = find_stale(comparison)  # before any work: refused, or removed when asked
    if stale and not rerun_changed:
        raise refusal(stale, out)
    remove(stale, out)
    out.mkdir(parents=True, exist_ok=True)
    if comparison.teacher is not None:
        _train_teacher(comparison.teacher)
    results = _run_all(comparison, jobs)
    from distill.report import write_reports

    write_reports(comparison, results, out)
    return out
