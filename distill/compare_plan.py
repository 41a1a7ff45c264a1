"""What ``distill compare`` will run, validated before any work: the base recipe, each
variant's resolved recipe and class, the seeds, one run per (seed, variant), and the teacher
that ``compare.teacher_recipe`` trains."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from distill.compare_classify import classify
from distill.config import Recipe
from distill.errors import UserError, quote
from distill.recipe import load_recipe_data, recipe_from_dict
from distill.schema import apply_override, build, suggest

# What every variant shares, so that their results differ by the loss alone and their
# validation losses are measured on the same positions.
SHARED = ("seed", "output_dir", "data", "compare", "train.max_steps",
          "train.micro_batch_size", "train.grad_accum_steps", "train.eval_batches",
          "train.eval_batch_size", "train.eval_at_end")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_MAX_SEED = 2**32 - 1  # as Recipe.seed: the most numpy's seeding takes


@dataclass
class Variant:
    name: str
    description: str
    overrides: dict[str, Any]
    recipe: Recipe      # resolved under the first seed
    directory: Path     # output_dir/variants/<name>
    kind: str           # baseline / constant / dynamic (distill.compare_classify)
    why: str            # the reason for the class, for the report


@dataclass
class Run:
    """One variant under one seed, in ``variants/<name>/seed-<s>/``."""

    variant: Variant
    seed: int
    recipe: Recipe
    directory: Path

    @property
    def label(self) -> str:
        return f"{self.variant.name} seed {self.seed}"


@dataclass
class TeacherPlan:
    """The teacher ``compare.teacher_recipe`` trains, with ``compare.teacher_overrides``."""

    recipe_path: str
    overrides: dict[str, Any]
    recipe: Recipe      # resolved, output_dir = output_dir/teacher
    directory: Path


@dataclass
class Plan:
    recipe_path: str
    overrides: list[str]      # the command line's key=value, for the report's Reproduce
    only: list[str] | None    # --only, when a subset of the variants runs
    base: Recipe
    variants: list[Variant]   # those that run (all, or --only's)
    seeds: list[int]
    runs: list[Run]           # seed by seed, each seed's variants in the recipe's order
    teacher: TeacherPlan | None


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


def _seeds(data: dict[str, Any], base: Recipe) -> list[int]:
    """``compare.seeds``, checked; the recipe's own seed when null."""
    raw = (data.get("compare") or {}).get("seeds")
    if isinstance(raw, int) and not isinstance(raw, bool):
        # the schema would read a bare 3 as [3]; a user may have meant three seeds
        raise UserError(f"compare.seeds: got {raw}; give a list of seeds, e.g. [0, 1, 2].")
    seeds = base.compare.seeds
    if seeds is None:
        return [base.seed]
    if not seeds:
        raise UserError("compare.seeds: the list is empty; give seeds such as [0, 1, 2], or "
                        "null for the recipe's own seed.")
    for seed in seeds:
        if not 0 <= seed <= _MAX_SEED:
            raise UserError(f"compare.seeds: got {seed}; each seed must be in [0, {_MAX_SEED}].")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"compare.seeds: {seeds} lists a seed twice; a repeat would only "
                        "run the same runs again.")
    return list(seeds)


def _teacher_plan(base: Recipe, out: Path) -> TeacherPlan | None:
    """The teacher recipe resolved as it will run: its file, then compare.teacher_overrides,
    then output_dir = output_dir/teacher."""
    compare = base.compare
    if not compare.teacher_recipe:
        if compare.teacher_overrides:
            raise UserError("compare.teacher_overrides: set, but there is no "
                            "compare.teacher_recipe for them to change.")
        return None
    for key in compare.teacher_overrides:
        if str(key) == "output_dir":
            raise UserError("compare.teacher_overrides: 'output_dir' is always "
                            f"{out / 'teacher'} (output_dir/teacher).")
    where = f"compare.teacher_recipe ({compare.teacher_recipe})"
    try:
        data = load_recipe_data(compare.teacher_recipe)
    except UserError as exc:
        raise UserError(f"compare.teacher_recipe: {exc}") from None
    for key, value in {**compare.teacher_overrides, "output_dir": str(out / "teacher")}.items():
        apply_override(data, str(key).split("."), value)
    try:
        recipe = recipe_from_dict(data)
    except UserError as exc:
        extra = " with compare.teacher_overrides" if compare.teacher_overrides else ""
        raise UserError(f"{where}{extra}: {exc}") from None
    return TeacherPlan(compare.teacher_recipe, dict(compare.teacher_overrides), recipe,
                       out / "teacher")


