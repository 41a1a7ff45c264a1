"""Load a YAML recipe plus dotted overrides into a validated :class:`Recipe`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from distill.config import Recipe, ScheduleConfig
from distill.corpus_files import check_options as check_data_options
from distill.errors import UserError, quote
from distill.teacher_use import teacher_skipped
from distill.recipe_yaml import RefusedYAML, dump_yaml, load_yaml
from distill.schema import apply_override, build, parse_override, suggest, to_dict


def load_recipe(path: str | Path | None, overrides: Sequence[str] = ()) -> Recipe:
    """Read ``path`` (safe YAML only), apply ``key=value`` overrides, validate everything."""
    return recipe_from_dict(load_recipe_data(path, overrides))


def load_recipe_data(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The recipe's mapping with the overrides applied, before it becomes a Recipe."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_recipe_file(Path(path))
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(data, parts, value)
    return data


def _read_recipe_file(path: Path) -> dict[str, Any]:
    """The mapping a recipe file holds; UserError for anything else a file can be."""
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not a text recipe: byte 0x{exc.object[exc.start]:02x} at "
                        f"offset {exc.start} is not UTF-8.") from None
    except OSError as exc:
        raise UserError(f"cannot read recipe {path}: {exc.strerror}.") from None
    try:
        loaded = load_yaml(text)
    except RefusedYAML as exc:
        raise UserError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    # An empty file would run every default without a word: almost always the wrong file.
    if loaded is None or loaded == {}:
        raise UserError(f"recipe {path} is empty; a recipe names at least the sections it "
                        "sets (see recipes/quickstart.yaml).")
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of sections, "
                        f"got {type(loaded).__name__}.")
    return loaded


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Build and validate a recipe from a mapping (for Python callers and tests)."""
    recipe = build(Recipe, data)
    validate(recipe)
    return recipe


def _check_schedule(name: str, sched: ScheduleConfig, max_steps: int,
                    allowed: str, ok: Callable[[float], bool]) -> None:
    if sched.end is None:
        sched.end = sched.start
    # A null total_steps stays null in the resolved recipe (and so in config.yaml): it
    # follows train.max_steps of whichever run reads the recipe.
    total = max_steps if sched.total_steps is None else sched.total_steps
    for attr in ("start", "end", "warmup_start"):
        value = getattr(sched, attr)
        if value is not None and not ok(value):
            raise UserError(f"{name}.{attr}: got {value}; must be {allowed}.")
    if sched.warmup_steps >= total and sched.start != sched.end:
        where = "train.max_steps" if sched.total_steps is None else f"{name}.total_steps"
        raise UserError(f"{name}.warmup_steps ({sched.warmup_steps}) must be below "
                        f"{where} ({total}).")


