"""``distill compare``: one base recipe under several variants, same seed, data order and
step budget; a frozen teacher's outputs computed once and shared.

Layout of ``output_dir``:
    teacher/                 the teacher trained by ``compare.teacher_recipe`` (if any)
    variants/<name>/         each variant's run (recipe.yaml, log.txt, the usual outputs)
    variants/<name>/result.json   written once the variant finished: it is then kept
    comparison.md, comparison.csv, comparison.png, report.md
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from distill.checkpoint import complete_checkpoints
from distill.config import Recipe
from distill.errors import UserError
from distill.recipe import dump_recipe, load_recipe_data, recipe_from_dict
from distill.schema import apply_override, build

# What every variant shares, so that their results differ by the loss alone.
_SHARED = ("seed", "output_dir", "data", "compare", "train.max_steps",
           "train.micro_batch_size", "train.grad_accum_steps")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class Variant:
    name: str
    description: str
    overrides: dict[str, Any]
    recipe: Recipe
    directory: Path


def _teacher_overrides(data: dict[str, Any], live: bool) -> dict[str, Any]:
    """Every variant reads one frozen teacher: the one ``compare.teacher_recipe`` trains
    into ``output_dir/teacher``, or the recipe's own hf teacher; cached once and shared,
    unless ``live`` (a variant samples from its student, and a cache cannot score text
    written after it was filled): then every variant runs that teacher live (`hf`), so that
    all of them learn from the same teacher outputs."""
    compare = data.get("compare") or {}
    kind = "hf" if live else "cached"
    if isinstance(compare, dict) and compare.get("teacher_recipe"):
        student = str(Path(str(data.get("output_dir", "runs/quickstart"))) / "teacher" / "student")
        return {"teacher.kind": kind, "teacher.hf.name_or_path": student,
                "data.tokenizer": student}
    if isinstance(data.get("teacher"), dict) and data["teacher"].get("kind") == "hf":
        return {"teacher.kind": kind}
    return {}


def _on_policy_anywhere(data: dict[str, Any]) -> bool:
    """Whether the base recipe or any variant has a nonzero ``on_policy.fraction``, read
    from the plain mapping before any recipe is built (malformed parts are left to the
    checks that follow, which name them)."""
    from distill.config import OnPolicyConfig

    def active(section: Any) -> bool:
        return isinstance(section, dict) and build(OnPolicyConfig, section, "on_policy").active()

    compare = data.get("compare") if isinstance(data.get("compare"), dict) else {}
    specs = compare.get("variants") if isinstance(compare.get("variants"), list) else []
    sections = [data.get("on_policy", {})]
    for spec in specs:
        overrides = spec.get("overrides") if isinstance(spec, dict) else None
        if not isinstance(overrides, dict):
            continue
        variant = {"on_policy": json.loads(json.dumps(data.get("on_policy") or {}))}
        for key, value in overrides.items():
            if str(key) == "on_policy" or str(key).startswith("on_policy."):
                apply_override(variant, str(key).split("."), value)
        sections.append(variant["on_policy"])
    return any(active(section) for section in sections)


def plan(recipe_path: str, overrides: Sequence[str]) -> tuple[Recipe, list[Variant]]:
    """Validate the base recipe and every variant before any work starts."""
    data = load_recipe_data(recipe_path, overrides)
    shared = _teacher_overrides(data, live=_on_policy_anywhere(data))
    for key, value in shared.items():
        apply_override(data, key.split("."), value)
    base = recipe_from_dict(data)
    if not base.compare.variants:
        raise UserError(f"compare.variants: {recipe_path} lists no variants to compare.")
    out = Path(base.output_dir)
    variants, seen = [], set()
    for index, spec in enumerate(base.compare.variants):
        where = f"compare.variants[{index}]"
        if not _NAME.match(spec.name or ""):
            raise UserError(f"{where}.name: got {spec.name!r}; use letters, digits, '-', '_', '.'.")
        if spec.name in seen:
            raise UserError(f"{where}.name: {spec.name!r} is used twice.")
        seen.add(spec.name)
        for key in spec.overrides:
            if any(key == s or key.startswith(s + ".") for s in _SHARED):
                raise UserError(f"{where}.overrides: {key!r} must be the same for every "
                                f"variant (shared: {', '.join(_SHARED)}).")
        variant_data = json.loads(json.dumps(data))  # a deep copy of plain data
        variant_data.pop("compare", None)
        directory = out / "variants" / spec.name
        for key, value in {**spec.overrides, "output_dir": str(directory)}.items():
            apply_override(variant_data, key.split("."), value)
        try:
            recipe = recipe_from_dict(variant_data)
        except UserError as exc:
            raise UserError(f"{where} ({spec.name}): {exc}") from None
        variants.append(Variant(spec.name, spec.description, dict(spec.overrides), recipe,
                                directory))
    return base, variants


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


def _train_teacher(base: Recipe, out: Path) -> None:
    teacher_dir = out / "teacher"
    if (teacher_dir / "student" / "config.json").is_file():
        print(f"teacher: reusing {teacher_dir / 'student'}")
        return
    teacher_dir.mkdir(parents=True, exist_ok=True)
    args = ["run", base.compare.teacher_recipe, f"output_dir={teacher_dir}",
            *_resume_args(teacher_dir)]
    print(f"teacher: training with {base.compare.teacher_recipe} (log: {teacher_dir}/log.txt)")
    if _distill(args, teacher_dir / "log.txt") != 0:
        raise UserError(f"the teacher recipe failed; see {teacher_dir / 'log.txt'}")


def _fill_cache(recipe: Recipe) -> None:
    """Compute the frozen teacher's outputs once, before the variants read them."""
    from accelerate import Accelerator

    import teachers
    from distill.corpus import load_corpus
    from distill.data import cache_root, prepare_data

    data = prepare_data(recipe.data, load_corpus(recipe.data), recipe.trust_remote_code)
    teacher = teachers.build(recipe.teacher, teachers.TeacherSetup(
        vocab_rows=len(data.tokenizer), efficient_moe=recipe.train.efficient_moe,
        cache_root=cache_root(recipe.data), trust_remote_code=tuple(recipe.trust_remote_code)))
    teacher.prepare(teachers.Placement(Accelerator(cpu=recipe.train.cpu), data.train))
    print(f"teacher outputs: {'computed into' if teacher.rebuilt else 'reusing'} {teacher.path}")


