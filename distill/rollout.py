"""On-policy rollouts: the student writes continuations that the teacher then grades
(generalised knowledge distillation, Agarwal et al. 2024; GKD's lambda is
``on_policy.fraction``).

Distilling on the data alone trains the student on prefixes it would never write itself.
Here, at each optimizer step, part of the step's rows are replaced before anything is
counted or trained on: the row's first ``prompt_tokens`` tokens are kept as the prompt, the
student (unwrapped, in eval mode, with a KV cache, without gradients) samples up to
``max_new_tokens`` tokens after it, and the new row is the prompt plus the sample, padded to
the block's length. Its labels are the prompt's own next tokens (data) and then the sampled
tokens, up to and including the first end-of-text token; everything after is ignored (-100).
``generated`` marks the labels that are sampled tokens.

Which rows, and which tokens, must not depend on how a step is split (1x8 micro-batches or
8x1, one process or several) nor on where a run was resumed:

* The count is decided per optimizer step over the step's rows across all processes,
  ``n = floor(fraction(step) * rows + 1/2)``, and the generated rows are the first ``n`` in
  the step's global row order: micro-batch ``j`` of process ``r`` holds the step's rows
  ``(j * processes + r) * micro_batch_size + i``, which is exactly the order ``BlockOrder``
  deals them from its permutation, so the same blocks get the same places in any layout.
* Sampling draws no torch global RNG. Each row gets a ``torch.Generator`` seeded from
  (recipe seed, step, the row's place in the step), and each token is the argmax of the
  tempered, top-p filtered logits plus Gumbel noise from that generator (the Gumbel-max
  trick: an exact sample of the same distribution as ``do_sample=True``). So a row's sample
  does not depend on which other rows share its ``generate`` call, a resumed run draws what
  the uninterrupted one drew, and processes need no shared random state. All of a process's
  generated rows of a step go through one ``generate`` call.

A prompt that already holds an end-of-text token (packed data joins documents with it) is a
prompt like any other: the student continues after its last token, as it reads packed data
in training; only the sampled tokens are searched for the end of the continuation.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import (GenerationConfig, LogitsProcessor, LogitsProcessorList,
                          TemperatureLogitsWarper, TopPLogitsWarper)

import losses
from distill.data import split_block

IGNORE_INDEX = -100


def generated_count(fraction: float, step_rows: int) -> int:
    """How many of an optimizer step's ``step_rows`` rows the student continues: the
    fraction of them rounded half up (Python's round would round halves to even)."""
    return min(step_rows, math.floor(fraction * step_rows + 0.5))


def chosen_rows(count: int, micro_batch_size: int, micro_batches: int, rank: int,
                world_size: int) -> list[tuple[int, int, int]]:
    """(micro-batch, row in it, row in the step) of this process's generated rows: the
    first ``count`` rows of the step in its global order (see the module's docstring)."""
    chosen = []
    for j in range(micro_batches):
        for i in range(micro_batch_size):
            place = (j * world_size + rank) * micro_batch_size + i
            if place < count:
                chosen.append((j, i, place))
    return chosen


def row_seed(seed: int, step: int, place: int) -> int:
    """A 63-bit seed for the row at ``place`` of step ``step``: hashed, so that nearby
    (seed, step, place) triples give unrelated streams."""
    digest = hashlib.blake2b(f"{seed}:{step}:{place}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _GumbelNoise(LogitsProcessor):
    """Adds each row's own Gumbel noise to its scores: greedy decoding then samples from
    softmax(scores) exactly. Called once per generated position, so the k-th draw of a
    row's generator is always for its k-th token, whatever the batch around it."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device)
                               for g in self.generators])                      # (rows, V)
        tiny = torch.finfo(uniform.dtype).tiny  # u = 0 would give -log(0) = inf
        return scores + -torch.log(-torch.log(uniform.clamp_min(tiny))).to(scores.dtype)


class _VocabLimit(LogitsProcessor):
    """A head padded beyond the tokenizer never samples a padding row."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[-1] > self.rows:
            scores = scores.clone()
            scores[:, self.rows:] = -math.inf
        return scores


@contextlib.contextmanager
def _plain_generation_config(lm: torch.nn.Module) -> Iterator[None]:
    """``generate`` fills every setting it is not given from the model's own
    ``generation_config`` (a pretrained checkpoint's repetition penalty, bad words, forced
    tokens, ...), which would bend the samples away from the student's distribution: give it
    transformers' plain defaults for the call. A peft model copies its own into the base
    model's, so both are put back."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    holders = [lm] if base is lm else [lm, base]
    missing = object()
    saved = [(holder, holder.__dict__.get("generation_config", missing)) for holder in holders]
    for holder in holders:
        holder.generation_config = GenerationConfig()
    try:
        yield
    finally:
        for holder, value in saved:
            if value is missing:
                holder.__dict__.pop("generation_config", None)
            else:
                holder.generation_config = value


def continuation_lengths(new_tokens: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """(rows, n) tokens ``generate`` appended -> (rows,) how many belong to each row's
    continuation: up to and including its first end-of-text token, else all ``n`` (a row
    without one ran to the output's length). What follows a row's first end-of-text is
    generate's padding, which may itself be the end-of-text token: it is never read, so the
    pad id does not matter."""
    rows, n = new_tokens.shape
    if eos_id is None or n == 0:
        return torch.full((rows,), n, dtype=torch.long, device=new_tokens.device)
    is_eos = new_tokens == eos_id
    first = is_eos.long().argmax(dim=1)  # 0 where there is none: told apart by any()
    return torch.where(is_eos.any(dim=1), first + 1, torch.full_like(first, n))


def rollout_rows(prompts: torch.Tensor, new_tokens: torch.Tensor, lengths: torch.Tensor,
                 pad_id: int, block_len: int) -> dict[str, torch.Tensor]:
    """Rows of ``block_len`` tokens from prompts (rows, P), their continuations (rows, n)
    and the continuations' lengths (rows,): ``input_ids`` and ``labels`` (rows,
    block_len - 1) as ``split_block`` makes them, and ``generated`` (rows, block_len - 1),
    True where the label is a sampled token. Label t is token t + 1: the prompt's labels
    (t < P - 1) are data, t in [P - 1, P - 1 + length) sampled, the rest -100."""
    rows, prompt_len = prompts.shape
    length = lengths.clamp(max=block_len - prompt_len)  # the recipe check makes it a no-op
    tokens = torch.full((rows, block_len), pad_id, dtype=prompts.dtype, device=prompts.device)
    tokens[:, :prompt_len] = prompts
    width = min(new_tokens.shape[1], block_len - prompt_len)
    position = torch.arange(width, device=prompts.device)
    kept = position[None, :] < length[:, None]                                   # (rows, width)
    tokens[:, prompt_len:prompt_len + width] = torch.where(
        kept, new_tokens[:, :width].to(tokens.dtype), torch.full_like(tokens[:, :width], pad_id))
    t = torch.arange(block_len - 1, device=prompts.device)[None, :]                # (1, seq)
    end = (prompt_len - 1 + length)[:, None]
    valid = t < end
    generated = valid & (t >= prompt_len - 1)
    return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:].masked_fill(~valid, IGNORE_INDEX),
            "generated": generated}


@dataclass
class RolloutStats:
    """This process's generation in one step (summed over processes by the loop)."""

    rows: int = 0         # rows the student continued
    tokens: int = 0       # sampled tokens that became labels (to the first end-of-text)
    seconds: float = 0.0  # wall time of generation


class Rollouts:
    """The recipe's ``on_policy`` section, applied to each step's freshly drawn rows."""

    def __init__(self, cfg, seed: int, eos_id: int | None, pad_id: int | None,
                 vocab_rows: int, max_steps: int | None = None) -> None:
        self.fraction = losses.schedule_from(cfg.fraction, max_steps)
        self.prompt_tokens = cfg.prompt_tokens
        self.max_new_tokens = cfg.max_new_tokens
        self.temperature = cfg.temperature
        self.top_p = cfg.top_p
        self.seed = seed
        self.eos_id = eos_id
        # A tokenizer without a pad token pads with end-of-text: masking never reads it.
        self.pad_id = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
        self.vocab_rows = vocab_rows

    def count(self, step: int, step_rows: int) -> int:
        """Rows of step ``step`` (0-based) that are generated."""
        return generated_count(self.fraction(step), step_rows)

    def processors(self, generators: list[torch.Generator]) -> LogitsProcessorList:
        """What turns the student's next-token logits (rows, V) into scores whose argmax is
        a sample: vocabulary limit, temperature, top-p, then each row's Gumbel noise."""
        processors = LogitsProcessorList([_VocabLimit(self.vocab_rows),
                                          TemperatureLogitsWarper(self.temperature)])
        if self.top_p < 1.0:
            processors.append(TopPLogitsWarper(self.top_p))
        processors.append(_GumbelNoise(generators))
        return processors

    def sample(self, lm: torch.nn.Module, prompts: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """(rows, n) tokens sampled after ``prompts`` (rows, P): the student in eval mode
        (its mode restored after), a KV cache, no gradients, one row generator per seed."""
        generators = [torch.Generator(device=prompts.device).manual_seed(s) for s in seeds]
        processors = self.processors(generators)
        training = lm.training
        lm.eval()
        try:
            with torch.no_grad(), _plain_generation_config(lm):
                out = lm.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                                  do_sample=False, max_new_tokens=self.max_new_tokens,
                                  min_new_tokens=0, use_cache=True, logits_processor=processors,
                                  eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        finally:
            lm.train(training)
        return out[:, prompts.shape[1]:]

    def rewrite(self, lm: torch.nn.Module, step: int, rows: list[torch.Tensor], rank: int,
                world_size: int) -> tuple[list[dict[str, torch.Tensor | None]], RolloutStats]:
        """Each micro-batch's blocks (mb, block_len) -> its ``input_ids``, ``labels`` and
        ``generated``, with this process's share of the step's generated rows replaced by
        rollouts. In a step that may generate, every micro-batch of every process carries a
        mask (all False where none of its rows was generated): the loss then logs the same
        terms on every process, and the step's terms reduce in one collective over the same
        keys everywhere (a process without a mask would leave the others waiting); in a
        step that cannot, ``generated`` is None."""
        may_generate = self.fraction(step) > 0
        parts: list[dict[str, torch.Tensor | None]] = []
        for block in rows:
            part = {**split_block(block), "generated": None}
            if may_generate:
                part["generated"] = torch.zeros_like(part["labels"], dtype=torch.bool)
            parts.append(part)
        micro_batch_size, block_len = rows[0].shape
        count = self.count(step, micro_batch_size * len(rows) * world_size)
        chosen = chosen_rows(count, micro_batch_size, len(rows), rank, world_size)
        if not chosen:
            return parts, RolloutStats()
        start = time.perf_counter()
        prompts = torch.stack([rows[j][i, :self.prompt_tokens] for j, i, _ in chosen])
        new_tokens = self.sample(lm, prompts, [row_seed(self.seed, step, p) for _, _, p in chosen])
        lengths = continuation_lengths(new_tokens, self.eos_id)
        made = rollout_rows(prompts, new_tokens, lengths, self.pad_id, block_len)
        tokens = int(made["generated"].sum())  # (waits for the device: the time is whole)
        seconds = time.perf_counter() - start
        copied: set[int] = set()
        for k, (j, i, _) in enumerate(chosen):
            part = parts[j]
            if j not in copied:  # copies: input_ids and labels overlap in one block
                part["input_ids"] = part["input_ids"].clone()
                part["labels"] = part["labels"].clone()
                copied.add(j)
            for key in ("input_ids", "labels", "generated"):
                part[key][i] = made[key][k]
        return parts, RolloutStats(rows=len(chosen), tokens=tokens, seconds=seconds)
