"""distill compare end to end (seeds, resuming, staleness, --only, the teacher), its command
line, and distill eval (the report's numbers: test_compare_stats.py; the metrics themselves:
test_evaluation.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from distill.errors import UserError
from distill.metrics import read_metrics
from tests.conftest import QUICKSTART, run_cli, tiny_overrides


def _compare_recipe(tmp_path: Path, teacher: Path, **compare) -> Path:
    recipe = yaml.safe_load(Path(QUICKSTART).read_text())
    recipe["teacher"] = {"kind": "hf", "hf": {"name_or_path": str(teacher)},
                         "cached": {"cache_dir": str(tmp_path / "teacher-cache")}}
    recipe["data"]["tokenizer"] = str(teacher)
    recipe["compare"] = {"variants": [
        {"name": "hard_only", "overrides": {"loss.soft_weight": 0.0}},
        {"name": "cosine", "description": "cosine decay",
         "overrides": {"loss.soft_weight": {"kind": "cosine", "start": 0.9, "end": 0.1}}}],
        **compare}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _tiny(out: Path, cache_dir: Path, **extra) -> list[str]:
    return [o for o in tiny_overrides(out, cache_dir, **{
        "train.max_steps": 4, "train.eval_every": 2, "train.checkpoint_every": 0, **extra})
        if not o.startswith("teacher.")]


def test_compare_end_to_end_over_seeds_resume_and_staleness(finished_run: Path, tmp_path: Path,
                                                            cache_dir: Path):
    recipe = _compare_recipe(tmp_path, finished_run / "student", seeds=[0, 1])
    out = tmp_path / "cmp"
    overrides = _tiny(out, cache_dir)
    # overrides after the flags as well as before them
    result = run_cli("compare", str(recipe), *overrides[:3], "--jobs", "2", *overrides[3:],
                     timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("hard_only", "cosine"):
        for seed in (0, 1):
            record = json.loads((out / "variants" / name / f"seed-{seed}" / "result.json")
                                .read_text())
            assert record["seed"] == seed and record["recipe"]["seed"] == seed
            assert record["recipe"]["train"]["max_steps"] == 4
    assert "run 4 of 4: cosine seed 1" in result.stdout
    rows = (out / "comparison.csv").read_text().splitlines()
    assert rows[0].startswith("variant,class,seeds,val_loss_mean,val_loss_std")
    assert [r.split(",")[:3] for r in rows[1:]] == [["hard_only", "baseline", "2"],
                                                    ["cosine", "dynamic", "2"],
                                                    ["teacher", "teacher", ""]]
    cosine = dict(zip(rows[0].split(","), rows[2].split(",")))
    assert float(cosine["kl_to_teacher_mean"]) >= 0 and float(cosine["val_loss_std"]) >= 0
    assert 0 <= float(cosine["top1_agreement_mean"]) <= 1
    assert float(cosine["expert_max_share_mean"]) >= 0.25  # 4 experts: at least balanced
    assert len((out / "comparison_seeds.csv").read_text().splitlines()) == 5
    assert " ± " in (out / "comparison.md").read_text()
    for name in ("comparison.png", "report.md"):
        assert (out / name).stat().st_size > 100
    report = (out / "report.md").read_text()
    assert "2·SE" in report and "### cosine" in report and "Class: dynamic" in report
    assert "`kl_to_teacher`, `top1_agreement` and `ece` on the same positions" in report
    assert "distill compare " + str(recipe) + " " + " ".join(overrides) in report
    assert "--jobs" not in report
    # every run read the same shared cache (one cache directory)
    assert len([p for p in (tmp_path / "teacher-cache").iterdir()
                if not p.name.startswith(".")]) == 1
    card = (out / "variants" / "cosine" / "seed-0" / "student" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "val_loss" in card

    # interrupted: one run never finished. Running again keeps the other three.
    kept = out / "variants" / "hard_only" / "seed-1"
    before = (kept / "result.json").stat().st_mtime_ns, (kept / "log.txt").read_text()
    import shutil

    shutil.rmtree(out / "variants" / "cosine" / "seed-1")
    again = run_cli("compare", str(recipe), *overrides, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 already finished" in again.stdout and "run 4 of 4: cosine seed 1" in again.stdout
    assert ((kept / "result.json").stat().st_mtime_ns, (kept / "log.txt").read_text()) == before

    # other settings: refused before any work, the runs and the key named
    changed = run_cli("compare", str(recipe), *overrides, "train.lr=0.02")
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert "variants/hard_only/seed-0, variants/cosine/seed-0, variants/hard_only/seed-1, " \
           "variants/cosine/seed-1 (finished):" in changed.stderr
    assert "train.lr: 0.01 in the finished run, 0.02 asked for" in changed.stderr
    assert "--rerun-changed" in changed.stderr
    assert ((kept / "result.json").stat().st_mtime_ns, (kept / "log.txt").read_text()) == before

    # --rerun-changed on a subset (--only), one seed: just that run is deleted and rerun
    subset = run_cli("compare", str(recipe), "--only", "cosine", "--rerun-changed",
                     *overrides, "train.lr=0.02", "compare.seeds=[0]", timeout=600)
    assert subset.returncode == 0, subset.stderr[-3000:]
    assert "removing" in subset.stdout and "run 1 of 1: cosine seed 0" in subset.stdout
    record = json.loads((out / "variants" / "cosine" / "seed-0" / "result.json").read_text())
    assert record["recipe"]["train"]["lr"] == 0.02
    assert ((kept / "result.json").stat().st_mtime_ns, (kept / "log.txt").read_text()) == before
    report = (out / "report.md").read_text()
    assert "Only **cosine** ran" in report and "### hard_only" not in report
    assert "no variant trains on hard labels alone" in report
    assert "train.lr=0.02 'compare.seeds=[0]' --only cosine\n" in report


def test_compare_refuses_unfair_or_bad_variants(tmp_path: Path):
    from distill.compare import plan
    from distill.compare_plan import make_plan

    recipe = _compare_recipe(tmp_path, tmp_path / "teacher")
    data = yaml.safe_load(recipe.read_text())
    for key in ("train.max_steps", "train.eval_batches"):
        data["compare"]["variants"][1]["overrides"] = {key: 10}
        recipe.write_text(yaml.safe_dump(data))
        with pytest.raises(UserError, match=f"'{key}' must be the same for every variant"):
            plan(str(recipe), [])
    data["compare"]["variants"][1]["overrides"] = {"loss.soft_weigth": 0.2}
    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError,
                       match=r"compare.variants\[1\] \(cosine\).*Did you mean 'soft_weight'"):
        plan(str(recipe), [])
    data["compare"]["variants"][1]["overrides"] = {}
    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"--only: no variant named 'cosin'.*Did you mean 'cosine'"):
        make_plan(str(recipe), [], only=["cosin"])
    for seeds, message in (("3", "give a list of seeds"), ("[1, 1]", "lists a seed twice"),
                           ("[]", "the list is empty"), ("[-1]", "each seed must be in")):
        with pytest.raises(UserError, match=message):
            make_plan(str(recipe), [f"compare.seeds={seeds}"])
    with pytest.raises(UserError, match="no compare.teacher_recipe"):
        make_plan(str(recipe), ["compare.teacher_overrides={train.max_steps: 5}"])
    data["compare"]["variants"] = []
    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="lists no variants"):
        plan(str(recipe), [])


def test_seeds_layout_and_staleness_of_finished_unfinished_and_older_runs(tmp_path: Path):
    from distill.compare_plan import make_plan
    from distill.compare_state import canonical, find_stale, refusal, remove
    from distill.recipe import dump_recipe

    recipe = _compare_recipe(tmp_path, tmp_path / "teacher", seeds=[3, 5])
    out = tmp_path / "out"
    plan = make_plan(str(recipe), [f"output_dir={out}", "train.max_steps=100"])
    assert [(r.variant.name, r.seed, r.directory.relative_to(out).as_posix(), r.recipe.seed,
             r.recipe.output_dir) for r in plan.runs][:3] == [
        ("hard_only", 3, "variants/hard_only/seed-3", 3, str(out / "variants/hard_only/seed-3")),
        ("cosine", 3, "variants/cosine/seed-3", 3, str(out / "variants/cosine/seed-3")),
        ("hard_only", 5, "variants/hard_only/seed-5", 5, str(out / "variants/hard_only/seed-5"))]
    assert find_stale(plan) == []
    finished, unfinished = plan.runs[0], plan.runs[1]
    # a finished run of the same recipe is reused; of another, refused with the key named
    finished.directory.mkdir(parents=True)
    record = {"recipe": canonical(finished.recipe), "teacher_recipe": None}
    (finished.directory / "result.json").write_text(json.dumps(record))
    assert find_stale(plan) == []
    record["recipe"]["train"]["max_steps"] = 60
    (finished.directory / "result.json").write_text(json.dumps(record))
    unfinished.directory.mkdir(parents=True)
    (unfinished.directory / "recipe.yaml").write_text(dump_recipe(unfinished.recipe))
    assert find_stale(plan)[0].changes == ["train.max_steps: 60 in the finished run, 100 "
                                           "asked for"]
    # an unfinished run is compared by its recipe.yaml
    other = make_plan(str(recipe), [f"output_dir={out}", "train.max_steps=100", "train.lr=0.5"])
    stale = find_stale(other)
    assert [(s.directory.name, s.state) for s in stale] == [("seed-3", "finished"),
                                                            ("seed-3", "unfinished")]
    assert "train.lr: 0.003 in the unfinished run, 0.5 asked for" in stale[1].changes
    message = str(refusal(stale, out))
    assert "variants/hard_only/seed-3 (finished):" in message
    assert "variants/cosine/seed-3 (unfinished):" in message and "--rerun-changed" in message
    # a run in the layout before seeds is not read as one of them
    (out / "variants" / "hard_only" / "metrics.jsonl").write_text("{}\n")
    assert find_stale(other)[0].state == "older layout"
    remove(find_stale(other), out)
    assert not (out / "variants" / "hard_only").exists()
    assert not unfinished.directory.exists() and find_stale(other) == []


def test_the_teacher_is_reused_only_while_its_recipe_is_unchanged(tmp_path: Path, capsys):
    from distill.compare import _train_teacher
    from distill.compare_plan import make_plan
    from distill.compare_state import canonical, find_stale
    from distill.recipe import dump_recipe
    from distill.report import _teacher_section
    from distill.compare_eval import FinalEval

    recipe = _compare_recipe(tmp_path, tmp_path / "unused", teacher_recipe=QUICKSTART,
                             teacher_overrides={"train.max_steps": 7, "seed": 4})
    out = tmp_path / "out"
    plan = make_plan(str(recipe), [f"output_dir={out}"])
    teacher = plan.teacher
    assert (teacher.recipe.train.max_steps, teacher.recipe.seed, teacher.recipe.output_dir) == \
        (7, 4, str(out / "teacher"))
    assert plan.runs[0].recipe.teacher.hf.name_or_path == str(out / "teacher" / "student")
    # a finished teacher of the same resolved recipe: reused, nothing trained
    (teacher.directory / "student").mkdir(parents=True)
    (teacher.directory / "student" / "config.json").write_text("{}")
    (teacher.directory / "config.yaml").write_text(dump_recipe(teacher.recipe))
    assert find_stale(plan) == []
    _train_teacher(teacher)
    assert "teacher: reusing" in capsys.readouterr().out
    section = _teacher_section(plan, FinalEval(teacher="`t`, frozen", teacher_loss=3.0,
                                               teacher_tokens=62))
    assert f"Trained once by `{QUICKSTART}`" in section and "train.max_steps: 7" in section
    assert "Every run learns from it: `t`, frozen. Its validation loss: 3.0000" in section
    # the teacher asked for now differs: refused, and so is every run it taught
    run = plan.runs[0]
    run.directory.mkdir(parents=True)
    (run.directory / "result.json").write_text(json.dumps(
        {"recipe": canonical(run.recipe), "teacher_recipe": canonical(teacher.recipe)}))
    changed = make_plan(str(recipe), [f"output_dir={out}", "compare.teacher_overrides="
                                      "{train.max_steps: 8, seed: 4}"])
    stale = find_stale(changed)
    assert [(s.directory.name, s.changes) for s in stale] == [
        ("teacher", ["train.max_steps: 7 in the finished run, 8 asked for"]),
        ("seed-0", ["teacher recipe: train.max_steps: 7 in the finished run, 8 asked for"])]


def test_reproduce_line_and_overrides_after_flags(tmp_path: Path):
    from distill.cli import parse_args
    from distill.compare_plan import make_plan
    from distill.report import reproduce_command

    recipe = _compare_recipe(tmp_path, tmp_path / "teacher")
    args = parse_args(["compare", str(recipe), "seed=1", "--jobs", "2", "train.max_steps=100",
                       "--only", "cosine", "output_dir=runs/a b", "--rerun-changed"])
    assert (args.overrides, args.jobs, args.only, args.rerun_changed) == (
        ["seed=1", "train.max_steps=100", "output_dir=runs/a b"], 2, ["cosine"], True)
    plan = make_plan(str(recipe), args.overrides, args.only)
    assert [r.label for r in plan.runs] == ["cosine seed 1"]
    assert reproduce_command(plan) == (f"distill compare {recipe} seed=1 train.max_steps=100 "
                                       "'output_dir=runs/a b' --only cosine")
    with pytest.raises(SystemExit):
        parse_args(["compare", str(recipe), "--jobs", "2", "--bogus"])


def test_eval_command_on_a_run_and_on_a_model(finished_run: Path, tmp_path: Path):
    result = run_cli("eval", str(finished_run), "--teacher", str(finished_run / "student"),
                     "--batches", "2", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout)
    assert metrics["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)  # itself as teacher
    assert metrics["top1_agreement"] == 1.0 and metrics["tokens"] > 0
    assert 0 <= metrics["ece"] <= 1 and metrics["val_ppl"] == pytest.approx(
        math.exp(metrics["val_loss"]), rel=1e-6)
    # the same evaluator as the training loop's: its final row, on the same 2 batches
    final = [r for r in read_metrics(finished_run / "metrics.jsonl") if "val_loss" in r][-1]
    assert metrics["tokens"] == final["val_tokens"]
    assert metrics["val_loss"] == pytest.approx(final["val_loss"], rel=1e-5)
    assert metrics["ece"] == pytest.approx(final["ece"], rel=1e-4, abs=1e-6)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(300)))
    plain = run_cli("eval", str(finished_run / "student"), "--data", str(text_file), "--json")
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "kl_to_teacher" not in json.loads(plain.stdout)
    missing = run_cli("eval", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "neither a run directory" in missing.stderr
    zero = run_cli("eval", str(finished_run), "--batches", "0")
    assert zero.returncode == 2 and "--batches: got 0" in zero.stderr


def test_eval_of_truncated_weights_exits_2_with_the_file_named(finished_run: Path,
                                                               tmp_path: Path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(finished_run / "student", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a cut-off copy
    text_file = tmp_path / "notes.txt"
    text_file.write_text("\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(300)))
    result = run_cli("eval", str(model), "--data", str(text_file))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"cannot read the weights of {model} (SafetensorError" in result.stderr


def test_an_interrupted_variant_resumes_from_a_checkpoint_or_starts_over(tmp_path: Path):
    """--resume refuses a run without a checkpoint, so a variant stopped before its first
    one starts over (its partial log removed) instead of failing."""
    from distill.compare import _resume_args

    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "val_loss": 6.0}\n')
    assert _resume_args(tmp_path) == [] and not (tmp_path / "metrics.jsonl").exists()
    checkpoint = tmp_path / "checkpoints" / "step-00000003"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"step": 3}')
    assert _resume_args(tmp_path) == ["--resume"]
