"""A micro-batch as completion requests, and vLLM's prompt log-probabilities back as the
sparse teacher outputs the loss reads (:class:`losses.outputs.TopK`).

Row r of a micro-batch becomes the prompt ``input_ids[r] + [labels[r, -1]]``: the whole
block of s + 1 tokens. vLLM answers, per prompt, ``prompt_logprobs``: entry 0 is null
(nothing precedes the first token), entry j >= 1 the distribution predicting prompt token
j, as ``{"<token id>": {"logprob", "rank" (1-based), "decoded_token"}}`` holding the top-k
plus token j itself when it is not among them (with its true rank, > k). Position t of the
row predicts token t + 1, so its outputs are entry t + 1; the label's log-probability is
token t + 1's own entry, known whether or not it is in the top-k.

Nothing is cut or renormalised: the k entries of best rank, in rank order; the tail is
log(1 - sum(exp(top-k))) in float64, -inf when the top-k hold all the mass (as
``TopK.from_logits`` makes it: k = vocabulary always gives an empty tail). An answer that
breaks any of this is a :class:`MalformedResponse` naming the URL and the field.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from losses.outputs import TopK
from teachers.openai_client import MalformedResponse

IGNORE_INDEX = -100
# A log-probability a little above 0 is rounding (a token holding nearly all the mass);
# beyond this it is not a log-probability.
_LOGPROB_SLACK = 1e-4


def prompts_of(input_ids: torch.Tensor, labels: torch.Tensor) -> list[list[int]]:
    """(b, s) inputs and labels -> b prompts of s + 1 token ids. A last label of -100 (no
    target) is sent as token 0: only that token's own entry would read it."""
    last = labels[:, -1:].clone()
    last[last == IGNORE_INDEX] = 0
    return torch.cat([input_ids, last.to(input_ids.dtype)], dim=1).tolist()


def completion_body(model: str, prompts: list[list[int]], k: int) -> dict[str, Any]:
    """The /v1/completions request: score the prompts, generate one token (some vLLM
    versions refuse 0), which is ignored."""
    return {"model": model, "prompt": prompts, "max_tokens": 1, "temperature": 0,
            "prompt_logprobs": k}


def choices_in_order(body: Any, prompts: int, where: str) -> list[Any]:
    """Each prompt's ``prompt_logprobs``, in prompt order (choices may come in any order:
    matched by ``index``)."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list):
        raise MalformedResponse(f"{where}: the answer has no 'choices' list")
    found: dict[int, Any] = {}
    for i, choice in enumerate(choices):
        index = choice.get("index") if isinstance(choice, dict) else None
        if not _is_int(index) or not 0 <= index < prompts or index in found:
            raise MalformedResponse(f"{where}: choices[{i}].index is {index!r}; expected each "
                                    f"of 0..{prompts - 1} once (one choice per prompt)")
        if "prompt_logprobs" not in choice:
            raise MalformedResponse(f"{where}: choices[{i}] has no 'prompt_logprobs' (a server "
                                    "that does not support them cannot teach)")
        found[index] = choice["prompt_logprobs"]
    if len(found) != prompts:
        raise MalformedResponse(f"{where}: {len(found)} choices for {prompts} prompts")
    return [found[i] for i in range(prompts)]


def parse_prompt(positions: Any, prompt: Sequence[int], labels: Sequence[int], k: int,
                 vocab_rows: int, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One prompt's ``prompt_logprobs`` -> (log_probs (s, k) float64, indices (s, k)
    int64, label_log_probs (s,) float64), s = len(prompt) - 1. A label that is not prompt
    token t + 1 (possible outside packed data) is read from the entries if there, else
    -inf, as a top-k source without it would count it."""
    if not isinstance(positions, list) or len(positions) != len(prompt):
        size = len(positions) if isinstance(positions, list) else type(positions).__name__
        raise MalformedResponse(f"{where}: prompt_logprobs has {size} entries for a prompt of "
                                f"{len(prompt)} tokens")
    if positions[0] is not None:
        raise MalformedResponse(f"{where}: prompt_logprobs[0] should be null (nothing precedes "
                                "the first token)")
    steps = len(prompt) - 1
    log_probs = np.empty((steps, k), np.float64)
    indices = np.empty((steps, k), np.int64)
    label_log_probs = np.empty(steps, np.float64)
    for t in range(steps):
        field = f"{where}: prompt_logprobs[{t + 1}]"
        entries = _entries(positions[t + 1], vocab_rows, field)
        ranked = sorted((e for e in entries.items() if e[1][1] <= k),
                        key=lambda e: (e[1][1], -e[1][0], e[0]))
        if len(ranked) < k:
            raise MalformedResponse(f"{field}: {len(ranked)} entries of rank <= {k}; asked for "
                                    f"the top {k}")
        for i, (token, (logprob, _)) in enumerate(ranked[:k]):
            indices[t, i], log_probs[t, i] = token, logprob
        own = prompt[t + 1]
        if own not in entries:
            raise MalformedResponse(f"{field}: no entry for the prompt's own token {own} (vLLM "
                                    "always includes it)")
        label = labels[t] if labels[t] != IGNORE_INDEX else own
        label_log_probs[t] = entries[label][0] if label in entries else -math.inf
    return log_probs, indices, label_log_probs


def _entries(position: Any, vocab_rows: int, field: str) -> dict[int, tuple[float, int]]:
    """{token id: (logprob, rank)} of one position, each checked."""
    if not isinstance(position, dict) or not position:
        raise MalformedResponse(f"{field}: expected a mapping of token ids to log-probabilities, "
                                f"got {type(position).__name__}")
    out: dict[int, tuple[float, int]] = {}
    for key, entry in position.items():
        token = int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else None
        if token is None or token >= vocab_rows:
            raise MalformedResponse(f"{field}: token id {key!r} is not an id of the shared "
                                    f"vocabulary (0..{vocab_rows - 1})")
        logprob = entry.get("logprob") if isinstance(entry, dict) else None
        rank = entry.get("rank") if isinstance(entry, dict) else None
        if not _is_number(logprob) or math.isnan(logprob) or logprob > _LOGPROB_SLACK:
            raise MalformedResponse(f"{field}[{key!r}].logprob is {logprob!r}; expected a "
                                    "log-probability (a number <= 0)")
        if not _is_int(rank) or rank < 1:
            raise MalformedResponse(f"{field}[{key!r}].rank is {rank!r}; expected an integer "
                                    ">= 1")
        out[token] = (float(logprob), rank)
    return out


def to_topk(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
            vocab_rows: int) -> TopK:
    """Rows parsed by :func:`parse_prompt` -> one TopK (b, s, k), with its tail mass."""
    log_probs = np.stack([p[0] for p in parts])  # (b, s, k) float64
    indices = np.stack([p[1] for p in parts])
    kept = np.exp(log_probs).sum(axis=-1)        # (b, s), in float64
    # Clamped: rounding can put the top-k's sum at or a hair above 1.
    with np.errstate(divide="ignore"):
        log_tail = np.log1p(-np.minimum(kept, 1.0))
    if indices.shape[-1] >= vocab_rows:  # every token is in the top-k: nothing is left
        log_tail[...] = -np.inf
    return TopK(torch.from_numpy(log_probs).float(), torch.from_numpy(indices),
                torch.from_numpy(log_tail).float(),
                torch.from_numpy(np.stack([p[2] for p in parts])).float())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
