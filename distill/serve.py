"""``distill serve-teacher MODEL_DIR``: a frozen teacher behind the subset of vLLM's
OpenAI-compatible API that distillation needs, for CPU machines, tests and users without
vLLM (``teacher.kind: served`` talks to either).

Endpoints (vLLM's request and response shapes):
    GET  /health            200 while serving
    GET  /v1/models         the one model (plus ``vocab_size``, which vLLM does not give)
    POST /tokenize          {"model", "prompt": text} -> {"tokens", "count", "max_model_len"}
    POST /detokenize        {"model", "tokens": [ids]} -> {"prompt": text}
    POST /v1/completions    token-id prompts with ``prompt_logprobs: k`` -> per prompt position
                            the top-k log-probabilities and the prompt token's own (its rank),
                            ``max_tokens`` 0 or 1 (the greedy next token)

Concurrent requests are batched: while one forward runs, new requests queue, and the next
forward takes every queued prompt up to ``max_batch_tokens`` (prompts are right-padded:
causal attention never lets a real position see the padding after it). The forward runs in
a worker thread so the event loop keeps accepting requests. Served with uvicorn (SIGINT and
SIGTERM stop it cleanly); binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from distill.errors import UserError

Prompt = list[int]


def score_prompts(logits: torch.Tensor, prompts: list[Prompt], k: int) -> list[list]:
    """vLLM's ``prompt_logprobs`` for each prompt from the model's logits (batch, length, V)
    over the right-padded prompts: position 0 is None; position j >= 1 maps the ids of the
    top-k tokens predicting prompt token j, and that token itself, to (logprob, rank), rank
    1-based (1 + the tokens strictly more likely)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)          # (batch, length, V)
    k = min(k, log_probs.shape[-1])
    top_values, top_ids = log_probs.topk(k, dim=-1)                 # (batch, length, k)
    scored = []
    for row, prompt in enumerate(prompts):
        n = len(prompt)
        targets = torch.tensor(prompt[1:], dtype=torch.long)        # token j for j = 1..n-1
        before = log_probs[row, : n - 1]                            # predicts tokens 1..n-1
        own = before.gather(-1, targets[:, None]).squeeze(-1)
        ranks = (before > own[:, None]).sum(dim=-1) + 1
        values, ids = top_values[row, : n - 1].tolist(), top_ids[row, : n - 1].tolist()
        positions: list = [None]
        for j in range(n - 1):
            entries = {token: (value, rank) for rank, (token, value)
                       in enumerate(zip(ids[j], values[j]), start=1)}
            entries.setdefault(prompt[j + 1], (float(own[j]), int(ranks[j])))
            positions.append(entries)
        scored.append(positions)
    return scored


@dataclass
class _Job:
    prompts: list[Prompt]
    k: int
    done: asyncio.Future


@dataclass
class _Counters:
    requests: int = 0
    tokens: int = 0
    since: float = field(default_factory=time.perf_counter)


