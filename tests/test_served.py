"""`teacher.kind: served`: the client of a teacher behind vLLM's OpenAI-compatible API.

The parser against a literal vLLM answer (expected tensors written out by hand); faults
(unreachable, malformed, slow, a replica down, another vocabulary) against in-test servers
on 127.0.0.1; and end to end against `distill serve-teacher`: the same losses as `cached`
at the same k and as `hf` at k = vocabulary, and a server killed mid-run whose run resumes
exactly."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from distill import cli
from distill.errors import TrainingStopped, UserError
from distill.metrics import read_metrics
from distill.recipe import load_recipe
from distill.train import run
from teachers import MicroBatch, TeacherUnavailable
from teachers.openai_client import MalformedResponse, Replicas, RequestRefused
from teachers.prompt_logprobs import prompts_of
from teachers.served import ServedTeacher
from tests.conftest import QUICKSTART, free_port, start_teacher_server, stop_server, \
    tiny_overrides

# ---- 1. the parser against a recorded vLLM answer

# Two prompts of 4 tokens (s = 3 positions each), k = 2, in vLLM's documented shape: the
# first position null, token ids as string keys, the prompt's own token added with its rank
# where it is outside the top-2 (prompt 0 position 2, prompt 1 position 3), an entry order
# that is not the rank order (prompt 1 position 1), a top-2 whose sum rounds above 1
# (prompt 0 position 3: its tail is empty), and the choices out of order.
VLLM_ANSWER = json.loads("""
{"id": "cmpl-3f1c2a", "object": "text_completion", "created": 1732400000,
 "model": "teacher",
 "choices": [
  {"index": 1, "text": "x", "logprobs": null, "finish_reason": "length", "stop_reason": null,
   "prompt_logprobs": [null,
     {"2": {"logprob": -0.8, "rank": 2, "decoded_token": "b"},
      "9": {"logprob": -0.7, "rank": 1, "decoded_token": "i"}},
     {"9": {"logprob": -0.05, "rank": 1, "decoded_token": "i"},
      "5": {"logprob": -3.2, "rank": 2, "decoded_token": "e"}},
     {"1": {"logprob": -1.0, "rank": 1, "decoded_token": "a"},
      "3": {"logprob": -1.1, "rank": 2, "decoded_token": "c"},
      "4": {"logprob": -6.0, "rank": 9, "decoded_token": "d"}}]},
  {"index": 0, "text": "y", "logprobs": null, "finish_reason": "length", "stop_reason": null,
   "prompt_logprobs": [null,
     {"3": {"logprob": -0.2, "rank": 1, "decoded_token": "c"},
      "8": {"logprob": -1.9, "rank": 2, "decoded_token": "h"}},
     {"4": {"logprob": -0.5, "rank": 1, "decoded_token": "d"},
      "6": {"logprob": -1.2, "rank": 2, "decoded_token": "f"},
      "7": {"logprob": -3.0, "rank": 5, "decoded_token": "g"}},
     {"0": {"logprob": 0.00001, "rank": 1, "decoded_token": "!"},
      "1": {"logprob": -40.0, "rank": 2, "decoded_token": "a"}}]}],
 "usage": {"prompt_tokens": 8, "total_tokens": 10, "completion_tokens": 2}}
