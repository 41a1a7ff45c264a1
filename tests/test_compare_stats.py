"""distill compare's numbers, without training: statistics, transfer metrics, the paired
verdict, the dynamic/constant classification, the table and the plot. Every expected value
is worked out by hand in the test."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from distill.compare_classify import TOKEN_ADAPTIVE_DIVERGENCES, classify
from distill.compare_stats import (expert_max_share, gap_closed, mean_std, paired, summarise,
                                   tokens_to_match)
from distill.recipe import load_recipe
from distill.report_plot import loss_frame, mean_curve, plot
from distill.report_table import aggregate, cell, seed_rows, seeds_csv, table_csv, table_markdown
from distill.report_verdict import verdict
from tests.conftest import QUICKSTART


def test_mean_and_sample_standard_deviation():
    # deviations -0.2, 0, 0.2: sum of squares 0.08, over n - 1 = 2: 0.04, root 0.2
    mean, std = mean_std([5.0, 5.2, 5.4])
    assert mean == pytest.approx(5.2) and std == pytest.approx(0.2)
    assert mean_std([3.0]) == (3.0, None)


def test_gap_closed_and_expert_max_share():
    assert gap_closed(6.0, 5.5, 4.0) == pytest.approx(0.25)   # 0.5 of a gap of 2.0
    assert gap_closed(6.0, 6.0, 4.0) == 0.0                   # hard-only against itself
    assert gap_closed(6.0, 5.0, None) is None and gap_closed(6.0, 5.0, 6.0) is None
    assert expert_max_share([[0.25, 0.25, 0.5, 0.0], [0.1, 0.6, 0.2, 0.1]]) == 0.6
    assert expert_max_share(None) is None and expert_max_share([]) is None


def test_tokens_to_match_interpolates_between_evaluations():
    curve = [(0, 8.0), (1000, 6.0), (2000, 5.0)]
    # 5.5 lies halfway between 6.0 (1000 tokens) and 5.0 (2000 tokens)
    assert tokens_to_match(curve, 5.5) == pytest.approx(1500.0)
    assert tokens_to_match(curve, 6.0) == pytest.approx(1000.0)   # reached at an evaluation
    assert tokens_to_match(curve, 4.0) is None                    # not reached
    assert tokens_to_match(curve, 9.0) == 0.0                     # already at the start
    # the first crossing counts: 8 -> 5 crosses 5.5 at 2.5/3 of 100 tokens
    assert tokens_to_match([(0, 8.0), (100, 5.0), (200, 6.0), (300, 4.5)], 5.5) == \
        pytest.approx(250 / 3)


def test_summarise_reads_the_final_evaluation():
    rows = [{"step": 0, "tokens": 0, "val_loss": 8.0, "val_ppl": math.exp(8.0), "val_tokens": 62},
            {"step": 1, "tokens": 128, "loss": 5.0, "soft_weight": 0.5, "temperature": 1.0,
             "tokens_per_s": 100.0},
            {"step": 2, "tokens": 256, "loss": 4.0, "soft_weight": 0.4, "temperature": 1.0,
             "tokens_per_s": 200.0},
            {"step": 2, "tokens": 256, "val_loss": 6.0, "val_ppl": math.exp(6.0),
             "val_tokens": 62, "expert_load": [[0.75, 0.25]]}]
    s = summarise(rows)
    assert (s["val_loss"], s["best_val_loss"], s["tokens"], s["tokens_per_s"]) == \
        (6.0, 6.0, 256, 150.0)
    assert s["curve"] == [(0, 0, 8.0), (2, 256, 6.0)] and s["expert_load"] == [[0.75, 0.25]]


def _entry(name: str, kind: str, losses: list[float]) -> dict:
    return {"variant": name, "class": kind, "val_losses": losses}


def test_verdict_names_a_winner_only_beyond_twice_the_paired_standard_error():
    a = [5.0, 5.1, 5.2]
    # d = (0.1, 0.2, 0.3): mean 0.2, sd 0.1, SE = 0.1 / sqrt(3) = 0.05774, 2 SE = 0.1155
    clear = [x + d for x, d in zip(a, (0.1, 0.2, 0.3))]
    test = paired(a, clear)
    assert test.margin == pytest.approx(0.2) and test.se == pytest.approx(0.1 / math.sqrt(3))
    assert test.decided
    text = verdict([_entry("b", "dynamic", clear), _entry("a", "dynamic", a)], [0, 1, 2])
    assert "**a** wins" in text and "0.2000 below the runner-up b" in text
    assert "2·SE = 0.1155" in text
    # d = (0.3, -0.1, 0.1): mean 0.1, sd 0.2, SE = 0.2 / sqrt(3) = 0.1155, 2 SE = 0.2309
    noisy = [x + d for x, d in zip(a, (0.3, -0.1, 0.1))]
    assert not paired(a, noisy).decided
    text = verdict([_entry("a", "dynamic", a), _entry("b", "dynamic", noisy)], [0, 1, 2])
    assert "No winner: the leaders are tied within noise" in text
    assert "0.1000 below the runner-up b" in text and "2·SE = 0.2309" in text
    assert "**a** wins" not in text


def test_verdict_with_one_seed_says_there_is_no_estimate_of_noise():
    text = verdict([_entry("a", "constant", [5.0]), _entry("b", "dynamic", [5.2])], [0])
    assert "**a** has the lowest final validation loss (5.0000, 0.2000 below the runner-up b" \
        in text
    assert "no estimate of noise" in text and "compare.seeds" in text
    assert "**a** wins" not in text


def test_verdict_tests_distillation_and_dynamic_against_constant():
    hard = _entry("hard_only", "baseline", [6.0, 6.1, 6.2])
    cosine = _entry("cosine", "dynamic", [5.5, 5.6, 5.7])       # d = 0.5 each: SE 0
    # cosine against constant: d = (0.1, -0.05, 0.05), mean 0.0333, sd 0.0764,
    # SE 0.0441, 2 SE = 0.0882: tied
    constant = _entry("constant", "constant", [5.6, 5.55, 5.75])
    text = verdict([hard, cosine, constant], [0, 1, 2])
    assert ("Distillation against hard labels: the best distilled variant, cosine (5.6000), "
            "ends 0.5000 (8.2%) below the hard-only baseline, hard_only (6.1000); more than "
            "2·SE = 0.0000. Distillation helped.") in text
    assert ("Dynamic against constant weighting: the best dynamic variant, cosine (5.6000), "
            "ends 0.0333") in text and "within 2·SE = 0.0882: tied within noise" in text
    text = verdict([cosine, constant], [0, 1, 2])
    assert "no variant trains on hard labels alone" in text
    worse = _entry("cosine", "dynamic", [6.5, 6.6, 6.7])  # 0.5 above hard-only every seed
    assert "Distillation did not help." in verdict([hard, worse], [0, 1, 2])
    text = verdict([hard, constant], [0, 1, 2])
    assert "Dynamic against constant weighting: no dynamic variant ran." in text


@pytest.mark.parametrize("overrides, expected", [
    ({"loss.soft_weight": 0.0}, "baseline"),
    ({"loss.soft_weight": {"kind": "cosine", "start": 0.0, "end": 0.0}}, "baseline"),
    ({"loss.soft_weight": 0.0, "loss.adaptive": "teacher_confidence"}, "baseline"),
    ({"loss.soft_weight": 0.5}, "constant"),
    ({"loss.soft_weight": {"kind": "linear", "start": 0.5, "end": 0.5}}, "constant"),
    # a constant shape stays at start whatever end says
    ({"loss.soft_weight": {"kind": "constant", "start": 0.5, "end": 0.1}}, "constant"),
    ({"loss.soft_weight": 0.7, "loss.hard_weight": 0.3, "loss.temperature": 2.0}, "constant"),
    ({"loss.soft_weight": {"kind": "cosine", "start": 0.9, "end": 0.1}}, "dynamic"),
    ({"loss.soft_weight": {"start": 0.5, "warmup_steps": 5, "warmup_start": 0.0}}, "dynamic"),
    ({"loss.soft_weight": 0.5, "loss.hard_weight": {"kind": "linear", "start": 1.0,
                                                    "end": 0.5}}, "dynamic"),
    ({"loss.soft_weight": 0.5, "loss.adaptive": "loss_balance"}, "dynamic"),
    ({"loss.soft_weight": 0.5, "loss.divergence": "akl"}, "dynamic"),
])
def test_classification_reads_the_resolved_recipe(overrides: dict, expected: str):
    recipe = load_recipe(QUICKSTART, [f"{k}={v}" for k, v in overrides.items()])
    assert classify(recipe)[0] == expected


def test_token_adaptive_divergences_are_dynamic_even_before_they_are_registered():
    assert TOKEN_ADAPTIVE_DIVERGENCES == {"akl", "todi"}
    recipe = load_recipe(QUICKSTART, ["loss.soft_weight=0.5"])
    todi = dataclasses.replace(recipe, loss=dataclasses.replace(recipe.loss, divergence="todi"))
    assert classify(todi) == ("dynamic", "token-adaptive divergence 'todi'")


def _fake_plan(tmp_path: Path):
    hard = SimpleNamespace(name="hard_only", kind="baseline")
    cosine = SimpleNamespace(name="cosine", kind="dynamic")
    runs = [SimpleNamespace(variant=v, seed=s, directory=tmp_path / v.name / f"seed-{s}")
            for s in (0, 1) for v in (hard, cosine)]
    return SimpleNamespace(variants=[hard, cosine], runs=runs, seeds=[0, 1])


def _summary(curve: list[tuple[int, int, float]], expert_load=None) -> dict:
    return {"val_loss": curve[-1][2], "best_val_loss": min(c[2] for c in curve),
            "val_ppl": math.exp(curve[-1][2]), "val_tokens": 62, "tokens": curve[-1][1],
            "tokens_per_s": 100.0, "expert_load": expert_load, "curve": curve,
            "soft_weight": [(1, 0.5), (2, 0.5)], "temperature": [(1, 1.0), (2, 1.0)]}


def test_runs_pair_with_the_hard_only_run_of_their_seed(tmp_path: Path):
    plan = _fake_plan(tmp_path)
    curves = {("hard_only", 0): [(0, 0, 8.0), (2, 200, 6.5), (4, 400, 6.0)],
              ("cosine", 0): [(0, 0, 8.0), (2, 200, 6.0), (4, 400, 5.5)],
              ("hard_only", 1): [(0, 0, 8.0), (2, 200, 6.6), (4, 400, 6.2)],
              ("cosine", 1): [(0, 0, 8.0), (2, 200, 6.4), (4, 400, 6.3)]}
    summaries = {str(r.directory): _summary(curves[(r.variant.name, r.seed)],
                                            [[0.7, 0.1, 0.1, 0.1]]) for r in plan.runs}
    final = SimpleNamespace(teacher_loss=4.0, runs={
        str(r.directory): {"kl_to_teacher": 0.5, "top1_agreement": 0.4, "ece": 0.1,
                           "experts": 4, "experts_per_token": 1} for r in plan.runs})
    results = {str(r.directory): {"wall_time_s": 10.0} for r in plan.runs}
    rows = seed_rows(plan, summaries, final, results)
    cosine0, cosine1 = rows[1], rows[3]
    # seed 0: (6.0 - 5.5) / (6.0 - 4.0) = 0.25; reaches 6.0 at 200 of hard-only's 400 tokens
    assert cosine0["gap_closed"] == pytest.approx(0.25)
    assert cosine0["tokens_to_match"] == pytest.approx(0.5)
    # seed 1: (6.2 - 6.3) / (6.2 - 4.0) < 0; never reaches 6.2
    assert cosine1["gap_closed"] == pytest.approx(-0.1 / 2.2)
    assert cosine1["tokens_to_match"] is None and cosine1["tokens_to_match_reached"] is False
    assert rows[0]["gap_closed"] == 0.0 and rows[0]["expert_max_share"] == 0.7
    table = aggregate(plan, rows)
    assert table[1]["val_losses"] == [5.5, 6.3]
    # mean 5.9, sd = |5.5 - 6.3| / sqrt(2) = 0.5657
    assert cell(table[1], "val_loss") == "5.9000 ± 0.5657"
    assert cell(table[1], "tokens_to_match") == "not reached in 1 of 2 seeds"
    assert cell(table[0], "tokens_to_match") == "1.00 ± 0.00"  # hard-only meets itself at the end
    markdown = table_markdown(table, teacher_loss=4.0)
    assert markdown.splitlines()[0].startswith("| variant | class | val_loss | best_val_loss")
    assert "| cosine | dynamic | 5.9000 ± 0.5657 |" in markdown
    assert markdown.splitlines()[-1].startswith("| teacher | teacher | 4.0000 |  | 54.5982 |")
    header = table_csv(table, 4.0).splitlines()[0]
    assert header.startswith("variant,class,seeds,val_loss_mean,val_loss_std,best_val_loss_mean")
    assert table_csv(table, 4.0).splitlines()[-1].startswith("teacher,teacher,,4.0,")
    per_seed = seeds_csv(rows).splitlines()
    assert len(per_seed) == 5 and per_seed[0].startswith("variant,class,seed,val_loss")


def test_plot_means_over_seeds_with_a_band_framed_where_variants_differ(tmp_path: Path):
    # two seeds: at step 0 mean 8.1, sd = 0.2 / sqrt(2); at step 2 mean 5.5, sd 1 / sqrt(2)
    curve = mean_curve([[(0, 8.0), (2, 6.0)], [(0, 8.2), (2, 5.0)]])
    assert [c[0] for c in curve] == [0, 2]
    assert [x for c in curve for x in c[1:]] == pytest.approx(
        [8.1, 0.2 / math.sqrt(2), 5.5, 1 / math.sqrt(2)])
    # step 0 is left out: 4.9 .. 5.6, with 10% of that span (0.07) either side
    frame = loss_frame({"a": [(0, 8.0, 0.0), (2, 5.5, 0.1), (4, 5.0, 0.1)]})
    assert frame == pytest.approx((4.83, 5.67))
    runs = {"hard_only": [_summary([(0, 0, 8.0), (2, 200, 6.5), (4, 400, 6.0)]),
                          _summary([(0, 0, 8.1), (2, 200, 6.6), (4, 400, 6.2)])],
            "cosine": [_summary([(0, 0, 8.0), (2, 200, 6.0), (4, 400, 5.5)]),
                       _summary([(0, 0, 8.1), (2, 200, 6.2), (4, 400, 5.8)])]}
    plot(runs, tmp_path / "plot.png", teacher_loss=4.0)
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "plot.png")
    assert image.shape[0] > 500 and image.std() > 0.05  # a real picture, not a blank canvas
