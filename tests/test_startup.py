"""Start-up: the switches that turn evaluation off (train.eval_at_start, train.eval_at_end,
with train.eval_every: 0), what a run without evaluation still writes and says, and the time
to first step it prints and logs (its format and bookkeeping; no test times anything)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill.cli import _validation_text
from distill.compare_plan import make_plan
from distill.errors import UserError
from distill.metrics import read_metrics
from distill.startup import StartupClock, process_age_s
from distill.summary import Counts, startup_lines
from distill.train import RunResult
from tests.conftest import QUICKSTART, run_cli, tiny_overrides


def _run(out: Path, cache_dir: Path, **extra):
    result = run_cli("run", QUICKSTART, *tiny_overrides(out, cache_dir, **{
        "train.max_steps": 4, "train.checkpoint_every": 2, **extra}))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_a_run_with_evaluation_off_evaluates_nothing_and_still_finishes(tmp_path, cache_dir):
    out = tmp_path / "run"
    result = _run(out, cache_dir, **{"train.eval_every": 0, "train.eval_at_start": "false",
                                     "train.eval_at_end": "false"})
    rows = read_metrics(out / "metrics.jsonl")
    assert not [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # the time to first step: in the first row only, and on one line of the run's output
    assert rows[0]["startup_s"] > 0 and not any("startup_s" in r for r in rows[1:])
    printed = result.stdout + result.stderr
    assert "distill: evaluation off (train.eval_every: 0, train.eval_at_start: false, " \
           "train.eval_at_end: false)" in printed
    first = [line for line in printed.splitlines() if line.startswith("distill: first step after")]
    assert len(first) == 1
    assert all(f"{phase} " in first[0] for phase in ("launch", "recipe", "data", "models"))
    assert "evaluation" not in first[0]  # nothing evaluated before the first step
    assert result.stdout.splitlines()[-1] == \
        f"done: 4 steps, no validation loss (train.eval_at_end: false); outputs in {out}"
    # saved whole: the student with its card, the last checkpoint, the plot
    assert (out / "student" / "config.json").is_file()
    card = (out / "student" / "README.md").read_text()
    assert "| val_loss | not evaluated (train.eval_at_end: false) |" in card
    assert "val_ppl" not in card
    assert (out / "checkpoints" / "step-00000004").is_dir() and (out / "metrics.png").is_file()


def test_no_final_evaluation_leaves_earlier_ones_out_of_the_final_figures(tmp_path, cache_dir):
    out = tmp_path / "run"
    result = _run(out, cache_dir, **{"train.eval_every": 2, "train.eval_at_end": "false"})
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r]
    # step 0 and step 2; step 4 is the last step, whose evaluation is the final one: off
    assert [r["step"] for r in evals] == [0, 2]
    start = evals[0]["val_loss"]
    assert result.stdout.splitlines()[-1] == (
        f"done: 4 steps, student validation loss {start:.4f} at the start, no final "
        f"evaluation (train.eval_at_end: false); outputs in {out}")
    card = (out / "student" / "README.md").read_text()
    # step 2's figures are not the final ones: the card does not show them as such
    assert "| val_loss | not evaluated (train.eval_at_end: false) |" in card
    assert f"{evals[1]['val_loss']:.4f}" not in card


def test_the_final_line_says_what_was_evaluated():
    def text(first, final):
        return _validation_text(RunResult(Path("out"), first, final, 3))

    assert text(5.0, 4.25) == "student validation loss 5.0000 -> 4.2500"
    assert text(None, 4.25) == "student validation loss 4.2500"  # resumed, or no start eval
    assert text(5.0, None) == ("student validation loss 5.0000 at the start, no final "
                               "evaluation (train.eval_at_end: false)")
    assert text(None, None) == "no validation loss (train.eval_at_end: false)"


def _summary_last(**changes) -> str:
    values = dict(device="cpu", processes=1, mixed_precision="no", student=Counts(10),
                  student_name="`M`", teacher_line="none", teacher=None, micro_batch_size=4,
                  grad_accum_steps=1, block_size=32, max_steps=100, start_step=0,
                  train_blocks=400, validation_blocks=50, eval_every=25, eval_batches=None,
                  eval_batch_size=16)
    return startup_lines(**{**values, **changes})[-1]


def test_the_summary_lists_only_the_evaluations_that_run():
    assert _summary_last() == \
        "evaluation at step 0, every 25 steps and at the end, on all 50 validation blocks"
    assert _summary_last(eval_at_start=False) == \
        "evaluation every 25 steps and at the end, on all 50 validation blocks"
    assert _summary_last(eval_at_end=False, eval_every=0) == \
        "evaluation at step 0, on all 50 validation blocks"
    assert _summary_last(eval_at_start=False, eval_at_end=False) == \
        "evaluation every 25 steps, on all 50 validation blocks"
    assert _summary_last(eval_at_start=False, eval_at_end=False, eval_every=0) == (
        "evaluation off (train.eval_every: 0, train.eval_at_start: false, "
        "train.eval_at_end: false)")


def test_compare_refuses_a_recipe_without_the_final_evaluation(tmp_path):
    recipe = yaml.safe_load(Path(QUICKSTART).read_text())
    recipe["compare"] = {"variants": [{"name": "a", "overrides": {"loss.soft_weight": 0.0}},
                                      {"name": "b", "overrides": {"loss.soft_weight": 0.5}}]}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(UserError, match=r"train.eval_at_end: false, but compare ranks"):
        make_plan(str(path), ["train.eval_at_end=false"])
    # nor may one variant turn it off: every variant shares it
    recipe["compare"]["variants"][1]["overrides"]["train.eval_at_end"] = False
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(UserError, match=r"'train.eval_at_end' must be the same for every"):
        make_plan(str(path))


def test_the_startup_line_adds_up_its_phases():
    """A clock made at 100.0 s with a process 2.5 s old; phases of 1.5 s (a note) and
    0.3 s; the first step at 104.0 s: 2.5 + 4.0 = 6.5 s in all, 4.0 - 1.8 = 2.2 s 'other'."""
    now = iter([100.0, 100.5, 102.0, 102.0, 102.3, 104.0, 104.0, 104.0])
    clock = StartupClock(2.5, now=lambda: next(now))
    with clock.phase("data") as phase:
        phase["note"] = "from cache"
    with clock.phase("models"):
        pass
    assert clock.line() == ("first step after 6.5 s (launch 2.5 s, data 1.5 s from cache, "
                            "models 0.3 s, other 2.2 s)")
    assert clock.total_s() == pytest.approx(6.5)


def test_the_process_age_is_positive():
    age = process_age_s()
    assert age is not None and age > 0  # psutil knows this process: it started before now


def test_without_the_process_age_the_line_counts_from_run():
    now = iter([10.0, 13.0, 13.0])
    clock = StartupClock(None, now=lambda: next(now))
    assert clock.line() == "first step after 3.0 s of run() (other 3.0 s)"