def _check_name(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise UserError(f"{key}: got {quote(value)}; allowed: {', '.join(allowed)}."
                        f"{suggest(value, allowed)}")


def _check_models(recipe: Recipe) -> None:
    import students
    import teachers

    teacher, student = recipe.teacher, recipe.student
    try:
        teachers.check(teacher)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if student.init == "pretrained" and not student.name_or_path:
        raise UserError("student.name_or_path: init 'pretrained' needs a checkpoint directory "
                        "or hub name.")
    if student.init == "from_teacher" and not teachers.TEACHERS[teacher.kind].has_weights:
        raise UserError(f"student.init: 'from_teacher' needs a teacher with weights (teacher.kind "
                        f"is {teacher.kind!r}).")
    # Every model section is checked, used by this kind or not: a typo never waits for the
    # day the section is used.
    for key, model in (("student", student), ("teacher.codistill.model", teacher.codistill.model)):
        _check_name(f"{key}.preset", model.preset, list(students.PRESETS))
        if model is student and student.init == "pretrained":
            continue  # the checkpoint's own config is used
        try:
            config = students.model_config(model.preset, model.overrides,
                                           recipe.data.vocab_size, config_file=model.config_file)
        except ValueError as exc:
            raise UserError(f"{key}: {exc}") from None
        # A config that builds can still describe no model, or no causal LM: build it (and
        # run it) on the meta device, at no memory, rather than find out after the data.
        try:
            students.check_buildable(config)
        except ValueError as exc:
            raise UserError(f"{_model_source(key, model)}: {exc}") from None
    if student.peft is not None:
        try:
            students.make_peft_config(student.peft)
        except ValueError as exc:
            raise UserError(str(exc)) from None


def _model_source(key: str, model) -> str:
    """The recipe keys that made a model section's config, for a message."""
    if model.config_file:
        return f"{key}.config_file ({model.config_file})"
    if model.overrides:
        return f"{key}.overrides {quote(model.overrides)} (on preset {model.preset!r})"
    return f"{key}.preset ({model.preset!r})"


def _loaded_paths(recipe: Recipe) -> dict[str, str | None]:
    """What the run loads from a path or hub name, by recipe key (None: nothing)."""
    student = recipe.student
    return {"teacher.hf.name_or_path": None if teacher_skipped(recipe) else
            recipe.teacher.pretrained(),
            "student.name_or_path": student.name_or_path if student.init == "pretrained"
            else None,
            "data.tokenizer": recipe.data.tokenizer if recipe.data.tokenizer != "bpe" else None}


def _check_remote_code(recipe: Recipe) -> None:
    """What the run will load from a path, refused before any work when it needs its own
    code and the recipe does not trust that path (the loaders refuse it too)."""
    from students import sources

    for key, path in _loaded_paths(recipe).items():
        if path:
            try:
                sources.refuse_custom_code(
                    path, sources.is_trusted(path, recipe.trust_remote_code), key)
            except ValueError as exc:
                raise UserError(str(exc)) from None


def check_sources(recipe: Recipe) -> None:
    """Every checkpoint, tokenizer and hub dataset the run loads can be loaded: a local path
    that does not exist, or a hub name neither cached nor reachable, is refused naming its
    key, before any model or data work (rather than after the hub client's retries). Not
    part of :func:`validate`: a valid recipe may name what an earlier run will write (the
    shipped recipes name runs/teacher-tiny/student; compare's variants, its teacher)."""
    from students import sources

    try:
        for key, path in _loaded_paths(recipe).items():
            if path:
                sources.check_exists(path, key)
        if recipe.data.source == "hub" and recipe.data.hub_name:
            sources.check_hub_dataset(recipe.data.hub_name)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None


def validate(recipe: Recipe) -> None:
    """Checks that span several fields; fills schedule defaults from ``train.max_steps``."""
    data = recipe.data
    if data.source == "files" and not data.files:
        raise UserError("data.files: source is 'files' but no files are listed.")
    if data.source == "hub" and not data.hub_name:
        raise UserError("data.hub_name: source is 'hub' but no dataset name is given.")
    check_data_options(data)
    if not recipe.output_dir.strip():
        raise UserError(f"output_dir: got {quote(recipe.output_dir)}; name the directory the "
                        "run writes into (an empty one would be the current directory).")
    _check_models(recipe)
    _check_remote_code(recipe)
    steps = recipe.train.max_steps
    _check_schedule("loss.soft_weight", recipe.loss.soft_weight, steps,
                    "in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    if recipe.loss.hard_weight is not None:
        _check_schedule("loss.hard_weight", recipe.loss.hard_weight, steps, ">= 0", lambda v: v >= 0)
    _check_schedule("loss.temperature", recipe.loss.temperature, steps, "> 0", lambda v: v > 0)
    _check_schedule("loss.beta", recipe.loss.beta, steps, "in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    _check_schedule("loss.router_aux_weight", recipe.loss.router_aux_weight, steps, ">= 0",
                    lambda v: v >= 0)
    _check_divergence_and_taid(recipe)
    _check_on_policy(recipe)


def _check_divergence_and_taid(recipe: Recipe) -> None:
    """todi's sharpness and the taid section, checked whether or not they are used (a typo
    never waits for the day it is used); taid's null total_steps stays null and follows
    train.max_steps of the run that reads the recipe, as the schedules' do."""
    loss = recipe.loss
    if not loss.todi_sharpness > 0:
        raise UserError(f"loss.todi_sharpness: got {loss.todi_sharpness}; must be > 0 (the "
                        "gate sigmoid(s log(p/q)) leans to forward KL where the student "
                        "under-estimates the teacher only for s > 0).")
    taid = loss.taid
    if not taid.t_start < 1.0:
        raise UserError(f"loss.taid.t_start: got {taid.t_start}; must be in [0, 1) (at 1 the "
                        "target is the teacher from the start: use loss.adaptive 'none').")
    if not taid.t_end > 0.0:
        raise UserError(f"loss.taid.t_end: got {taid.t_end}; must be in (0, 1].")
    if not taid.t_start < taid.t_end:
        raise UserError(f"loss.taid.t_start ({taid.t_start}) must be below loss.taid.t_end "
                        f"({taid.t_end}).")
    if not taid.momentum < 1.0:
        raise UserError(f"loss.taid.momentum: got {taid.momentum}; must be in [0, 1) (at 1 "
                        "the running decrease never moves).")


def _check_on_policy(recipe: Recipe) -> None:
    """The on_policy section. Its ranges are checked whether or not it is on (a typo never
    waits for the day it is used); the fit in a block and the teacher only when it is on."""
    section = recipe.on_policy
    _check_schedule("on_policy.fraction", section.fraction, recipe.train.max_steps,
                    "in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    if not section.temperature > 0:
        raise UserError(f"on_policy.temperature: got {section.temperature}; must be > 0 "
                        "(0 would be greedy decoding, which this sampler does not do).")
    if not 0 < section.top_p <= 1:
        raise UserError(f"on_policy.top_p: got {section.top_p}; must be in (0, 1].")
    if not section.active():
        return
    kind = recipe.teacher.kind
    if kind == "cached":
        raise UserError(
            "on_policy.fraction: teacher.kind 'cached' cannot grade on-policy samples: its "
            "outputs were computed over the training data before the run, and a cache cannot "
            "score text the student writes after it was filled. Use teacher.kind 'hf' (the "
            "same teacher, live) or set on_policy.fraction to 0.")
    if kind == "none":
        raise UserError("on_policy.fraction: teacher.kind 'none' has no teacher to grade the "
                        "student's samples; choose a teacher or set on_policy.fraction to 0.")
    room = recipe.data.block_size + 1  # a generated row is a block: inputs and labels
    if section.prompt_tokens + section.max_new_tokens > room:
        raise UserError(
            f"on_policy.max_new_tokens: prompt_tokens ({section.prompt_tokens}) + "
            f"max_new_tokens ({section.max_new_tokens}) = "
            f"{section.prompt_tokens + section.max_new_tokens} must be at most "
            f"data.block_size + 1 = {room}, so that a generated row fits a block.")


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (what ``output_dir/config.yaml`` holds)."""
    return dump_yaml(to_dict(recipe))