""")
INPUT_IDS = [[5, 3, 7], [2, 2, 9]]
LABELS = [[3, 7, 1], [2, 9, 4]]
URL = "http://vllm.test:8000"


def _teacher(handler, k: int = 2, vocab_rows: int = 10, batch_size: int = 8,
             retries: int = 0) -> ServedTeacher:
    """A served teacher whose requests ``handler`` answers (no socket)."""
    client = Replicas([URL], None, timeout_s=5, retries=retries, backoff_s=0.01,
                      transport=httpx.MockTransport(handler))
    return ServedTeacher(client, "teacher", k, vocab_rows, batch_size, probe=[],
                         vocab_size=None)


def _batch(input_ids=INPUT_IDS, labels=LABELS) -> MicroBatch:
    return MicroBatch(torch.tensor(input_ids), torch.tensor(labels), torch.arange(2))


def test_a_recorded_vllm_answer_becomes_the_topk_written_out_by_hand():
    sent = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, json=VLLM_ANSWER)

    out = _teacher(answer).outputs(_batch())
    # each row whole plus its last label; one token generated (ignored), greedy
    assert sent == [("/v1/completions", {"model": "teacher", "prompt": [[5, 3, 7, 1],
                                                                         [2, 2, 9, 4]],
                                         "max_tokens": 1, "temperature": 0,
                                         "prompt_logprobs": 2})]
    # position t reads prompt_logprobs[t + 1]; the k of best rank, in rank order
    assert out.indices.tolist() == [[[3, 8], [4, 6], [0, 1]], [[9, 2], [9, 5], [1, 3]]]
    assert out.indices.dtype == torch.long
    expected_top = [[[-0.2, -1.9], [-0.5, -1.2], [0.00001, -40.0]],
                    [[-0.7, -0.8], [-0.05, -3.2], [-1.0, -1.1]]]
    assert out.log_probs.dtype == torch.float32
    torch.testing.assert_close(out.log_probs, torch.tensor(expected_top))
    # the label's own entry, in the top-k or not (-3.0 and -6.0 are ranks 5 and 9)
    torch.testing.assert_close(out.label_log_probs, torch.tensor([[-0.2, -3.0, -40.0],
                                                                  [-0.8, -0.05, -6.0]]))
    # log(1 - sum of the top-k probabilities); none left where they round above 1
    tail = [[math.log(1 - math.exp(-0.2) - math.exp(-1.9)),
             math.log(1 - math.exp(-0.5) - math.exp(-1.2)), -math.inf],
            [math.log(1 - math.exp(-0.7) - math.exp(-0.8)),
             math.log(1 - math.exp(-0.05) - math.exp(-3.2)),
             math.log(1 - math.exp(-1.0) - math.exp(-1.1))]]
    torch.testing.assert_close(out.log_tail, torch.tensor(tail), rtol=1e-6, atol=0)


def test_rows_go_out_batch_size_per_request_and_no_target_is_token_0():
    prompts_seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        prompts_seen.append(body["prompt"])
        (prompt,) = body["prompt"]  # one row per request here: rebuild its answer
        choice = next(c for c in VLLM_ANSWER["choices"]
                      if c["index"] == (0 if prompt[0] == 5 else 1))
        return httpx.Response(200, json={**VLLM_ANSWER, "choices": [{**choice, "index": 0}]})

    labels = [[3, 7, -100], [2, -100, 4]]
    out = _teacher(answer, batch_size=1).outputs(_batch(labels=labels))
    assert sorted(prompts_seen) == [[[2, 2, 9, 4]], [[5, 3, 7, 0]]]  # -100 sent as token 0
    assert out.indices[0, 0].tolist() == [3, 8] and out.indices[1, 2].tolist() == [1, 3]
    # a position without a target reads its prompt token's entry (any finite value would do)
    assert out.label_log_probs[1, 1].item() == pytest.approx(-0.05)
    assert prompts_of(torch.tensor([[1, 2]]), torch.tensor([[2, -100]])) == [[1, 2, 0]]


def _broken(change) -> dict:
    body = json.loads(json.dumps(VLLM_ANSWER))
    change(body)
    return body


def _pos(body, index, j):
    return next(c for c in body["choices"] if c["index"] == index)["prompt_logprobs"][j]


@pytest.mark.parametrize("change, says", [
    (lambda b: _pos(b, 0, 1).update({"12": {"logprob": -9.0, "rank": 3}}),
     "choice 0: prompt_logprobs[1]: token id '12' is not an id of the shared vocabulary"),
    (lambda b: _pos(b, 1, 3).pop("4"),
     "choice 1: prompt_logprobs[3]: no entry for the prompt's own token 4"),
    (lambda b: _pos(b, 0, 2).pop("6"), "prompt_logprobs[2]: 1 entries of rank <= 2"),
    (lambda b: _pos(b, 0, 1)["3"].update({"logprob": "NaN"}), "prompt_logprobs[1]['3'].logprob"),
    (lambda b: _pos(b, 0, 1)["3"].update({"logprob": 0.5}), "expected a log-probability"),
    (lambda b: b["choices"][0].update({"index": 0}), "choices[1].index is 0"),
    (lambda b: b["choices"].pop(), "1 choices for 2 prompts"),
    (lambda b: b["choices"][1]["prompt_logprobs"].pop(), "3 entries for a prompt of 4 tokens"),
    (lambda b: b["choices"][1].pop("prompt_logprobs"), "has no 'prompt_logprobs'"),
])
def test_a_malformed_answer_names_the_url_and_the_field(change, says):
    teacher = _teacher(lambda request: httpx.Response(200, json=_broken(change)))
    with pytest.raises(MalformedResponse) as caught:
        teacher.outputs(_batch())
    assert f"{URL}/v1/completions" in str(caught.value) and says in str(caught.value)


def test_an_answer_that_is_not_json_or_a_refusal_is_not_retried():
    calls = []

    def html(request):
        calls.append(1)
        return httpx.Response(200, text="<html>proxy login</html>")

    with pytest.raises(MalformedResponse, match="is not JSON"):
        _teacher(html, retries=3).outputs(_batch())
    # vLLM's refusal of a k above --max-logprobs: its message, at once
    refusal = {"object": "error", "type": "BadRequestError", "code": 400,
               "message": "Requested prompt logprobs of 64, which is greater than max allowed: 20"}
    with pytest.raises(RequestRefused, match="HTTP 400: Requested prompt logprobs of 64"):
        _teacher(lambda r: (calls.append(1), httpx.Response(400, json=refusal))[1],
                 retries=3).outputs(_batch())
    assert len(calls) == 2


# ---- 2. faults, against in-test servers on 127.0.0.1


class FakeVLLM:
    """A stand-in for `vllm serve`: vLLM's shapes, over a fixed bigram teacher (position j's
    distribution depends on token j - 1 alone). Knobs: the vocabulary it reports and
    decodes, a delay per completion, a hook run on every completion."""

    def __init__(self, tokenizer, vocab_size: int | None = None, decode=None,
                 api_key: str | None = None, max_logprobs: int = 20,
                 max_model_len: int = 4096) -> None:
        self.tokenizer = tokenizer
        self.vocab = len(tokenizer)
        self.vocab_size = self.vocab if vocab_size is None else vocab_size
        self.decode = decode or (lambda ids: tokenizer.decode(ids))
        self.api_key = api_key
        self.max_logprobs, self.max_model_len = max_logprobs, max_model_len
        self.delay_s = 0.0
        self.completions = 0
        self.on_completion = lambda count: None
        generator = torch.Generator().manual_seed(0)
        self.table = torch.log_softmax(torch.randn(self.vocab, self.vocab,
                                                   generator=generator) * 3, -1)  # (V, V)

    def _positions(self, prompt: list[int], k: int) -> list:
        positions: list = [None]
        for before, own in zip(prompt, prompt[1:]):
            row = self.table[before]
            values, ids = row.topk(k)
            entries = {str(i): {"logprob": v, "rank": r, "decoded_token": "?"}
                       for r, (i, v) in enumerate(zip(ids.tolist(), values.tolist()), 1)}
            entries.setdefault(str(own), {"logprob": row[own].item(), "decoded_token": "?",
                                          "rank": int((row > row[own]).sum()) + 1})
            positions.append(entries)
        return positions

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def key(request: Request, call_next):
            if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"object": "error", "message": "Unauthorized",
                                     "type": "AuthenticationError", "code": 401}, 401)
            return await call_next(request)

        @app.get("/health")
        async def health():
            return Response(status_code=200)

        @app.get("/v1/models")
        async def models():  # as vLLM: no vocab_size unless told to report one
            card = {"id": "bigram", "object": "model", "max_model_len": self.max_model_len}
            if self.vocab_size:
                card["vocab_size"] = self.vocab_size
            return {"object": "list", "data": [card]}

        @app.post("/detokenize")
        async def detokenize(request: Request):
            return {"prompt": self.decode((await request.json())["tokens"])}

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await request.json()
            if body["prompt_logprobs"] > self.max_logprobs:  # vLLM's refusal, verbatim
                return JSONResponse({"object": "error", "type": "BadRequestError", "code": 400,
                                     "message": f"Requested prompt logprobs of "
                                     f"{body['prompt_logprobs']}, which is greater than max "
                                     f"allowed: {self.max_logprobs}"}, 400)
            self.completions += 1
            self.on_completion(self.completions)
            await asyncio.sleep(self.delay_s)
            choices = [{"index": i, "text": "", "logprobs": None, "finish_reason": "length",
                        "prompt_logprobs": self._positions(p, body["prompt_logprobs"])}
                       for i, p in enumerate(body["prompt"])]
            return {"id": "cmpl-1", "object": "text_completion", "model": "bigram",
                    "choices": choices[::-1], "usage": {}}

        return app


@contextmanager
def serving(app) -> Iterator[tuple[str, uvicorn.Server]]:
    """``app`` served by uvicorn in a thread on a free loopback port: (base URL, server)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def tokenizer_dir(finished_run: Path) -> str:
    return str(finished_run / "student")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _overrides(out: Path, cache_dir: Path, tokenizer_dir: str, urls: list[str],
               **extra) -> list[str]:
    return tiny_overrides(out, cache_dir, **{
        "train.max_steps": 4, "train.checkpoint_every": 0, "train.eval_every": 0,
        "data.tokenizer": tokenizer_dir, "teacher.kind": "served",
        "teacher.served.urls": f"[{', '.join(urls)}]", "teacher.served.top_k": 8,
        "teacher.served.batch_size": 2, "teacher.served.retries": 1,
        "teacher.served.timeout_s": 30, **extra})