def _run_variant(variant: Variant, threads: int | None) -> dict[str, Any]:
    result_file = variant.directory / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    variant.directory.mkdir(parents=True, exist_ok=True)
    recipe_file = variant.directory / "recipe.yaml"
    recipe_file.write_text(dump_recipe(variant.recipe))
    args = ["run", str(recipe_file), *_resume_args(variant.directory)]  # interrupted: continue
    start = time.perf_counter()
    code = _distill(args, variant.directory / "log.txt", threads)
    if code != 0:
        raise UserError(f"variant {variant.name} failed (exit {code}); see "
                        f"{variant.directory / 'log.txt'}; run the comparison again to "
                        "resume it")
    result = {"variant": variant.name, "wall_time_s": time.perf_counter() - start}
    result_file.write_text(json.dumps(result))
    return result


def run_comparison(recipe_path: str, overrides: Sequence[str], jobs: int = 1) -> Path:
    base, variants = plan(recipe_path, overrides)
    out = Path(base.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if base.compare.teacher_recipe:
        _train_teacher(base, out)
    if variants[0].recipe.teacher.kind == "cached":
        _fill_cache(variants[0].recipe)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    pending = [v for v in variants if not (v.directory / "result.json").is_file()]
    print(f"variants: {len(variants)} ({len(variants) - len(pending)} already finished), "
          f"{jobs} at a time")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = dict(zip([v.name for v in variants],
                           pool.map(lambda v: _run_variant(v, threads), variants)))
    from distill.report import write_reports

    write_reports(base, variants, results, out, recipe_path)
    return out
