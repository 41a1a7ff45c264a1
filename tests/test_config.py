from __future__ import annotations

from pathlib import Path

import pytest

from distill.config import Recipe
from distill.errors import UserError
from distill.recipe import dump_recipe, load_recipe
from distill.schema import reference_markdown
from tests.conftest import REPO, run_cli

QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def test_quickstart_loads_with_typed_overrides():
    recipe = load_recipe(QUICKSTART, ["train.max_steps=50", "output_dir=runs/a", "seed=3",
                                      "train.eval_every=10", "train.checkpoint_every=25",
                                      "student.overrides.num_hidden_layers=4",
                                      "loss.temperature=2"])
    assert isinstance(recipe, Recipe)
    assert recipe.train.max_steps == 50 and recipe.seed == 3 and recipe.output_dir == "runs/a"
    assert recipe.student.overrides == {"num_hidden_layers": 4}
    assert recipe.loss.temperature.kind == "constant" and recipe.loss.temperature.start == 2.0
    # a schedule's missing end is its start; a null horizon stays null in the resolved
    # recipe (so a config.yaml written by one run follows the next run's step budget) and
    # the objective built from it ends at train.max_steps
    assert recipe.loss.soft_weight.total_steps is None
    assert recipe.loss.temperature.end == 2.0


def test_a_schedule_written_by_one_run_follows_the_next_runs_step_budget(tmp_path):
    import losses
    from distill.recipe import dump_recipe

    decay = "{kind: linear, start: 0.9, end: 0.1}"
    first = load_recipe(REPO / "recipes" / "quickstart.yaml",
                        [f"loss.soft_weight={decay}", "train.max_steps=300"])
    written = tmp_path / "config.yaml"
    written.write_text(dump_recipe(first))
    shorter = load_recipe(written, ["train.max_steps=100"])
    objective = losses.build_objective(shorter.loss, max_steps=shorter.train.max_steps)
    # halfway through the 100-step run, not a third of the way through 300 steps
    assert objective.soft_weight(50) == pytest.approx(0.5)
    assert objective.soft_weight(100) == pytest.approx(0.1)
    fixed = load_recipe(REPO / "recipes" / "quickstart.yaml", [
        "loss.soft_weight={kind: linear, start: 0.9, end: 0.1, total_steps: 300}"])
    written.write_text(dump_recipe(fixed))
    kept = load_recipe(written, ["train.max_steps=100"])
    assert losses.build_objective(kept.loss, max_steps=100).soft_weight(150) == \
        pytest.approx(0.5)  # a length the user fixed is kept


