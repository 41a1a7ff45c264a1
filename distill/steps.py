"""One optimizer step's data: its micro-batches drawn from the block order (with on-policy
rows written by the student first), each knowing the step's valid targets over all
processes; and whether a step may be drawn during the step before (for a teacher running
ahead)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.data import BlockOrder, split_block
from distill.prefetch import TeacherPrefetch
from distill.rollout import Rollouts, RolloutStats
from teachers import MicroBatch


@dataclass
class DrawnStep:
    """One optimizer step's micro-batches, and its on-policy figures for the log row ({}
    when on-policy distillation is off: the row is then what it always was)."""

    micro_batches: list[MicroBatch]
    rollout: dict[str, float]


def draw_step(order: BlockOrder, blocks: torch.Tensor, step: int, micro_batches: int,
              accelerator, rollouts: Rollouts | None = None,
              student_lm: torch.nn.Module | None = None) -> DrawnStep:
    """The micro-batches of optimizer step ``step``, each knowing the step's valid target
    tokens over all processes (every process calls this at the same point: a collective).
    With ``rollouts``, the step's share of rows is continued by ``student_lm`` (the
    unwrapped student, as it is now) first, so that its sampled tokens count as targets of
    the step: the gradient stays normalised by all of the step's valid targets."""
    drawn = []
    for _ in range(micro_batches):
        indices = order.next_indices()
        # int64 rows gathered from the (int32, memory-mapped) blocks
        drawn.append((blocks[indices].long().to(accelerator.device), indices))
    stats = RolloutStats()
    if rollouts is None:
        parts = [{**split_block(rows), "generated": None} for rows, _ in drawn]
    else:
        with accelerator.autocast():  # the precision the student trains in
            parts, stats = rollouts.rewrite(student_lm, step, [rows for rows, _ in drawn],
                                            accelerator.process_index,
                                            accelerator.num_processes)
    local = sum(int((part["labels"] != -100).sum()) for part in parts)
    # One collective for every count: the step's targets, its sampled targets and rows,
    # and the generation time (microseconds, summed: averaged below).
    counts = torch.tensor([local, stats.tokens, stats.rows, round(stats.seconds * 1e6)],
                          device=accelerator.device)
    tokens, sampled, rows, micros = (int(v) for v in accelerator.reduce(counts, "sum"))
    data_tokens = None if rollouts is None else tokens - sampled
    batches = [MicroBatch(part["input_ids"], part["labels"], indices, step, tokens,
                          generated=part["generated"], step_data_tokens=data_tokens)
               for part, (_, indices) in zip(parts, drawn)]
    if rollouts is None:
        return DrawnStep(batches, {})
    seconds = micros / 1e6 / accelerator.num_processes  # processes generate side by side
    return DrawnStep(batches, {
        "on_policy_fraction": rollouts.fraction(step), "generated_tokens": sampled,
        "generation_tokens_per_s": sampled / seconds if seconds > 0 else 0.0,
        "mean_generated_length": sampled / rows if rows else 0.0})


def draws_ahead(prefetch: TeacherPrefetch, rollouts: Rollouts | None, step: int,
                 max_steps: int, step_rows: int) -> bool:
    """Whether to draw step ``step``'s batches during the step before, so that a teacher
    running ahead can start on its first micro-batch during that step's last student pass.
    Not when step ``step`` generates rows: its student must write with the weights after
    the step before's update; the prefetcher then overlaps within the step only."""
    if not prefetch.enabled or step >= max_steps:
        return False
    return rollouts is None or rollouts.count(step, step_rows) == 0
