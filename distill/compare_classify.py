"""Which kind of loss schedule a comparison's variant runs, read from its resolved recipe
(never from its name): the verdict compares the classes, and the table shows them.

- ``baseline``: hard labels alone, the soft weight is 0 at every step (whatever else the
  loss section says: every adaptive strategy scales the soft weight, so 0 stays 0);
- ``constant``: distillation whose soft weight is one number for the whole run and every
  token: a schedule that never moves, the hard weight null (1 - soft) or as still, no
  adaptive weighting, and a divergence that does not reweight tokens itself;
- ``dynamic``: any other distilled variant.

On-policy sampling (``on_policy``) does not enter the class: it changes where the text
comes from, not how the two terms are weighted.
"""

from __future__ import annotations

from distill.config import Recipe, ScheduleConfig

BASELINE, CONSTANT, DYNAMIC = "baseline", "constant", "dynamic"

# Divergences that weight each token's soft term by the teacher's and student's own
# distributions at that token (AKL's head/tail mix; ToDi's per-token forward/reverse
# split): their effective soft weight differs from token to token. A plain set of names,
# so that a divergence registered later on another branch ("todi") is classed correctly
# before this branch knows it.
TOKEN_ADAPTIVE_DIVERGENCES = frozenset({"akl", "todi"})


def single_value(schedule: ScheduleConfig) -> float | None:
    """The one value ``schedule`` takes at every step, or None when it moves. A `constant`
    shape stays at ``start`` whatever ``end`` says; any other shape moves unless ``start``
    equals ``end``; a warmup ramp from another ``warmup_start`` moves it too."""
    end = schedule.start if schedule.end is None else schedule.end
    ramps = (schedule.warmup_steps > 0 and schedule.warmup_start is not None
             and schedule.warmup_start != schedule.start)
    shaped = schedule.kind != "constant" and end != schedule.start
    return None if ramps or shaped else schedule.start


def classify(recipe: Recipe) -> tuple[str, str]:
    """(class, the reason in a few words) of the variant that ``recipe`` runs."""
    loss = recipe.loss
    soft = single_value(loss.soft_weight)
    if soft == 0.0:
        return BASELINE, "soft weight 0 throughout: hard labels alone"
    reasons = []
    if soft is None:
        reasons.append(f"soft weight follows a {loss.soft_weight.kind} schedule")
    if loss.hard_weight is not None and single_value(loss.hard_weight) is None:
        reasons.append(f"hard weight follows a {loss.hard_weight.kind} schedule")
    if loss.adaptive != "none":
        reasons.append(f"adaptive weighting {loss.adaptive!r}")
    if loss.divergence in TOKEN_ADAPTIVE_DIVERGENCES:
        reasons.append(f"token-adaptive divergence {loss.divergence!r}")
    if reasons:
        return DYNAMIC, "; ".join(reasons)
    return CONSTANT, f"soft weight {soft:g} for every step and token"
