"""The verdict: which variant has the lowest mean final validation loss, and whether that
lead, distillation's over hard labels and dynamic weighting's over constant weighting are
larger than the noise between seeds.

The test is one rule throughout. For two variants a and b run under the same seeds, with
d_i = b_i - a_i the per-seed difference of their final validation losses (a seed gives both
the same initialisation and data order, so pairing cancels what the seed alone does),
a is better when mean(d) > 2 SE, SE = sd(d) / sqrt(n) (sample standard deviation); else
they are tied within noise. With one seed there is no estimate of noise to test against.
"""

from __future__ import annotations

from typing import Any, Sequence

from distill.compare_classify import BASELINE, CONSTANT, DYNAMIC
from distill.compare_stats import Paired, mean_std, paired

RULE = ("A difference counts when the mean of the paired per-seed differences d_i exceeds "
        "twice its standard error, 2·SE = 2·sd(d_i)/√n; otherwise the two are tied within "
        "noise.")
_ONE_SEED = ("With one seed there is no estimate of noise, so another seed may change the "
             "order: set `compare.seeds` (e.g. `[0, 1, 2]`) to run every variant under several "
             "seeds.")


def _num(value: float) -> str:
    """A margin or 2·SE: 4 decimals, or 3 significant digits where 4 decimals would show a
    nonzero difference as 0.0000."""
    return f"{value:.4f}" if value == 0 or abs(value) >= 5e-4 else f"{value:.2e}"


def _mean(entry: dict[str, Any]) -> float:
    return mean_std(entry["val_losses"])[0]


def _versus(first: dict[str, Any], second: dict[str, Any]) -> tuple[Paired, str]:
    """The paired test of ``first`` (the lower mean) against ``second``, and its words."""
    test = paired(first["val_losses"], second["val_losses"])
    if test.se is None:
        return test, "one seed: no estimate of noise"
    if test.decided:
        return test, f"more than 2·SE = {_num(2 * test.se)}"
    return test, f"within 2·SE = {_num(2 * test.se)}: tied within noise"


def _leader(ranked: list[dict[str, Any]], seeds: int) -> str:
    best = ranked[0]
    if len(ranked) == 1:
        return f"Only **{best['variant']}** ran ({_mean(best):.4f}): there is nothing to rank."
    runner = ranked[1]
    test, _ = _versus(best, runner)
    figures = (f"{_mean(best):.4f}, {_num(test.margin)} below the runner-up "
               f"{runner['variant']} ({_mean(runner):.4f})")
    if test.se is None:
        return (f"**{best['variant']}** has the lowest final validation loss ({figures}). "
                f"{_ONE_SEED}")
    if test.decided:
        return (f"**{best['variant']}** wins: its mean final validation loss over {seeds} "
                f"seeds is {figures}, more than twice the standard error of the paired "
                f"per-seed difference (2·SE = {_num(2 * test.se)}).")
    tied = [e["variant"] for e in ranked[1:] if not _versus(best, e)[0].decided]
    return (f"No winner: the leaders are tied within noise. {best['variant']} has the lowest "
            f"mean final validation loss over {seeds} seeds ({figures}), but the margin is "
            f"within twice the standard error of the paired per-seed difference "
            f"(2·SE = {_num(2 * test.se)}). Within noise of {best['variant']}: "
            f"{', '.join(tied)}.")


def _contest(title: str, a: dict[str, Any] | None, a_role: str, b: dict[str, Any] | None,
             b_role: str, outcomes: tuple[str, str], missing: str) -> str:
    """One comparison of two roles' best variants (e.g. the best distilled variant against
    hard-only); ``outcomes``: what it means when a, or b, is better beyond noise."""
    if a is None or b is None:
        return f"{title}: {missing}"
    low, high = (a, b) if _mean(a) <= _mean(b) else (b, a)
    test, words = _versus(low, high)
    role = {id(a): a_role, id(b): b_role}
    percent = 100 * test.margin / _mean(high) if _mean(high) else 0.0
    outcome = "" if not test.decided else " " + outcomes[0 if low is a else 1]
    return (f"{title}: the {role[id(low)]}, {low['variant']} ({_mean(low):.4f}), ends "
            f"{_num(test.margin)} ({percent:.1f}%) below the {role[id(high)]}, "
            f"{high['variant']} ({_mean(high):.4f}); {words}.{outcome}")


def verdict(table: list[dict[str, Any]], seeds: Sequence[int]) -> str:
    """The verdict's paragraphs from the per-variant entries (``variant``, ``class``,
    ``val_losses`` per seed in the seeds' order)."""
    ranked = sorted(table, key=_mean)

    def best(*classes: str) -> dict[str, Any] | None:
        return next((e for e in ranked if e["class"] in classes), None)

    parts = [_leader(ranked, len(seeds))]
    distilled, baseline = best(CONSTANT, DYNAMIC), best(BASELINE)
    parts.append(_contest(
        "Distillation against hard labels", distilled, "best distilled variant", baseline,
        "hard-only baseline", ("Distillation helped.", "Distillation did not help."),
        "no variant trains on hard labels alone (soft weight 0 throughout), so there is "
        "nothing to measure distillation against." if baseline is None else
        "no distilled variant ran."))
    dynamic, constant = best(DYNAMIC), best(CONSTANT)
    parts.append(_contest(
        "Dynamic against constant weighting", dynamic, "best dynamic variant", constant,
        "best constant variant",
        ("Dynamic weighting helped.", "Constant weighting did better."),
        f"no {'dynamic' if dynamic is None else 'constant'} variant ran."))
    return "\n\n".join(parts)