@pytest.mark.parametrize("recipe_path", sorted((REPO / "recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_validates(recipe_path: Path):
    import yaml

    from distill.compare import plan

    if (yaml.safe_load(recipe_path.read_text()).get("compare") or {}).get("variants"):
        base, variants = plan(str(recipe_path), [])  # a comparison: every variant validates
        assert variants and all(v.recipe.train.max_steps == base.train.max_steps
                                for v in variants)
        return
    recipe = load_recipe(recipe_path)
    # the resolved form round-trips: config.yaml reloads to the same recipe
    assert dump_recipe(_reload(recipe)) == dump_recipe(recipe)


def _reload(recipe: Recipe) -> Recipe:
    import yaml

    from distill.recipe import recipe_from_dict

    return recipe_from_dict(yaml.safe_load(dump_recipe(recipe)))


@pytest.mark.parametrize("override, expected", [
    ("train.max_stesp=5", "unknown key 'train.max_stesp'.*Did you mean 'max_steps'"),
    # keys of the flat teacher section of earlier versions say where they moved
    ("teacher.name_or_path=x", "unknown key 'teacher.name_or_path' in 'teacher': it moved to "
                               "'teacher.hf.name_or_path'"),
    ("teacher.cache_batch_size=4", "moved to 'teacher.cached.batch_size'"),
    ("teacher.model.preset=scout-tiny", "moved to 'teacher.codistill.model'"),
    ("teacher.hf.top_k=4", "unknown key 'teacher.hf.top_k'.*Allowed: name_or_path"),
    ("trian.max_steps=5", "unknown key 'trian'.*Did you mean 'train'"),
    ("train.max_steps=abc", r"train.max_steps: got 'abc' \(str\); expected an integer"),
    ("train.max_steps=0", r"train.max_steps: got 0; must be >= 1"),
    ("train.lr_schedule=cosin", r"allowed: cosine, linear, constant.*Did you mean 'cosine'"),
    ("data.source=web", r"data.source: got 'web'; allowed: stdlib, python_docs, files, hub"),
    ("loss.soft_weight.start=1.5", r"loss.soft_weight.start: got 1.5; must be in \[0, 1\]"),
    ("loss.temperature=0", r"loss.temperature.start: got 0.0; must be > 0"),
    ("loss.divergence=forward_kll", r"Did you mean 'forward_kl'"),
    ("student.preset=scout-tyni", r"student.preset.*Did you mean 'scout-tiny'"),
    ("student.overrides.hidden_sise=3", r"Did you mean 'hidden_size'"),
    ("data.source=files", r"data.files: source is 'files' but no files are listed"),
    ("train.cpu=maybe", r"train.cpu: got 'maybe' \(str\); expected true or false"),
    ("seed", r"not of the form key=value"),
    ("loss.adaptive=tiad", r"loss.adaptive: got 'tiad'.*Did you mean 'taid'"),
    ("loss.divergence=todj", r"Did you mean 'todi'"),
    ("loss.todi_sharpness=0", r"loss.todi_sharpness: got 0.0; must be > 0"),
    ("loss.taid.t_start=1", r"loss.taid.t_start: got 1.0; must be in \[0, 1\)"),
    ("loss.taid.t_start=-0.1", r"loss.taid.t_start: got -0.1; must be >= 0.0"),
    ("loss.taid.t_end=0", r"loss.taid.t_end: got 0.0; must be in \(0, 1\]"),
    ("loss.taid.t_end=1.5", r"loss.taid.t_end: got 1.5; must be <= 1.0"),
    ("loss.taid.momentum=1", r"loss.taid.momentum: got 1.0; must be in \[0, 1\)"),
    ("loss.taid.rate=-1", r"loss.taid.rate: got -1.0; must be >= 0.0"),
    ("loss.taid.total_steps=0", r"loss.taid.total_steps: got 0; must be >= 1"),
    ("loss.taid.t_satrt=0.1", r"unknown key 'loss.taid.t_satrt'.*Did you mean 't_start'"),
])
def test_bad_values_are_refused_with_the_key_named(override: str, expected: str):
    with pytest.raises(UserError, match=expected):
        load_recipe(QUICKSTART, [override])


def test_taid_section_is_checked_resolved_and_fingerprinted_only_when_used():
    from distill.fingerprint import recipe_fingerprint

    with pytest.raises(UserError, match=r"loss.taid.t_start \(0.7\) must be below "
                                        r"loss.taid.t_end \(0.6\)"):
        load_recipe(QUICKSTART, ["loss.taid.t_start=0.7", "loss.taid.t_end=0.6"])
    recipe = load_recipe(QUICKSTART, ["train.max_steps=40", "loss.adaptive=taid",
                                      "loss.taid.rate=0.01"])
    assert recipe.loss.taid.total_steps is None  # null stays null, follows train.max_steps
    assert dump_recipe(_reload(recipe)) == dump_recipe(recipe)
    import losses

    strategy = losses.build_objective(recipe.loss, max_steps=40).strategy
    assert strategy.settings == losses.TaidSettings(0.4, 1.0, 0.01, 0.99, 40)
    assert recipe_fingerprint(recipe)["loss.taid.total_steps"] == 40
    # unused, the section and todi's sharpness change nothing a step computes: a run from
    # before they existed still resumes
    plain = recipe_fingerprint(load_recipe(QUICKSTART))
    assert not [k for k in plain if k.startswith("loss.taid") or k == "loss.todi_sharpness"]
    todi = recipe_fingerprint(load_recipe(QUICKSTART, ["loss.divergence=todi"]))
    assert todi["loss.todi_sharpness"] == 1.0


def test_unsafe_yaml_and_non_mapping_are_refused(tmp_path: Path):
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(unsafe)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_recipe(listing)


def test_cli_bad_input_exits_2_without_traceback(tmp_path: Path):
    for args, message in [
        (["run", str(tmp_path / "missing.yaml")], "recipe file not found"),
        (["run", str(QUICKSTART), "train.max_step=5"], "Did you mean 'max_steps'"),
        (["run", str(QUICKSTART), "train.eval_every=-1"], "train.eval_every: got -1"),
    ]:
        result = run_cli(*args, timeout=120)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_recipe_reference_doc_is_current():
    doc = (REPO / "docs" / "recipe-reference.md").read_text()
    assert reference_markdown(Recipe) in doc, \
        "docs/recipe-reference.md is stale: run `python -m distill.reference > docs/recipe-reference.md`"


def _float_keys(cls: type, prefix: str = "") -> list[str]:
    """Every float field of the schema, schedules' included, found by walking the dataclasses
    (a field added later is covered without this list changing)."""
    import dataclasses
    import typing

    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if inner == [float]:
            keys.append(f"{prefix}{f.name}")
        elif len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            keys += _float_keys(inner[0], f"{prefix}{f.name}.")
    return keys


def test_nan_and_infinities_are_refused_in_every_float_field():
    keys = _float_keys(Recipe)
    # 9 plain numbers (train.lr, data.validation_fraction, ...) and 5 schedules x 5 floats
    assert len(keys) >= 9 + 5 * 5 and "train.lr" in keys and "loss.temperature.end" in keys
    for key in keys:
        for text, shown in ((".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf")):
            with pytest.raises(UserError, match=rf"^{key}: got {shown}; must be a finite number"):
                load_recipe(QUICKSTART, [f"{key}={text}"])
    # nested in a mapping: the model's overrides
    with pytest.raises(UserError, match=r"^student.overrides.rms_norm_eps: got nan"):
        load_recipe(QUICKSTART, ["student.overrides.rms_norm_eps=.nan"])


def test_seed_is_one_numpy_and_torch_can_take():
    import numpy as np

    np.random.seed(2**32 - 1)          # what accelerate's set_seed calls, with torch's
    with pytest.raises(ValueError):
        np.random.seed(2**32)
    assert load_recipe(QUICKSTART, [f"seed={2**32 - 1}"]).seed == 4294967295
    with pytest.raises(UserError, match=r"^seed: got 4294967296; must be <= 4294967295"):
        load_recipe(QUICKSTART, ["seed=4294967296"])


def _alias_bomb(levels: int) -> str:
    """data.files whose level i lists level i-1 nine times: 9**levels strings in ~300 bytes."""
    lines = ["data:", "  files:", "    - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"    - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_yaml_anchors_and_aliases_are_refused_in_recipes_and_overrides(tmp_path: Path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(6))
    assert len(bomb.read_bytes()) < 500
    with pytest.raises(UserError) as error:
        load_recipe(bomb)
    assert str(error.value) == (f"{bomb}: line 3: YAML anchors and aliases (&l0) are not "
                                "allowed in a recipe; write the value out in full.")
    with pytest.raises(UserError, match=r"^override 'data.files': line 1: YAML anchors"):
        load_recipe(QUICKSTART, ["data.files=[&a x.txt, *a]"])


def test_messages_quote_at_most_a_few_hundred_characters_of_a_value():
    for override in ["data.source=" + "w" * 100_000,                   # a choice
                     "data.files=" + "[" * 1000 + "]" * 1000,          # a type
                     "data.vocab_size=" + "9" * 4000,                  # a range
                     "train.max_steps=" + "9" * 5000]:                 # past int() itself
        with pytest.raises(UserError) as error:
            load_recipe(QUICKSTART, [override])
        assert len(str(error.value)) < 500, str(error.value)[:1000]


def test_duplicate_keys_are_refused_with_their_line(tmp_path: Path):
    text = QUICKSTART.read_text()
    first = text.splitlines().index("train:") + 1
    twice = tmp_path / "twice.yaml"
    twice.write_text(text + "train:\n  max_steps: 5\n")
    second = len(text.splitlines()) + 1
    with pytest.raises(UserError, match=rf"duplicate key 'train' at line {second} "
                                        rf"\(first at line {first}\)"):
        load_recipe(twice)
    with pytest.raises(UserError, match="duplicate key 'hidden_size' at line 1"):
        load_recipe(QUICKSTART, ["student.overrides={hidden_size: 32, hidden_size: 64}"])


def test_empty_binary_recipes_and_an_empty_output_dir_are_refused(tmp_path: Path):
    for name, content in (("empty.yaml", ""), ("comments.yaml", "# nothing yet\n"),
                          ("braces.yaml", "{}\n")):
        (tmp_path / name).write_text(content)
        with pytest.raises(UserError, match=rf"^recipe {tmp_path / name} is empty"):
            load_recipe(tmp_path / name)
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(UserError, match=r"is not a text recipe: byte 0x89 at offset 0"):
        load_recipe(binary)
    for value in ("", "  "):
        with pytest.raises(UserError, match="^output_dir: got '.*'; name the directory"):
            load_recipe(QUICKSTART, [f"output_dir={value}"])
    result = run_cli("run", str(binary), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not a text recipe" in result.stderr
