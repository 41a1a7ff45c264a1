"""distill compare, distill eval, reports and model cards (the metrics themselves:
test_evaluation.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from distill.errors import UserError
from distill.metrics import read_metrics
from distill.report import summarise, table_csv, table_markdown, verdict
from tests.conftest import QUICKSTART, run_cli, tiny_overrides


def _fake_rows(final: float, soft: float) -> list[dict]:
    rows = [{"step": 0, "val_loss": 8.0, "val_ppl": math.exp(8.0)}]
    for step in (1, 2):
        rows.append({"step": step, "loss": 5.0, "ce": 5.0, "soft_weight": soft,
                     "temperature": 1.0, "tokens_per_s": 100.0 * step})
    rows.append({"step": 2, "val_loss": final, "val_ppl": math.exp(final)})
    return rows


def test_table_verdict_and_plot_from_known_metrics(tmp_path: Path):
    from distill.report import plot

    summaries = {"hard_only": summarise(_fake_rows(6.0, 0.0)),
                 "cosine": summarise(_fake_rows(5.5, 0.5))}
    assert summaries["cosine"]["best_val_loss"] == 5.5 and summaries["cosine"]["tokens_per_s"] == 150.0
    table = [{"variant": name, "val_loss": s["val_loss"], "best_val_loss": s["best_val_loss"],
              "val_ppl": s["val_ppl"], "kl_to_teacher": None, "top1_agreement": 0.5,
              "ece": 0.1, "tokens_per_s": s["tokens_per_s"], "wall_time_s": 1.0}
             for name, s in summaries.items()]
    markdown = table_markdown(table)
    assert "| cosine | 5.5000 | 5.5000 |" in markdown and "n/a" in markdown
    assert table_csv(table).splitlines()[0].startswith("variant,val_loss,best_val_loss,val_ppl")
    text = verdict(table)
    assert "**cosine** won" in text and "0.5000 below the runner-up hard_only" in text
    assert "Distillation helped" in text and "(8.3%)" in text
    plot(summaries, tmp_path / "plot.png")
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "plot.png")
    assert image.shape[0] > 500 and image.std() > 0.05  # a real picture, not a blank canvas


def _compare_recipe(tmp_path: Path, teacher: Path) -> Path:
    recipe = yaml.safe_load(Path(QUICKSTART).read_text())
    recipe["teacher"] = {"kind": "hf", "hf": {"name_or_path": str(teacher)},
                         "cached": {"cache_dir": str(tmp_path / "teacher-cache")}}
    recipe["data"]["tokenizer"] = str(teacher)
    recipe["compare"] = {"eval_batches": 1, "variants": [
        {"name": "hard_only", "overrides": {"loss.soft_weight": 0.0}},
        {"name": "cosine", "description": "cosine decay",
         "overrides": {"loss.soft_weight": {"kind": "cosine", "start": 0.9, "end": 0.1}}}]}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_compare_end_to_end_and_resume(finished_run: Path, tmp_path: Path, cache_dir: Path):
    recipe = _compare_recipe(tmp_path, finished_run / "student")
    out = tmp_path / "cmp"
    overrides = [o for o in tiny_overrides(out, cache_dir, **{
        "train.max_steps": 4, "train.eval_every": 2, "train.checkpoint_every": 0})
        if not o.startswith("teacher.")]
    result = run_cli("compare", str(recipe), *overrides, "--jobs", "2", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (out / "comparison.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].split(",")[:4] == ["variant", "val_loss", "best_val_loss",
                                                         "val_ppl"]
    hard, cosine = (dict(zip(rows[0].split(","), r.split(","))) for r in rows[1:])
    assert float(cosine["kl_to_teacher"]) >= 0 and 0 <= float(cosine["top1_agreement"]) <= 1
    for name in ("comparison.md", "comparison.png", "report.md"):
        assert (out / name).stat().st_size > 100
    report = (out / "report.md").read_text()
    assert "won with a final validation loss" in report and "### cosine" in report
    # every variant read the same shared cache (one cache directory)
    assert len([p for p in (tmp_path / "teacher-cache").iterdir() if not p.name.startswith(".")]) == 1
    card = (out / "variants" / "cosine" / "student" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "val_loss" in card

    # interrupted: one variant never finished. Running again keeps the other one.
    kept = out / "variants" / "hard_only" / "result.json"
    before = kept.stat().st_mtime_ns, (out / "variants" / "hard_only" / "log.txt").read_text()
    import shutil

    shutil.rmtree(out / "variants" / "cosine")
    again = run_cli("compare", str(recipe), *overrides, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 already finished" in again.stdout
    assert (kept.stat().st_mtime_ns, (out / "variants" / "hard_only" / "log.txt").read_text()) \
        == before
    assert (out / "variants" / "cosine" / "result.json").is_file()


def test_compare_refuses_unfair_or_bad_variants(finished_run: Path, tmp_path: Path):
    from distill.compare import plan

    recipe = _compare_recipe(tmp_path, finished_run / "student")
    data = yaml.safe_load(recipe.read_text())
    data["compare"]["variants"][1]["overrides"] = {"train.max_steps": 10}
    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="'train.max_steps' must be the same for every variant"):
        plan(str(recipe), [])
    data["compare"]["variants"][1]["overrides"] = {"loss.soft_weigth": 0.2}
    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"compare.variants\[1\] \(cosine\).*Did you mean 'soft_weight'"):
        plan(str(recipe), [])
    data["compare"]["variants"] = []
    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="lists no variants"):
        plan(str(recipe), [])


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
