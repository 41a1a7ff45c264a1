"""comparison.png: each variant's validation loss, mean over seeds with a ±1 standard
deviation band, the teacher's loss as a horizontal line, and the mean soft weight and
temperature beneath on the same step axis."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from distill.compare_stats import mean_std


def mean_curve(points: Sequence[Sequence[tuple[int, float | None]]]
               ) -> list[tuple[int, float, float]]:
    """(step, mean, std) over the seeds' curves ((step, value) each), at the steps every
    seed logged (std 0 with one seed)."""
    by_seed = [{step: value for step, value in curve if value is not None} for curve in points]
    steps = sorted(set.intersection(*(set(c) for c in by_seed))) if by_seed else []
    out = []
    for step in steps:
        mean, std = mean_std([c[step] for c in by_seed])
        out.append((step, mean, std or 0.0))
    return out


def loss_frame(curves: dict[str, list[tuple[int, float, float]]]) -> tuple[float, float] | None:
    """Loss-axis limits around where the variants differ: from the first evaluation after
    step 0 to the end (the step-0 loss of an untrained student dwarfs every difference),
    bands included, with a 10% margin."""
    values = [v for curve in curves.values() for step, mean, std in curve if step > 0
              for v in (mean - std, mean + std)]
    if not values:
        return None
    low, high = min(values), max(values)
    margin = 0.1 * (high - low) or 0.05 * abs(high) or 0.05
    return low - margin, high + margin


def pyplot():
    """matplotlib's pyplot on the Agg backend: files only, no display needed (a server, a
    batch job), whatever backend the environment would pick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Write the figure as a PNG beside ``path`` and rename it into place (a reader never
    sees half a file), then free it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        pyplot().close(fig)


def plot(summaries: dict[str, list[dict[str, Any]]], path: Path,
         teacher_loss: float | None = None) -> None:
    """``summaries``: per variant, its runs' summaries (one per seed)."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1, 1]})
    curves = {name: mean_curve([[(s, loss) for s, _, loss in run["curve"]] for run in runs])
              for name, runs in summaries.items()}
    # The default cycle has 10 colours: an 11th variant would repeat the first one's.
    palette = plt.get_cmap("tab10" if len(summaries) <= 10 else "tab20").colors
    markers = "os^Dv"
    for index, (name, runs) in enumerate(summaries.items()):
        steps, means, stds = zip(*curves[name])
        seeds = f" ({len(runs)} seeds)" if len(runs) > 1 else ""
        line, = axes[0].plot(steps, means, marker=markers[index % len(markers)], markersize=3,
                             color=palette[index % len(palette)], label=name + seeds)
        if len(runs) > 1:
            axes[0].fill_between(steps, [m - s for m, s in zip(means, stds)],
                                 [m + s for m, s in zip(means, stds)],
                                 color=line.get_color(), alpha=0.2, linewidth=0)
        for axis, key in ((axes[1], "soft_weight"), (axes[2], "temperature")):
            schedule = mean_curve([run[key] for run in runs])
            if schedule:
                axis.plot([p[0] for p in schedule], [p[1] for p in schedule],
                          color=line.get_color())
    frame = loss_frame(curves)
    if frame is not None:
        axes[0].set_ylim(*frame)
    if teacher_loss is not None:
        axes[0].axhline(teacher_loss, color="black", linestyle="--", linewidth=1,
                        label=f"teacher ({teacher_loss:.3f})")
        if frame is not None and not frame[0] <= teacher_loss <= frame[1]:
            # outside the frame chosen for the variants: say where it is
            where = "below" if teacher_loss < frame[0] else "above"
            axes[0].annotate(f"teacher {teacher_loss:.3f} ({where} this frame)",
                             xy=(0.01, 0.02 if where == "below" else 0.95),
                             xycoords="axes fraction", fontsize="small")
    axes[0].set_ylabel("validation loss (mean ± 1 std over seeds)")
    axes[0].legend(fontsize="small")
    axes[0].grid(alpha=0.3)
    axes[1].set_ylabel("soft weight (mean)")
    axes[2].set_ylabel("temperature (mean)")
    axes[2].set_xlabel("optimizer step")
    for axis in axes[1:]:
        axis.grid(alpha=0.3)
    fig.suptitle("distill compare: validation loss and loss schedules")
    fig.tight_layout()
    save_figure(fig, path)
