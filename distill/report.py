"""The comparison's outputs: the table (terminal, comparison.md, comparison.csv,
comparison_seeds.csv), the plot (comparison.png) and report.md, from each run's
metrics.jsonl and a final evaluation against the shared teacher. The numbers come from
distill.compare_stats; the pieces from report_table, report_verdict and report_plot."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from distill.compare_eval import FinalEval, evaluate_runs
from distill.compare_plan import Plan
from distill.compare_stats import summarise
from distill.metrics import read_metrics
from distill.report_plot import plot
from distill.report_table import aggregate, seed_rows, seeds_csv, table_csv, table_markdown
from distill.report_verdict import RULE, verdict


def write_reports(plan: Plan, results: dict[str, dict[str, Any]], out: Path) -> list[dict]:
    summaries = {str(run.directory): summarise(read_metrics(run.directory / "metrics.jsonl"))
                 for run in plan.runs}
    final = evaluate_runs(plan)
    rows = seed_rows(plan, summaries, final, results)
    table = aggregate(plan, rows)
    markdown = table_markdown(table, final.teacher_loss)
    (out / "comparison.md").write_text(markdown)
    (out / "comparison.csv").write_text(table_csv(table, final.teacher_loss))
    (out / "comparison_seeds.csv").write_text(seeds_csv(rows))
    per_variant = {v.name: [summaries[str(r.directory)] for r in plan.runs if r.variant is v]
                   for v in plan.variants}
    plot(per_variant, out / "comparison.png", final.teacher_loss)
    text = verdict(table, plan.seeds)
    print(markdown)
    print(text)
    (out / "report.md").write_text(report_markdown(plan, table, rows, final, text))
    return table


def reproduce_command(plan: Plan) -> str:
    """The command that asks for these results again: the recipe, the command line's
    overrides and --only (not --jobs, which changes no result)."""
    words = ["distill", "compare", plan.recipe_path, *plan.overrides]
    if plan.only:
        words += ["--only", ",".join(plan.only)]
    return " ".join(shlex.quote(w) for w in words)


def _positions(final: FinalEval, rows: list[dict[str, Any]]) -> str:
    """Which validation positions each column measures."""
    tokens = {r["val_tokens"] for r in rows if r.get("val_tokens") is not None}
    batches = "all" if final.val_batches is None else f"the first {final.val_batches}"
    text = (f"`val_loss`, `best_val_loss`, `val_ppl`, the teacher's loss, `gap_closed` and "
            f"`tokens_to_match` are measured on {batches} validation batches of "
            f"{final.batch_size} sequences")
    if tokens:
        text += f" ({', '.join(str(t) for t in sorted(tokens))} target tokens)"
    if final.final_batches == final.val_batches:
        return text + "; `kl_to_teacher`, `top1_agreement` and `ece` on the same positions."
    other = "all" if final.final_batches is None else f"the first {final.final_batches}"
    return (text + f"; `kl_to_teacher`, `top1_agreement` and `ece` on {other} batches "
            "(`compare.eval_batches`), another subset.")


def _experts(rows: list[dict[str, Any]]) -> str:
    """The balanced value of expert_max_share for the MoE students."""
    shapes = sorted({(r["experts"], r["experts_per_token"]) for r in rows
                     if r["expert_max_share"] is not None and r["experts"]})
    if not shapes:
        return "`expert_max_share` is n/a: the students are dense."
    parts = [f"{e} experts, top-{k}: balanced {1 / e:.3f} of the routed slots (each expert "
             f"then receives {k}/{e} = {k / e:.3f} of the tokens)" for e, k in shapes]
    return ("`expert_max_share` is the largest share of routed slots any one expert got in "
            "any MoE layer at the final evaluation; " + "; ".join(parts) + ".")


def _teacher_section(plan: Plan, final: FinalEval) -> str:
    import yaml

    loss = "" if final.teacher_loss is None else \
        f" Its validation loss: {final.teacher_loss:.4f} ({final.teacher_tokens} target tokens)."
    if plan.teacher is None:
        return f"## Teacher\n\n{final.teacher}.{loss}\n"
    overrides = yaml.safe_dump(plan.teacher.overrides, sort_keys=False).strip() \
        if plan.teacher.overrides else "{}"
    return (f"## Teacher\n\nTrained once by `{plan.teacher.recipe_path}` into `teacher/` "
            f"(resolved recipe: `teacher/config.yaml`), with `compare.teacher_overrides`:\n\n"
            f"```yaml\n{overrides}\n```\n\nEvery run learns from it: "
            f"{final.teacher}.{loss}\n")


def report_markdown(plan: Plan, table: list[dict], rows: list[dict], final: FinalEval,
                    text: str) -> str:
    import yaml

    base = plan.base
    seeds = ", ".join(str(s) for s in plan.seeds)
    parts = [f"# Comparison of loss schedules: `{plan.recipe_path}`\n",
             "## Verdict\n", text + "\n", f"{RULE}\n",
             f"Every run trained {base.train.max_steps} optimizer steps of "
             f"{base.train.micro_batch_size} x {base.train.grad_accum_steps} sequences of "
             f"{base.data.block_size} tokens; seeds: {seeds} (a seed sets the initialisation "
             "and the data order; a variant's figures are the mean ± standard deviation over "
             "its seeds). " + _positions(final, rows) + "\n",
             table_markdown(table, final.teacher_loss),
             "- `class`: `baseline` (soft weight 0 throughout), `constant` (one soft weight for "
             "every step and token), `dynamic` (any other distilled variant); from the resolved "
             "recipe.\n"
             "- `gap_closed` = (hard_only − variant) / (hard_only − teacher), per seed against "
             "the hard-only run of the same seed: 0 is no better than hard labels, 1 as good as "
             "the teacher.\n"
             "- `tokens_to_match`: the training tokens at which the variant's validation curve "
             "first reaches the same seed's hard-only final loss (linear between evaluations), "
             "as a share of hard-only's training tokens.\n"
             f"- {_experts(rows)}\n",
             "![validation loss and schedules](comparison.png)\n",
             _teacher_section(plan, final), "## Per seed\n",
             _per_seed_table(plan, rows), "All metrics per run: `comparison_seeds.csv`.\n",
             "## Variants\n"]
    for variant in plan.variants:
        overrides = yaml.safe_dump(variant.overrides, sort_keys=False).strip() or "{}"
        description = f"{variant.description}\n\n" if variant.description else ""
        parts.append(f"### {variant.name}\n\n{description}"
                     f"Class: {variant.kind} ({variant.why}).\n\n"
                     f"Overrides of the base recipe:\n\n```yaml\n{overrides}\n```\n\n"
                     f"Runs: `variants/{variant.name}/seed-<s>/` (resolved recipe "
                     "`recipe.yaml`, metrics `metrics.jsonl`, model `student/`).\n")
    parts.append(f"## Reproduce\n\n```bash\n{reproduce_command(plan)}\n```\n")
    return "\n".join(parts)


def _per_seed_table(plan: Plan, rows: list[dict[str, Any]]) -> str:
    """Final validation loss per variant and seed: the pairs the verdict's test uses."""
    head = "| variant | " + " | ".join(f"seed {s}" for s in plan.seeds) + " |"
    lines = [head, "|" + " --- |" * (len(plan.seeds) + 1)]
    for variant in plan.variants:
        losses = {r["seed"]: r["val_loss"] for r in rows if r["variant"] == variant.name}
        lines.append(f"| {variant.name} | " +
                     " | ".join(f"{losses[s]:.4f}" for s in plan.seeds) + " |")
    return "\n".join(lines) + "\n"