def _variant(data: dict[str, Any], index: int, spec, out: Path) -> Variant:
    where = f"compare.variants[{index}]"
    for key in spec.overrides:
        if any(key == s or key.startswith(s + ".") for s in SHARED):
            raise UserError(f"{where}.overrides: {key!r} must be the same for every "
                            f"variant (shared: {', '.join(SHARED)}).")
    variant_data = json.loads(json.dumps(data))  # a deep copy of plain data
    variant_data.pop("compare", None)
    directory = out / "variants" / spec.name
    for key, value in spec.overrides.items():
        apply_override(variant_data, key.split("."), value)
    try:
        recipe = recipe_from_dict(variant_data)
    except UserError as exc:
        raise UserError(f"{where} ({spec.name}): {exc}") from None
    kind, why = classify(recipe)
    return Variant(spec.name, spec.description, dict(spec.overrides), recipe, directory,
                   kind, why)


def _selected(variants: list[Variant], only: Sequence[str] | None) -> list[Variant]:
    if not only:
        return variants
    names = [v.name for v in variants]
    for name in only:
        if name not in names:
            raise UserError(f"--only: no variant named {quote(name)} in compare.variants "
                            f"(there are: {', '.join(names)}).{suggest(name, names)}")
    return [v for v in variants if v.name in only]


def make_plan(recipe_path: str, overrides: Sequence[str] = (),
              only: Sequence[str] | None = None) -> Plan:
    """Validate the base recipe, every variant, the seeds and the teacher recipe before any
    work starts."""
    data = load_recipe_data(recipe_path, overrides)
    shared = _teacher_overrides(data, live=_on_policy_anywhere(data))
    for key, value in shared.items():
        apply_override(data, key.split("."), value)
    base = recipe_from_dict(data)
    if not base.train.eval_at_end:  # the table and the verdicts rest on every final val_loss
        raise UserError("train.eval_at_end: false, but compare ranks the runs by their final "
                        "validation loss, which only the evaluation at the end measures; "
                        "remove the setting (true is the default) to compare.")
    if not base.compare.variants:
        raise UserError(f"compare.variants: {recipe_path} lists no variants to compare.")
    out = Path(base.output_dir)
    seeds = _seeds(data, base)
    variants, seen = [], set()
    for index, spec in enumerate(base.compare.variants):
        if not _NAME.match(spec.name or ""):
            raise UserError(f"compare.variants[{index}].name: got {spec.name!r}; use letters, "
                            "digits, '-', '_', '.'.")
        if spec.name in seen:
            raise UserError(f"compare.variants[{index}].name: {spec.name!r} is used twice.")
        seen.add(spec.name)
        data["seed"] = seeds[0]
        variants.append(_variant(data, index, spec, out))
    teacher = _teacher_plan(base, out)
    variants = _selected(variants, only)
    # A seed changes nothing that validation checks: the runs copy the variant's recipe.
    runs = [Run(v, seed, dataclasses.replace(v.recipe, seed=seed,
                                             output_dir=str(v.directory / f"seed-{seed}")),
                v.directory / f"seed-{seed}")
            for seed in seeds for v in variants]
    return Plan(recipe_path, list(overrides), list(only) if only else None, base, variants,
                seeds, runs, teacher)
