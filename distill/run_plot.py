"""metrics.png: one run's curves over optimizer steps, drawn from its metrics.jsonl.

Panels, top to bottom: the losses (training loss, its cross-entropy term, the validation
loss at each evaluation, and a teacher's that trains: its CE and validation loss); the KD
term (on its own axis: it is often two orders of magnitude below the CE); the effective soft
and hard weights with the temperature on a second axis; the learning rate with the gradient
norm before clipping on a second axis. Written at each evaluation and at the end of a run.
A plot is a convenience: :func:`write_run_plot` never lets a failure stop the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from distill.metrics import read_metrics
from distill.report_plot import pyplot, save_figure

PLOT_FILE = "metrics.png"


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over the rows that logged a finite number for it (a
    non-finite value is logged as null)."""
    points = [(row["step"], row[key]) for row in rows
              if isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)]
    return [s for s, _ in points], [v for _, v in points]


def _draw(axis, rows, keys: list[tuple[str, str, dict]]) -> bool:
    """Each (key, label, style) present in the rows as a line; whether any was."""
    drawn = False
    for key, label, style in keys:
        steps, values = series(rows, key)
        if steps:
            axis.plot(steps, values, label=label, **style)
            drawn = True
    return drawn


def plot_run(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1.3, 1.3, 1.3]})
    losses, kd, weights, lr = axes
    thin = {"linewidth": 1}
    evals = {"marker": "o", "markersize": 4}
    _draw(losses, rows, [("loss", "training loss", thin), ("ce", "CE (hard term)", thin),
                         ("teacher_ce", "teacher CE", {**thin, "linestyle": ":"}),
                         ("val_loss", "validation loss", evals),
                         ("teacher_val_loss", "teacher validation loss",
                          {**evals, "linestyle": "--"})])
    losses.set_ylabel("loss per target token")
    if not _draw(kd, rows, [("kd", "KD (soft term)", thin)]):
        kd.text(0.5, 0.5, "no KD term (no teacher)", ha="center", va="center",
                transform=kd.transAxes, fontsize="small")
    kd.set_ylabel("KD")
    _draw(weights, rows, [("soft_weight", "soft weight", thin),
                          ("hard_weight", "hard weight", thin)])
    weights.set_ylabel("weight")
    temperature = weights.twinx()
    _draw(temperature, rows, [("temperature", "temperature",
                               {**thin, "color": "grey", "linestyle": "--"})])
    temperature.set_ylabel("temperature")
    _draw(lr, rows, [("lr", "learning rate", thin)])
    lr.set_ylabel("learning rate")
    norm = lr.twinx()
    _draw(norm, rows, [("grad_norm", "gradient norm (before clipping)",
                        {**thin, "color": "grey", "alpha": 0.7})])
    norm.set_ylabel("gradient norm")
    for axis, twin in ((losses, None), (kd, None), (weights, temperature), (lr, norm)):
        handles, labels = axis.get_legend_handles_labels()
        if twin is not None:
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        if handles:
            axis.legend(handles, labels, fontsize="small", loc="best")
        axis.grid(alpha=0.3)
    lr.set_xlabel("optimizer step")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def write_run_plot(output_dir: Path, title: str, warn: Callable[[str], None] = print) -> bool:
    """Draw ``output_dir/metrics.png`` from ``output_dir/metrics.jsonl``. Any failure (no
    matplotlib backend, a full disk, a damaged log) is reported through ``warn`` and
    returns False: a missing plot must never fail a run whose model and metrics are fine."""
    output_dir = Path(output_dir)
    try:
        plot_run(read_metrics(output_dir / "metrics.jsonl"), output_dir / PLOT_FILE, title)
        return True
    except Exception as exc:  # noqa: BLE001 - see the docstring
        warn(f"distill: warning: {output_dir / PLOT_FILE} not written ({type(exc).__name__}: "
             f"{exc}); the run's metrics.jsonl has every value")
        return False
