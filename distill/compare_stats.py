"""The numbers of a comparison, from plain values (no models, no files): one run's figures
from its metrics.jsonl rows, the transfer metrics (gap closed, tokens to match, expert
share), mean and spread over seeds, and the paired test the verdict uses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's figures from its metrics.jsonl rows (eval rows carry ``val_loss``, train
    rows ``loss``; ``tokens`` is the training tokens seen when the row was written)."""
    evals = [r for r in rows if r.get("val_loss") is not None]
    train = [r for r in rows if "loss" in r]
    if not evals:
        raise ValueError("no evaluation rows")
    speeds = [r["tokens_per_s"] for r in train if r.get("tokens_per_s")]
    final = evals[-1]
    return {"val_loss": final["val_loss"], "best_val_loss": min(r["val_loss"] for r in evals),
            "val_ppl": final.get("val_ppl"), "val_tokens": final.get("val_tokens"),
            "tokens": final.get("tokens"),
            "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
            "expert_load": final.get("expert_load"),
            "curve": [(r["step"], r.get("tokens"), r["val_loss"]) for r in evals],
            "soft_weight": [(r["step"], r.get("soft_weight")) for r in train],
            "temperature": [(r["step"], r.get("temperature")) for r in train]}


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator: the seeds are a sample
    of the seeds one could have run); no deviation from a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def gap_closed(hard_only: float, variant: float, teacher: float | None) -> float | None:
    """The share of the hard-only student's gap to the teacher that the variant closed:
    (hard_only - variant) / (hard_only - teacher). 0 is no better than hard labels, 1 is as
    good as the teacher; None without a teacher loss or without a gap to close."""
    if teacher is None or hard_only == teacher:
        return None
    return (hard_only - variant) / (hard_only - teacher)


def tokens_to_match(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """The training tokens at which the validation ``curve`` ((tokens, val_loss) per
    evaluation, in order) first reaches ``target``, linearly interpolated between the two
    evaluations that straddle it; None when it never does."""
    previous = None
    for tokens, loss in curve:
        if loss <= target:
            if previous is None:
                return float(tokens)
            before_tokens, before_loss = previous
            # before_loss > target >= loss: the fraction of the segment where it crosses
            share = (before_loss - target) / (before_loss - loss)
            return before_tokens + share * (tokens - before_tokens)
        previous = (tokens, loss)
    return None


def expert_max_share(expert_load: list[list[float]] | None) -> float | None:
    """The largest share of routed slots any one expert got in any MoE layer (``expert_load``:
    per MoE layer, each expert's share); None for a dense student."""
    if not expert_load:
        return None
    return max(max(layer) for layer in expert_load if layer)


@dataclass(frozen=True)
class Paired:
    """Variant a against variant b, paired by seed (the same seed gives both the same
    initialisation and data order, so the per-seed difference cancels what the seed does)."""

    margin: float        # mean over seeds of d_i = b_i - a_i: positive when a is lower
    se: float | None     # sd(d_i) / sqrt(n); None with one seed (no estimate of noise)
    n: int

    @property
    def decided(self) -> bool:
        """Whether the margin exceeds twice its standard error (either way round)."""
        return self.se is not None and abs(self.margin) > 2 * self.se


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """The paired comparison of two variants' per-seed values (same seeds, same order)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired values need the same, nonzero number of seeds")
    differences = [y - x for x, y in zip(a, b)]
    margin, sd = mean_std(differences)
    return Paired(margin, None if sd is None else sd / math.sqrt(len(a)), len(a))