class TeacherServer:
    """The model, its tokenizer, the batching queue and the FastAPI app."""

    def __init__(self, model_dir: str, name: str, device: str, dtype: str, max_logprobs: int | None,
                 max_batch_tokens: int, api_key: str | None, log_every_s: float) -> None:
        from transformers import AutoTokenizer

        from students.sources import pretrained
        from teachers.hf import HFTeacher

        self.tokenizer = pretrained(AutoTokenizer, model_dir, key="MODEL_DIR")
        self.vocab = len(self.tokenizer)
        teacher = HFTeacher(model_dir, self.vocab, dtype)  # efficient MoE forward, no remote code
        self.model = teacher.model.to(device)
        self.config = teacher.config
        self.name = name
        self.device = torch.device(device)
        self.max_logprobs = max_logprobs or self.vocab
        self.max_model_len = int(getattr(self.config, "max_position_embeddings", 0) or 0) or None
        self.max_batch_tokens = max_batch_tokens
        self.api_key = api_key
        self.log_every_s = log_every_s
        # Each id's text, once: every response names the text of k entries per position.
        self.decoded = [self.tokenizer.decode([i]) for i in range(self.vocab)]
        self.counters = _Counters()
        self.queue: asyncio.Queue[_Job] | None = None

    # ---- the model side

    @torch.inference_mode()
    def _forward(self, prompts: list[Prompt]) -> torch.Tensor:
        length = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), length, dtype=torch.long)   # right-padded with id 0
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(prompt)
        logits = self.model(input_ids=ids.to(self.device)).logits[..., : self.vocab]
        return logits.float().cpu()

    def _score(self, jobs: list[_Job]) -> list[tuple[list, list[int]]]:
        """One forward over every job's prompts: (prompt_logprobs, next tokens) per job."""
        logits = self._forward([p for job in jobs for p in job.prompts])
        results, start = [], 0
        for job in jobs:
            rows = logits[start:start + len(job.prompts)]
            following = [int(rows[r, len(p) - 1].argmax()) for r, p in enumerate(job.prompts)]
            results.append((score_prompts(rows, job.prompts, job.k), following))
            start += len(job.prompts)
        return results

    async def _batcher(self) -> None:
        """Take the first queued job, then every job queued meanwhile, up to the token
        budget; one forward in a worker thread; answer each job."""
        while True:
            jobs = [await self.queue.get()]
            budget = self.max_batch_tokens - sum(map(len, jobs[0].prompts))
            while not self.queue.empty() and budget > 0:
                job = self.queue.get_nowait()
                jobs.append(job)
                budget -= sum(map(len, job.prompts))
            try:
                results = await asyncio.to_thread(self._score, jobs)
            except Exception as exc:  # answer every waiting request, keep serving
                for job in jobs:
                    job.done.set_exception(exc)
                continue
            for job, result in zip(jobs, results):
                job.done.set_result(result)

    async def _reporter(self) -> None:
        """A line with requests and prompt tokens per second, while there is traffic."""
        while True:
            await asyncio.sleep(self.log_every_s)
            counters, now = self.counters, time.perf_counter()
            if counters.requests:
                span = now - counters.since
                print(f"distill serve-teacher: {counters.requests / span:.1f} requests/s, "
                      f"{counters.tokens / span:.0f} prompt tokens/s over {span:.0f} s",
                      flush=True)
            self.counters = _Counters(since=now)

    # ---- the HTTP side

    def app(self):
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def lifespan(_app):
            self.queue = asyncio.Queue()
            tasks = [asyncio.create_task(self._batcher()), asyncio.create_task(self._reporter())]
            yield
            for task in tasks:
                task.cancel()

        app = FastAPI(title="distill serve-teacher", lifespan=lifespan)

        class ApiError(Exception):
            def __init__(self, message: str, code: int = 400) -> None:
                self.message, self.code = message, code

        @app.exception_handler(ApiError)
        async def api_error(_request, exc: ApiError):
            kind = {400: "BadRequestError", 401: "AuthenticationError",
                    404: "NotFoundError"}.get(exc.code, "InternalServerError")
            return JSONResponse({"object": "error", "message": exc.message, "type": kind,
                                 "code": exc.code}, status_code=exc.code)

        @app.middleware("http")
        async def authenticate(request: Request, call_next):
            if self.api_key and request.url.path.startswith("/v1") and \
                    request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"object": "error", "message": "missing or wrong API key",
                                     "type": "AuthenticationError", "code": 401},
                                    status_code=401)
            return await call_next(request)

        def check_model(body: dict) -> None:
            if body.get("model", self.name) != self.name:
                raise ApiError(f"The model `{body.get('model')}` does not exist.", 404)

        def check_ids(ids: Any, where: str) -> list[int]:
            if not isinstance(ids, list) or not ids or not all(
                    isinstance(i, int) and not isinstance(i, bool) and 0 <= i < self.vocab
                    for i in ids):
                raise ApiError(f"{where}: a non-empty list of token ids in [0, {self.vocab})")
            if self.max_model_len and len(ids) > self.max_model_len:
                raise ApiError(f"{where}: {len(ids)} tokens; the model takes at most "
                               f"{self.max_model_len}")
            return ids

        @app.get("/health")
        async def health():
            return Response(status_code=200)

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{
                "id": self.name, "object": "model", "created": 0, "owned_by": "distill",
                "root": self.name, "max_model_len": self.max_model_len,
                "vocab_size": self.vocab}]}

        @app.post("/tokenize")
        async def tokenize(request: Request):
            body = await request.json()
            check_model(body)
            tokens = self.tokenizer(str(body.get("prompt", "")),
                                    add_special_tokens=False)["input_ids"]
            return {"tokens": tokens, "count": len(tokens), "max_model_len": self.max_model_len}

        @app.post("/detokenize")
        async def detokenize(request: Request):
            body = await request.json()
            check_model(body)
            return {"prompt": self.tokenizer.decode(check_ids(body.get("tokens"), "tokens"))}

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await request.json()
            check_model(body)
            prompt = body.get("prompt")
            prompts = prompt if isinstance(prompt, list) and prompt and \
                isinstance(prompt[0], list) else [prompt]
            prompts = [check_ids(p, f"prompt[{i}]") for i, p in enumerate(prompts)]
            k = body.get("prompt_logprobs")
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= self.max_logprobs:
                raise ApiError(f"prompt_logprobs: an integer in [0, {self.max_logprobs}] "
                               f"(--max-logprobs); got {k!r}")
            if body.get("max_tokens", 1) not in (0, 1):
                raise ApiError("max_tokens: this server scores prompts; use 0 or 1")
            done = asyncio.get_running_loop().create_future()
            await self.queue.put(_Job(prompts, k, done))
            scored, following = await done
            self.counters.requests += 1
            self.counters.tokens += sum(map(len, prompts))
            generate = body.get("max_tokens", 1) == 1
            choices = [{"index": i, "text": self.decoded[nxt] if generate else "",
                        "logprobs": None, "finish_reason": "length", "stop_reason": None,
                        "prompt_logprobs": [None if pos is None else {
                            str(t): {"logprob": v, "rank": r, "decoded_token": self.decoded[t]}
                            for t, (v, r) in pos.items()} for pos in positions]}
                       for i, (positions, nxt) in enumerate(zip(scored, following))]
            tokens = sum(map(len, prompts))
            answer = {"id": f"cmpl-{time.time_ns()}", "object": "text_completion",
                      "created": int(time.time()), "model": self.name, "choices": choices,
                      "usage": {"prompt_tokens": tokens,
                                "completion_tokens": len(prompts) * generate,
                                "total_tokens": tokens + len(prompts) * generate}}
            # Serialised here, once: FastAPI's own encoder walks every nested entry first,
            # which for k entries per position cost ten times the model's forward.
            return Response(json.dumps(answer, separators=(",", ":")),
                            media_type="application/json")

        return app


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
          device: str | None = None, dtype: str = "float32", max_logprobs: int | None = None,
          max_batch_tokens: int = 16384, api_key_env: str | None = None,
          log_every_s: float = 10.0) -> None:
    """Load the teacher and serve it until SIGINT or SIGTERM."""
    import uvicorn

    from students.sources import CustomCodeRefused

    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise UserError(f"--api-key-env: the environment variable {api_key_env} is unset "
                            "or empty.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        server = TeacherServer(model_dir, name or model_dir, device, dtype, max_logprobs,
                               max_batch_tokens, api_key, log_every_s)
    except (CustomCodeRefused, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise UserError(f"MODEL_DIR: could not load {model_dir!r}: {exc}") from None
    print(f"distill serve-teacher: {server.name} (vocabulary {server.vocab}, prompt_logprobs "
          f"up to {server.max_logprobs}) on http://{host}:{port} ({device})", flush=True)
    try:
        uvicorn.run(server.app(), host=host, port=port, log_level="warning")
    except KeyboardInterrupt:  # uvicorn raises the signal that stopped it again, once shut down
        pass
    print("distill serve-teacher: stopped", flush=True)


# ---- starting a local server from Python (tests, benchmarks, notebooks)

def free_port() -> int:
    """A TCP port nothing listens on now, on the loopback interface."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(model_dir: str | os.PathLike, port: int, *extra: str, env: dict | None = None,
           timeout: float = 120) -> subprocess.Popen:
    """`distill serve-teacher MODEL_DIR --port PORT *extra` in a child process on
    127.0.0.1, returned once /health answers (within ``timeout`` seconds, else it is stopped
    and RuntimeError says why); stop it with :func:`stop_server`."""
    import urllib.request

    process = subprocess.Popen(
        [sys.executable, "-m", "distill", "serve-teacher", str(model_dir), "--port", str(port),
         *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve-teacher exited: {process.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.3)
    stop_server(process)
    raise RuntimeError(f"serve-teacher did not answer /health within {timeout} s")


def stop_server(process: subprocess.Popen) -> str:
    """SIGTERM, then SIGKILL if it has not stopped within 30 s; returns its output."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.stdout.read()
