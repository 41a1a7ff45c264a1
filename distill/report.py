"""The comparison's outputs: table (terminal, comparison.md, comparison.csv), plot
(comparison.png) and report.md, from each variant's metrics.jsonl and a final evaluation
against the shared teacher."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

from distill.metrics import read_metrics

COLUMNS = ("variant", "val_loss", "best_val_loss", "val_ppl", "kl_to_teacher",
           "top1_agreement", "ece", "tokens_per_s", "wall_time_s")


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures of one run from its metrics.jsonl rows."""
    evals = [r for r in rows if "val_loss" in r]
    train = [r for r in rows if "loss" in r]
    speeds = [r["tokens_per_s"] for r in train if r.get("tokens_per_s")]
    return {"val_loss": evals[-1]["val_loss"], "best_val_loss": min(r["val_loss"] for r in evals),
            "val_ppl": evals[-1]["val_ppl"],
            "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
            "curve": [(r["step"], r["val_loss"]) for r in evals],
            "soft_weight": [(r["step"], r["soft_weight"]) for r in train],
            "temperature": [(r["step"], r.get("temperature")) for r in train]}


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table_markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in COLUMNS) + " |" for row in table]
    return "\n".join(lines) + "\n"


def table_csv(table: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def plot(summaries: dict[str, dict[str, Any]], path: Path) -> None:
    """Validation loss against steps for every variant, with each variant's soft-weight
    and temperature schedules beneath, on a shared step axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1, 1]})
    for name, summary in summaries.items():
        line, = axes[0].plot(*zip(*summary["curve"]), marker="o", markersize=3, label=name)
        for axis, key in ((axes[1], "soft_weight"), (axes[2], "temperature")):
            points = [(s, v) for s, v in summary[key] if v is not None]
            if points:
                axis.plot(*zip(*points), color=line.get_color())
    axes[0].set_ylabel("validation loss")
    axes[0].legend(fontsize="small")
    axes[0].grid(alpha=0.3)
    axes[1].set_ylabel("soft weight")
    axes[2].set_ylabel("temperature")
    axes[2].set_xlabel("optimizer step")
    for axis in axes[1:]:
        axis.grid(alpha=0.3)
    fig.suptitle("distill compare: validation loss and loss schedules")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(table: list[dict[str, Any]]) -> str:
    """Which variant won and by how much, and whether distillation beat hard labels."""
    ranked = sorted(table, key=lambda row: row["val_loss"])
    best = ranked[0]
    text = f"**{best['variant']}** won with a final validation loss of {best['val_loss']:.4f}"
    if len(ranked) > 1:
        gap = ranked[1]["val_loss"] - best["val_loss"]
        text += f", {gap:.4f} below the runner-up {ranked[1]['variant']}"
    text += "."
    baseline = next((row for row in table if row["variant"] == "hard_only"), None)
    distilled = [row for row in ranked if row["variant"] != "hard_only"]
    if baseline is not None and distilled:
        top = distilled[0]
        gain = baseline["val_loss"] - top["val_loss"]
        percent = 100 * gain / baseline["val_loss"]
        text += (f" Distillation {'helped' if gain > 0 else 'did not help'}: the best distilled "
                 f"variant ({top['variant']}) ends {abs(gain):.4f} ({abs(percent):.1f}%) "
                 f"{'below' if gain > 0 else 'above'} hard labels alone ({baseline['val_loss']:.4f}).")
    return text


def _final_metrics(variants, base) -> dict[str, dict[str, Any]]:
    """KL to the shared frozen teacher, top-1 agreement and calibration per variant."""
    import students
    from distill.corpus import load_corpus
    from distill.data import load_tokenizer, pack
    from distill.evaluation import evaluate_lm

    recipe = variants[0].recipe
    corpus = load_corpus(recipe.data)
    tokenizer = load_tokenizer(recipe.data, corpus, recipe.trust_remote_code)
    blocks = pack(corpus.validation, tokenizer, recipe.data.block_size, "validation")
    pretrained = recipe.teacher.pretrained()
    trusted = students.sources.is_trusted(pretrained, recipe.trust_remote_code)
    teacher = students.load_pretrained(pretrained, trust_remote_code=trusted).eval() \
        if pretrained else None
    results = {}
    for variant in variants:
        student = students.load_pretrained(str(variant.directory / "student")).eval()
        results[variant.name] = evaluate_lm(student, blocks, None, recipe.train.eval_batch_size,
                                            base.compare.eval_batches, reference=teacher)
    return results


def write_reports(base, variants, results: dict[str, dict[str, Any]], out: Path,
                  recipe_path: str) -> list[dict[str, Any]]:
    summaries = {v.name: summarise(read_metrics(v.directory / "metrics.jsonl")) for v in variants}
    final = _final_metrics(variants, base)
    table = []
    for variant in variants:
        s, f = summaries[variant.name], final[variant.name]
        table.append({"variant": variant.name, "val_loss": s["val_loss"],
                      "best_val_loss": s["best_val_loss"], "val_ppl": s["val_ppl"],
                      "kl_to_teacher": f.get("kl_to_teacher"),
                      "top1_agreement": f.get("top1_agreement"), "ece": f["ece"],
                      "tokens_per_s": s["tokens_per_s"],
                      "wall_time_s": results[variant.name]["wall_time_s"]})
    markdown = table_markdown(table)
    (out / "comparison.md").write_text(markdown)
    (out / "comparison.csv").write_text(table_csv(table))
    plot(summaries, out / "comparison.png")
    print(markdown)
    print(verdict(table))
    write_report(base, variants, table, out, recipe_path)
    return table


def write_report(base, variants: Sequence, table: list[dict[str, Any]], out: Path,
                 recipe_path: str) -> None:
    import yaml

    parts = [f"# Comparison of loss schedules: `{recipe_path}`\n",
             verdict(table) + "\n",
             f"Every variant ran {base.train.max_steps} optimizer steps of "
             f"{base.train.micro_batch_size} x {base.train.grad_accum_steps} sequences of "
             f"{base.data.block_size} tokens with seed {base.seed} and the same data order; "
             "`val_loss` is the final validation loss, `kl_to_teacher` and `top1_agreement` "
             "compare each student with the shared frozen teacher on the validation split, "
             "`ece` is the student's expected calibration error.\n",
             table_markdown(table), "![validation loss and schedules](comparison.png)\n",
             "## Variants\n"]
    for variant in variants:
        overrides = yaml.safe_dump(variant.overrides, sort_keys=False).strip() or "{}"
        parts.append(f"### {variant.name}\n\n{variant.description}\n\n"
                     f"Overrides of the base recipe:\n\n```yaml\n{overrides}\n```\n\n"
                     f"Resolved recipe: `variants/{variant.name}/recipe.yaml`; metrics: "
                     f"`variants/{variant.name}/metrics.jsonl`; model: "
                     f"`variants/{variant.name}/student/`.\n")
    parts.append(f"## Reproduce\n\n```bash\ndistill compare {recipe_path}\n```\n")
    (out / "report.md").write_text("\n".join(parts))

