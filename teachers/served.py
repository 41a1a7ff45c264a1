"""``teacher.kind: served``: a frozen teacher answering over HTTP, served by an inference
engine (``vllm serve`` of a transformers checkpoint, or ``distill serve-teacher``).

For every micro-batch the teacher's top-k log-probabilities at each position, and its
log-probability of each label, come from ``/v1/completions`` with ``prompt_logprobs``
(``teachers.prompt_logprobs`` turns the answer into a :class:`~losses.outputs.TopK`, the
form a cache gives). The rows of a micro-batch go out ``batch_size`` per request,
concurrently across the replicas (``teachers.openai_client``), and a micro-batch ahead of
the student (``runs_ahead``, ``waits_on_io``: the loop's prefetcher runs it in a worker
thread, on a CPU too).

Before any work, :func:`build` checks each replica: it answers (/health), serves the model
(/v1/models), holds the whole block in its context, decodes a probe of token ids exactly as
the data's tokenizer does (/detokenize; the last id included), and agrees with the others.
Its log-probabilities of a fixed probe prompt are the teacher's ``identity()``, which the
run's fingerprint records, so ``--resume`` against another model is refused.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import httpx
import torch

from losses.outputs import TopK
from teachers.base import MicroBatch, Placement, Teacher, TeacherSetup
from teachers.openai_client import (MalformedResponse, ReplicaFailed, Replicas,
                                    RequestRefused, TeacherUnavailable)
from teachers.prompt_logprobs import (choices_in_order, completion_body, parse_prompt,
                                      prompts_of, to_topk)

__all__ = ["ServedTeacher", "TeacherUnavailable", "build", "check"]

PROBE_DECIMALS = 4     # the identity's log-probabilities, rounded: a fingerprint, not a test
REPLICA_TOLERANCE = 1e-2  # replicas on other hardware round differently, models differ more
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def probe_ids(vocab: int) -> list[int]:
    """Token ids spread over the vocabulary, the last one included (a tokenizer that differs
    in size or order differs there): the /detokenize probe and the identity prompt."""
    return sorted({min(i, vocab - 1) for i in (0, 1, 2, vocab // 4, vocab // 2,
                                               3 * vocab // 4, vocab - 2, vocab - 1)})


class ServedTeacher(Teacher):
    """Answers with TopK from a served model; built only by :func:`build` (which checks the
    servers first)."""

    runs_ahead = True    # frozen: its answers do not depend on the student
    waits_on_io = True   # the work happens on the server

    def __init__(self, client: Replicas, model: str, top_k: int, vocab_rows: int,
                 batch_size: int, probe: list[float], vocab_size: int | None) -> None:
        self.client = client
        self.model = model
        self.top_k = top_k
        self.vocab_rows = vocab_rows
        self.batch_size = batch_size
        self.probe = probe
        self.vocab_size = vocab_size  # as the server says it (vLLM does not)
        self.device: torch.device | None = None

    def describe(self) -> str:
        return (f"`{self.model}` served at {self.client.describe()} (frozen, top-{self.top_k} "
                "prompt log-probabilities over HTTP)")

    def identity(self) -> dict[str, Any]:
        return {"model": self.model, "probe": self.probe}

    def prepare(self, placement: Placement) -> None:
        self.device = placement.accelerator.device

    def outputs(self, batch: MicroBatch) -> TopK:
        """One request per ``batch_size`` rows, all in flight at once; TeacherUnavailable
        when a request fails past its retries or its answer is malformed."""
        prompts = prompts_of(batch.input_ids.cpu(), batch.labels.cpu())
        labels = batch.labels.cpu().tolist()
        chunks = [range(i, min(i + self.batch_size, len(prompts)))
                  for i in range(0, len(prompts), self.batch_size)]
        bodies = [completion_body(self.model, [prompts[r] for r in chunk], self.top_k)
                  for chunk in chunks]
        parts = []
        for chunk, (url, answer) in zip(chunks, self.client.map("POST", "/v1/completions",
                                                                 bodies)):
            where = f"{url}/v1/completions"
            for offset, positions in enumerate(choices_in_order(answer, len(chunk), where)):
                row = chunk[offset]
                parts.append(parse_prompt(positions, prompts[row], labels[row], self.top_k,
                                          self.vocab_rows, f"{where}: choice {offset}"))
        sparse = to_topk(parts, self.vocab_rows)
        return sparse if self.device is None else sparse.to(self.device)


# ---- before any work: the servers, the model, its vocabulary and identity


def _pick_model(listing: Any, wanted: str | None, url: str) -> dict[str, Any]:
    """The model card of ``wanted`` (None: the only model served) from /v1/models."""
    cards = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(cards, list) or not all(isinstance(c, dict) and isinstance(c.get("id"), str)
                                              for c in cards):
        raise MalformedResponse(f"{url}/v1/models: expected {{'data': [{{'id': ...}}, ...]}}")
    names = [card["id"] for card in cards]
    if wanted is None and len(names) == 1:
        return cards[0]
    if wanted is None:
        raise ValueError(f"teacher.served.model: {url} serves {len(names)} models "
                         f"({', '.join(names) or 'none'}); name the teacher.")
    if wanted not in names:
        raise ValueError(f"teacher.served.model: {url} does not serve {wanted!r}; it serves "
                         f"{', '.join(names) or 'no model'}.")
    return cards[names.index(wanted)]


def _check_vocabulary(client: Replicas, url: str, model: str, card: dict, tokenizer) -> None:
    """The server's vocabulary is the data's: its size where it says it, and a probe of
    token ids decoded by both."""
    tokens = len(tokenizer)
    size = card.get("vocab_size")
    if size is not None and size != tokens:
        raise ValueError(f"vocabulary: the model {model!r} at {url} has {size} tokens, the "
                         f"data's tokenizer {tokens}; teacher and student must share one "
                         "vocabulary (set data.tokenizer to the served model's tokenizer).")
    for token in probe_ids(tokens):
        answer = client.once(url, "POST", "/detokenize", {"model": model, "tokens": [token]})
        text = answer.get("prompt") if isinstance(answer, dict) else None
        if not isinstance(text, str):
            raise MalformedResponse(f"{url}/detokenize: expected {{'prompt': text}}")
        ours = tokenizer.decode([token])
        if text != ours:
            raise ValueError(f"vocabulary: token id {token} is {text!r} for the model {model!r} "
                             f"at {url} but {ours!r} in the data's tokenizer ({tokens} tokens); "
                             "set data.tokenizer to the served model's tokenizer.")


def _probe(client: Replicas, url: str, model: str, k: int, vocab_rows: int) -> list[float]:
    """The model's log-probabilities of a fixed prompt's tokens (asked with the run's k, so
    a server that refuses it says so now), rounded."""
    prompt = probe_ids(vocab_rows)
    try:
        answer = client.once(url, "POST", "/v1/completions", completion_body(model, [prompt], k))
    except RequestRefused as exc:  # most often a k above vLLM's --max-logprobs
        raise ValueError(f"teacher.served.top_k: the server refused prompt_logprobs={k} ({exc}); "
                         "vLLM allows at most its --max-logprobs (default 20): lower "
                         "teacher.served.top_k or raise --max-logprobs.") from None
    where = f"{url}/v1/completions"
    (positions,) = choices_in_order(answer, 1, where)
    _, _, own = parse_prompt(positions, prompt, prompt[1:], k, vocab_rows, where)
    return [round(float(v), PROBE_DECIMALS) for v in own]


def _check_replica(client: Replicas, url: str, cfg, setup: TeacherSetup,
                   k: int) -> dict[str, Any]:
    client.once(url, "GET", "/health")
    card = _pick_model(client.once(url, "GET", "/v1/models"), cfg.model, url)
    model = card["id"]
    context = card.get("max_model_len")
    # The prompt is the whole block (block_size + 1 tokens) and one token is generated.
    if isinstance(context, int) and setup.block_size is not None \
            and setup.block_size + 2 > context:
        raise ValueError(f"data.block_size: got {setup.block_size}, but the model {model!r} "
                         f"at {url} takes at most {context} tokens (max_model_len), and a "
                         f"request holds block_size + 2; use a block_size <= {context - 2}.")
    if setup.tokenizer is not None:
        _check_vocabulary(client, url, model, card, setup.tokenizer)
    size = card.get("vocab_size")
    return {"model": model, "probe": _probe(client, url, model, k, setup.vocab_rows),
            "vocab_size": size if isinstance(size, int) else None}


def _connect(client: Replicas, cfg, setup: TeacherSetup, k: int) -> dict[str, Any]:
    """Every replica checked; those that do not answer are left to the retries (with a
    word), but at least one must answer, and all that do must serve the same model."""
    facts: list[dict[str, Any]] = []
    down: list[str] = []
    for url in client.urls:
        try:
            facts.append({"url": url, **_check_replica(client, url, cfg, setup, k)})
        except ReplicaFailed as exc:
            client.failed(url)
            down.append(str(exc))
        except TeacherUnavailable as exc:  # refused or malformed: the setup is wrong
            raise ValueError(f"teacher.served: {exc}") from None
    if not facts:
        raise ValueError("teacher.served.urls: no server answered: " + "; ".join(down)
                         + ". Start the server (`distill serve-teacher MODEL_DIR --port P` or "
                         "`vllm serve MODEL`) or correct the URL.")
    first = facts[0]
    for other in facts[1:]:
        same = other["model"] == first["model"] and len(other["probe"]) == len(first["probe"]) \
            and all(math.isclose(a, b, abs_tol=REPLICA_TOLERANCE)
                    for a, b in zip(other["probe"], first["probe"]))
        if not same:
            raise ValueError(f"teacher.served.urls: {other['url']} and {first['url']} do not "
                             f"serve the same model ({other['model']!r} vs {first['model']!r}, "
                             "or other log-probabilities of the same probe); list replicas of "
                             "one model only.")
    for problem in down:
        print(f"distill: teacher server not answering at start, left to the retries: {problem}")
    return first


def build(cfg, setup: TeacherSetup) -> ServedTeacher:
    served = cfg.served
    key = None
    if served.api_key_env is not None:
        key = os.environ.get(served.api_key_env)
        if not key:
            raise ValueError(f"teacher.served.api_key_env: the environment variable "
                             f"{served.api_key_env} is not set; it should hold the server's "
                             "API key.")
    k = min(served.top_k, setup.vocab_rows)
    client = Replicas(served.urls, key, served.timeout_s, served.retries)
    try:
        facts = _connect(client, served, setup, k)
    except BaseException:
        client.close()
        raise
    return ServedTeacher(client, facts["model"], k, setup.vocab_rows, served.batch_size,
                         facts["probe"], facts["vocab_size"])


def _check_url(url: str, key: str) -> None:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"{key}: {url!r} is not a URL ({exc}).") from None
    if parsed.userinfo:  # not echoed: it would put a password in logs
        raise ValueError(f"{key}: the URL holds credentials (user:password@...); name an "
                         "environment variable holding the key in teacher.served.api_key_env.")
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{key}: {url!r} is not an http(s) URL with a host, e.g. "
                         "http://127.0.0.1:8000.")
    if parsed.query or parsed.fragment:
        raise ValueError(f"{key}: {url!r} has a query or fragment; give the server's base URL.")
    if parsed.path.rstrip("/").endswith("/v1"):
        raise ValueError(f"{key}: {url!r} ends in /v1; give the server's root (e.g. "
                         "http://127.0.0.1:8000): /health and /detokenize live there.")


def check(cfg) -> None:
    """``kind: served``: URLs to reach and a key named, never contacted here."""
    served = cfg.served
    if not served.urls:
        raise ValueError("teacher.served.urls: kind 'served' needs the base URL of at least one "
                         "server of the teacher, e.g. [http://127.0.0.1:8000].")
    for i, url in enumerate(served.urls):
        _check_url(url, f"teacher.served.urls[{i}]")
    normal = [url.rstrip("/") for url in served.urls]
    twice = sorted({url for url in normal if normal.count(url) > 1})
    if twice:
        raise ValueError(f"teacher.served.urls: {twice[0]} is listed twice; list each replica "
                         "once.")
    if served.model is not None and not served.model.strip():
        raise ValueError("teacher.served.model: empty; null uses the server's only model.")
    if served.api_key_env is not None and not _ENV_NAME.fullmatch(served.api_key_env):
        raise ValueError("teacher.served.api_key_env: expected the NAME of an environment "
                         "variable holding the key (letters, digits and _), not the key "
                         "itself; the value given is not shown.")
