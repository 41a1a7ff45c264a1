"""The comparison's table: one row per run (seed), then one per variant with the mean and
standard deviation over seeds; rendered as markdown (terminal, comparison.md, report.md)
and CSV (comparison.csv per variant, comparison_seeds.csv per run)."""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Sequence

from distill.compare_classify import BASELINE
from distill.compare_stats import expert_max_share, gap_closed, mean_std, tokens_to_match

METRICS = ("val_loss", "best_val_loss", "val_ppl", "gap_closed", "tokens_to_match",
           "expert_max_share", "kl_to_teacher", "top1_agreement", "ece", "tokens_per_s",
           "wall_time_s")
COLUMNS = ("variant", "class", *METRICS)
_FORMATS = {"gap_closed": "{:.3f}", "tokens_to_match": "{:.2f}", "expert_max_share": "{:.3f}",
            "tokens_per_s": "{:.0f}", "wall_time_s": "{:.1f}"}


def seed_rows(plan, summaries: dict[str, dict[str, Any]], final,
              results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run. The transfer metrics pair each run with the hard-only run of the
    same seed (the first baseline variant; None where there is none)."""
    baseline = next((v for v in plan.variants if v.kind == BASELINE), None)
    by_key = {(run.variant.name, run.seed): str(run.directory) for run in plan.runs}
    rows = []
    for run in plan.runs:
        key = str(run.directory)
        summary, scored = summaries[key], final.runs[key]
        row: dict[str, Any] = {
            "variant": run.variant.name, "class": run.variant.kind, "seed": run.seed,
            "val_loss": summary["val_loss"], "best_val_loss": summary["best_val_loss"],
            "val_ppl": summary["val_ppl"], "val_tokens": summary["val_tokens"],
            "gap_closed": None, "tokens_to_match": None,
            "tokens_to_match_reached": None,
            "expert_max_share": expert_max_share(summary["expert_load"]),
            "kl_to_teacher": scored.get("kl_to_teacher"),
            "top1_agreement": scored.get("top1_agreement"), "ece": scored.get("ece"),
            "tokens_per_s": summary["tokens_per_s"],
            "wall_time_s": results[key].get("wall_time_s"),
            "experts": scored.get("experts"), "experts_per_token": scored.get("experts_per_token")}
        if baseline is not None:
            hard = summaries[by_key[(baseline.name, run.seed)]]
            row["gap_closed"] = gap_closed(hard["val_loss"], summary["val_loss"],
                                           final.teacher_loss)
            matched = tokens_to_match([(t, loss) for _, t, loss in summary["curve"]],
                                      hard["val_loss"])
            row["tokens_to_match_reached"] = matched is not None
            if matched is not None and hard["tokens"]:
                row["tokens_to_match"] = matched / hard["tokens"]
        rows.append(row)
    return rows


def aggregate(plan, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant: each metric as (mean, std over seeds), None where any seed has
    none. ``tokens_to_match`` is None unless every seed reached hard-only's loss;
    ``tokens_to_match_reached`` counts the seeds that did."""
    table = []
    for variant in plan.variants:
        own = [r for r in rows if r["variant"] == variant.name]
        entry: dict[str, Any] = {"variant": variant.name, "class": variant.kind,
                                 "seeds": len(own), "val_losses": [r["val_loss"] for r in own]}
        for metric in METRICS:
            values = [r[metric] for r in own if r[metric] is not None]
            entry[metric] = mean_std(values) if values and len(values) == len(own) else None
        reached = [r["tokens_to_match_reached"] for r in own]
        entry["tokens_to_match_reached"] = None if None in reached else sum(reached)
        table.append(entry)
    return table


def _number(metric: str, value: float) -> str:
    return _FORMATS.get(metric, "{:.4f}").format(value)


def cell(entry: dict[str, Any], metric: str) -> str:
    """``mean ± std`` (a single value with one seed), ``n/a``, or for tokens_to_match how
    many seeds did not reach hard-only's loss."""
    if metric in ("variant", "class"):
        return str(entry[metric])
    if metric == "tokens_to_match" and entry.get("tokens_to_match_reached") is not None:
        missed = entry["seeds"] - entry["tokens_to_match_reached"]
        if missed == entry["seeds"]:
            return "not reached"
        if missed:
            return f"not reached in {missed} of {entry['seeds']} seeds"
    value = entry.get(metric)
    if value is None:
        return "n/a"
    mean, std = value
    return _number(metric, mean) + ("" if std is None else f" ± {_number(metric, std)}")


def table_markdown(table: list[dict[str, Any]], teacher_loss: float | None = None) -> str:
    """The variants' table; a last row holds the teacher's validation loss when known."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(entry, c) for c in COLUMNS) + " |" for entry in table]
    if teacher_loss is not None:
        teacher = {"val_loss": _number("val_loss", teacher_loss),
                   "val_ppl": _number("val_ppl", math.exp(min(teacher_loss, 50.0)))}
        lines.append("| teacher | teacher | " + " | ".join(teacher.get(c, "") for c in METRICS)
                     + " |")
    return "\n".join(lines) + "\n"


def _csv(fields: Sequence[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def table_csv(table: list[dict[str, Any]], teacher_loss: float | None = None) -> str:
    """One row per variant: ``<metric>_mean`` and ``<metric>_std`` (empty with one seed or
    where n/a); a ``teacher`` row with its loss when known."""
    fields = ["variant", "class", "seeds",
              *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")], "tokens_to_match_reached"]
    rows = []
    for entry in table:
        row = {k: entry[k] for k in ("variant", "class", "seeds", "tokens_to_match_reached")}
        for metric in METRICS:
            mean, std = entry[metric] or (None, None)
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
        rows.append(row)
    if teacher_loss is not None:
        rows.append({"variant": "teacher", "class": "teacher", "val_loss_mean": teacher_loss,
                     "val_ppl_mean": math.exp(min(teacher_loss, 50.0))})
    return _csv(fields, rows)


def seeds_csv(rows: list[dict[str, Any]]) -> str:
    """One row per run (variant and seed), the metrics as measured."""
    return _csv(["variant", "class", "seed", *METRICS, "tokens_to_match_reached"], rows)