def _run(*args, **kwargs):
    return run(load_recipe(QUICKSTART, _overrides(*args, **kwargs)))


def _cli(*argv: str) -> int:
    """`distill ...` in this process (its exit status); the SIGTERM handler it installs is
    put back."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        return cli.main(list(argv))
    finally:
        signal.signal(signal.SIGTERM, handler)


def _losses(out: Path) -> list[tuple]:
    """(step, loss, val_loss) of every metrics row."""
    return [(r["step"], r.get("loss"), r.get("val_loss"))
            for r in read_metrics(out / "metrics.jsonl")]


def _error_line(capsys) -> str:
    """The CLI's error message, which must be one line (the progress bar shares stderr)."""
    err = capsys.readouterr().err
    message = err[err.rindex("distill: error: "):].rstrip("\n")
    assert "\n" not in message and "\r" not in message
    return message


def _nothing_trained(out: Path) -> bool:
    return not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_an_unreachable_server_at_start_exits_2_before_training(tmp_path, cache_dir,
                                                                 tokenizer_dir, capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "run"
    code = _cli("run", QUICKSTART, *_overrides(out, cache_dir, tokenizer_dir, [url]))
    error = _error_line(capsys)
    assert code == 2 and _nothing_trained(out)
    assert error.startswith("distill: error: teacher (served): could not build it: "
                            "teacher.served.urls: no server answered")
    assert f"{url}/health" in error and "ConnectError" in error and "serve-teacher" in error


def test_another_vocabulary_exits_2_before_training(tmp_path, cache_dir, tokenizer_dir,
                                                    tokenizer):
    size = len(tokenizer)
    with serving(FakeVLLM(tokenizer, vocab_size=size + 1).app()) as (url, _):
        with pytest.raises(UserError, match=f"the model 'bigram' at {url} has {size + 1} tokens, "
                                            f"the data's tokenizer {size}"):
            _run(tmp_path / "a", cache_dir, tokenizer_dir, [url])
    # vLLM reports no size: the probe of ids through /detokenize finds the difference
    other = FakeVLLM(tokenizer, vocab_size=0,
                     decode=lambda ids: "<other>" if ids == [size - 1] else tokenizer.decode(ids))
    with serving(other.app()) as (url, _):
        with pytest.raises(UserError, match=f"token id {size - 1} is '<other>' for the model "
                                            f"'bigram' at {url}"):
            _run(tmp_path / "b", cache_dir, tokenizer_dir, [url])
    assert _nothing_trained(tmp_path / "a") and _nothing_trained(tmp_path / "b")


@pytest.mark.parametrize("server, setting, says", [
    ({"max_logprobs": 20}, {"teacher.served.top_k": 30},
     "teacher.served.top_k: the server refused prompt_logprobs=30 ({url}/v1/completions: "
     "HTTP 400: Requested prompt logprobs of 30, which is greater than max allowed: 20)"),
    ({"max_model_len": 33}, {}, "data.block_size: got 32, but the model 'bigram' at {url} "
                                "takes at most 33 tokens (max_model_len)"),
])
def test_what_the_server_cannot_do_is_refused_at_start(server, setting, says, tmp_path,
                                                       cache_dir, tokenizer_dir, tokenizer):
    with serving(FakeVLLM(tokenizer, **server).app()) as (url, _):
        with pytest.raises(UserError) as caught:
            _run(tmp_path / "run", cache_dir, tokenizer_dir, [url], **setting)
    assert says.format(url=url) in str(caught.value) and _nothing_trained(tmp_path / "run")


def test_the_api_key_comes_from_the_environment_and_is_never_shown(tmp_path, cache_dir,
                                                                    tokenizer_dir, tokenizer,
                                                                    monkeypatch):
    secret = "sk-test-0123456789"
    with serving(FakeVLLM(tokenizer, api_key=secret).app()) as (url, _):
        monkeypatch.setenv("TEACHER_KEY", "sk-wrong-key")
        with pytest.raises(UserError) as caught:
            _run(tmp_path / "wrong", cache_dir, tokenizer_dir, [url],
                 **{"teacher.served.api_key_env": "TEACHER_KEY"})
        assert "HTTP 401" in str(caught.value) and "sk-wrong-key" not in str(caught.value)
        monkeypatch.setenv("TEACHER_KEY", secret)
        _run(tmp_path / "right", cache_dir, tokenizer_dir, [url],
             **{"teacher.served.api_key_env": "TEACHER_KEY", "train.max_steps": 1})
    written = "".join(p.read_text(errors="ignore") for p in (tmp_path / "right").rglob("*")
                      if p.is_file() and p.suffix in (".yaml", ".json", ".jsonl", ".md"))
    assert "TEACHER_KEY" in written and secret not in written


def test_a_replica_down_among_two_changes_nothing(tmp_path, cache_dir, tokenizer_dir,
                                                  tokenizer, capsys):
    fake, dying = FakeVLLM(tokenizer), FakeVLLM(tokenizer)
    with serving(fake.app()) as (live, _), serving(dying.app()) as (second, server):
        _run(tmp_path / "one", cache_dir, tokenizer_dir, [live])
        # down from the start: a word at start, then every request on the other
        dead = f"http://127.0.0.1:{free_port()}"
        _run(tmp_path / "dead", cache_dir, tokenizer_dir, [dead, live])
        assert f"not answering at start, left to the retries: {dead}/health" in \
            capsys.readouterr().out
        # going down mid-run: its requests are retried on the other
        dying.on_completion = lambda count: setattr(server, "should_exit", count >= 3)
        _run(tmp_path / "dies", cache_dir, tokenizer_dir, [second, live])
    assert dying.completions >= 3 and server.should_exit
    assert _losses(tmp_path / "dead") == _losses(tmp_path / "one")
    assert _losses(tmp_path / "dies") == _losses(tmp_path / "one")


def test_a_server_slower_than_timeout_stops_the_run_and_resume_continues(
        tmp_path, cache_dir, tokenizer_dir, tokenizer, capsys):
    fake = FakeVLLM(tokenizer)
    common = {"train.max_steps": 6, "train.checkpoint_every": 2,
              "teacher.served.timeout_s": 0.5, "teacher.served.retries": 1}
    with serving(fake.app()) as (url, _):
        _run(tmp_path / "whole", cache_dir, tokenizer_dir, [url], **common)
        out = tmp_path / "slow"
        # slow from the 7th request on: a micro-batch is 2 requests, so step 4 waits
        fake.completions = 0
        fake.on_completion = lambda count: setattr(fake, "delay_s", 2.0 if count >= 7 else 0.0)
        code = _cli("run", QUICKSTART, *_overrides(out, cache_dir, tokenizer_dir, [url],
                                                   **common))
        error = _error_line(capsys)
        assert code == 1
        assert f"{url}/v1/completions: no answer within teacher.served.timeout_s=0.5 s" in error
        assert "checkpoint is intact" in error and "--resume" in error
        assert (out / "checkpoints" / "step-00000002").is_dir()
        fake.on_completion = lambda count: setattr(fake, "delay_s", 0.0)
        assert _cli("run", str(out / "config.yaml"), "--resume") == 0
    assert _losses(out) == _losses(tmp_path / "whole")


# ---- 3. end to end against `distill serve-teacher`

def _close(a: list[tuple], b: list[tuple], rel: float) -> None:
    assert [r[0] for r in a] == [r[0] for r in b]
    for left, right in zip(a, b):
        assert [v for v in left[1:] if v is not None] == pytest.approx(
            [v for v in right[1:] if v is not None], rel=rel)


def test_served_trains_as_cached_at_the_same_k_and_as_hf_at_the_whole_vocabulary(
        teacher_server, tmp_path, cache_dir, tokenizer_dir):
    hf = {"teacher.hf.name_or_path": tokenizer_dir,
          "teacher.cached.cache_dir": str(tmp_path / "cache")}
    _run(tmp_path / "served8", cache_dir, tokenizer_dir, [teacher_server])
    _run(tmp_path / "cached8", cache_dir, tokenizer_dir, [teacher_server],
         **{"teacher.kind": "cached", "teacher.cached.top_k": 8, **hf})
    _close(_losses(tmp_path / "served8"), _losses(tmp_path / "cached8"), rel=1e-5)
    _run(tmp_path / "served512", cache_dir, tokenizer_dir, [teacher_server],
         **{"teacher.served.top_k": 512})
    _run(tmp_path / "hf", cache_dir, tokenizer_dir, [teacher_server],
         **{"teacher.kind": "hf", **hf})
    _close(_losses(tmp_path / "served512"), _losses(tmp_path / "hf"), rel=1e-5)
    assert _losses(tmp_path / "served8") != _losses(tmp_path / "served512")  # k matters
    fingerprint = json.loads((tmp_path / "served8" / "run_fingerprint.json").read_text())
    assert fingerprint["built"]["teacher.model"] == "tiny-teacher"
    assert len(fingerprint["built"]["teacher.probe"]) == 7  # 8 probe ids: 7 predicted


def test_a_killed_server_stops_the_run_and_resume_ends_where_a_whole_run_ends(
        teacher_server, finished_run, tmp_path, cache_dir, tokenizer_dir, monkeypatch, capsys):
    common = {"train.max_steps": 10, "train.checkpoint_every": 4, "train.eval_every": 5,
              "teacher.served.batch_size": 4}
    _run(tmp_path / "whole", cache_dir, tokenizer_dir, [teacher_server], **common)
    port = free_port()
    process = start_teacher_server(finished_run / "student", port, "--model", "tiny-teacher")
    try:
        url, out = f"http://127.0.0.1:{port}", tmp_path / "killed"
        original = ServedTeacher.outputs

        def killed_at_step_6(self, batch):
            if batch.step == 6 and process.poll() is None:
                process.kill()  # no goodbye: the connection is refused from now on
                process.wait()
            return original(self, batch)

        monkeypatch.setattr(ServedTeacher, "outputs", killed_at_step_6)
        code = _cli("run", QUICKSTART, *_overrides(out, cache_dir, tokenizer_dir, [url],
                                                   **common))
        error = _error_line(capsys)
        assert code == 1
        assert error.startswith("distill: error: teacher: the teacher's server did not answer "
                                f"POST /v1/completions after 2 attempt(s) over {url}")
        assert f"checkpoint is intact ({out / 'checkpoints' / 'step-00000004'})" in error
        monkeypatch.undo()
        # back, on another port: where the server is may change on resume, its model not
        port = free_port()
        process = start_teacher_server(finished_run / "student", port, "--model",
                                       "tiny-teacher")
        assert _cli("run", str(out / "config.yaml"),
                    f"teacher.served.urls=[http://127.0.0.1:{port}]", "--resume") == 0
    finally:
        stop_server(process)
    _close(_losses(out), _losses(tmp_path / "whole"), rel=1e-6)


def test_resume_against_another_served_model_is_refused(tmp_path, cache_dir, tokenizer_dir,
                                                        tokenizer):
    with serving(FakeVLLM(tokenizer).app()) as (url, _):
        out = tmp_path / "run"
        _run(out, cache_dir, tokenizer_dir, [url], **{"train.max_steps": 2,
                                                      "train.checkpoint_every": 1})
    other = FakeVLLM(tokenizer)
    other.table = other.table.roll(1, dims=0)  # same name and vocabulary, other answers
    with serving(other.app()) as (url, _):
        with pytest.raises(UserError, match="teacher.probe"):
            run(load_recipe(out / "config.yaml", [f"teacher.served.urls=[{url}]"]), resume=True)


# ---- settings checked before any work, without contacting anything

@pytest.mark.parametrize("override, says", [
    ("teacher.served.urls=[]", "kind 'served' needs the base URL"),
    ("teacher.served.urls=[ftp://host:8000]", "is not an http(s) URL"),
    ("teacher.served.urls=[http://127.0.0.1:8000/v1]", "ends in /v1"),
    ("teacher.served.urls=[http://a:1, http://a:1/]", "http://a:1 is listed twice"),
    ("teacher.served.api_key_env=sk-123", "the NAME of an environment variable"),
    ("teacher.served.model=' '", "teacher.served.model: empty"),
    ("teacher.served.top_k=0", "teacher.served.top_k"),
])
def test_bad_served_settings_are_refused_at_validation(override, says):
    base = ["teacher.kind=served", "teacher.served.urls=[http://127.0.0.1:8000]"]
    with pytest.raises(UserError) as caught:
        load_recipe(QUICKSTART, [*base, override])
    assert says in str(caught.value)
    assert "sk-123" not in str(caught.value)


def test_credentials_in_a_url_are_refused_without_being_shown():
    with pytest.raises(UserError) as caught:
        load_recipe(QUICKSTART, ["teacher.kind=served",
                                 "teacher.served.urls=[http://user:hunter2@host:8000]"])
    assert "credentials" in str(caught.value) and "hunter2" not in str(caught.value)


def test_a_served_teacher_cannot_initialise_a_student():
    with pytest.raises(UserError, match="'from_teacher' needs a teacher with weights"):
        load_recipe(QUICKSTART, ["teacher.kind=served", "student.init=from_teacher",
                                 "teacher.served.urls=[http://127.0.0.1:8000]"])


def test_it_runs_ahead_of_the_student_on_a_cpu_too():
    from distill.train import _use_prefetch

    teacher = _teacher(lambda request: httpx.Response(500))
    assert _use_prefetch("auto", teacher, torch.device("cpu"))
    with pytest.raises(TeacherUnavailable, match="after 1 attempt"):
        teacher.outputs(_batch())
    assert issubclass(TeacherUnavailable, RuntimeError) and not issubclass(
        TeacherUnavailable, TrainingStopped)  # teachers/ knows nothing of distill/
