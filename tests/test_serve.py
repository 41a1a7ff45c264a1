"""`distill serve-teacher`: vLLM's prompt_logprobs from a frozen teacher, batched, on the
loopback interface only; stops cleanly on SIGTERM."""

from __future__ import annotations

import math
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoTokenizer

import students
from distill.serve import score_prompts
from tests.conftest import free_port, start_teacher_server, stop_server


def test_scores_follow_vllms_prompt_logprobs_by_hand():
    # one prompt [2, 0, 1] over a vocabulary of 3; logits of positions 0 and 1 chosen so
    # that the probabilities are simple: position 0 -> [0.5, 0.25, 0.25], position 1 ->
    # [0.1, 0.2, 0.7]; position 2 predicts nothing the prompt holds.
    probabilities = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.2, 0.7], [1 / 3] * 3]])
    (positions,) = score_prompts(probabilities.log(), [[2, 0, 1]], k=1)
    assert positions[0] is None  # nothing precedes the first token
    # position 1 predicts token 0: the top-1 is token 0 itself (rank 1)
    assert positions[1].keys() == {0}
    assert positions[1][0][0] == pytest.approx(math.log(0.5)) and positions[1][0][1] == 1
    # position 2 predicts token 1: top-1 is token 2 (0.7); token 1 (0.2) is added, rank 2
    assert positions[2][2][0] == pytest.approx(math.log(0.7)) and positions[2][2][1] == 1
    assert positions[2][1][0] == pytest.approx(math.log(0.2)) and positions[2][1][1] == 2
    assert len(positions) == 3


def _complete(url: str, prompts, k: int, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", timeout=60, json={
        "model": "tiny-teacher", "prompt": prompts, "max_tokens": 1, "prompt_logprobs": k,
        **extra})


def test_answers_are_the_models_own_log_probabilities(teacher_server: str, finished_run: Path):
    models = httpx.get(f"{teacher_server}/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["tiny-teacher"] and models[0]["vocab_size"] == 512
    assert httpx.get(f"{teacher_server}/health").status_code == 200
    prompts = [[5, 17, 300, 9, 44], [12, 40]]  # two lengths: the second is right-padded
    choices = _complete(teacher_server, prompts, k=3).json()["choices"]
    model = students.load_pretrained(str(finished_run / "student")).eval()
    tokenizer = AutoTokenizer.from_pretrained(finished_run / "student")
    for choice in sorted(choices, key=lambda c: c["index"]):
        prompt = prompts[choice["index"]]
        with torch.no_grad():  # each prompt alone, unpadded: what the answer must equal
            log_p = torch.log_softmax(model(input_ids=torch.tensor([prompt])).logits[0], -1)
        served = choice["prompt_logprobs"]
        assert served[0] is None and len(served) == len(prompt)
        for j in range(1, len(prompt)):
            expected = log_p[j - 1].topk(3)
            top = [int(t) for t, e in sorted(served[j].items(), key=lambda i: i[1]["rank"])
                   if e["rank"] <= 3]
            assert top == expected.indices.tolist()
            own = served[j][str(prompt[j])]
            assert own["logprob"] == pytest.approx(float(log_p[j - 1, prompt[j]]), abs=1e-4)
            assert own["rank"] == int((log_p[j - 1] > log_p[j - 1, prompt[j]]).sum()) + 1
        assert choice["text"] == tokenizer.decode([int(log_p[-1].argmax())])  # greedy next
    text = httpx.post(f"{teacher_server}/detokenize",
                      json={"model": "tiny-teacher", "tokens": [5, 17]}).json()["prompt"]
    assert isinstance(text, str) and text


def test_concurrent_requests_are_batched_and_answered_alike(teacher_server: str):
    prompts = [[i + 1, 2 * i + 3, 7, 100 + i][: 2 + i % 3] for i in range(8)]
    alone = [_complete(teacher_server, [p], k=4).json()["choices"][0]["prompt_logprobs"]
             for p in prompts]
    with ThreadPoolExecutor(max_workers=8) as pool:  # arrive together: batched forwards
        together = list(pool.map(lambda p: _complete(teacher_server, [p], k=4).json(),
                                 prompts))
    for answer, expected in zip(together, alone):
        served = answer["choices"][0]["prompt_logprobs"]
        assert served[0] is None
        for got, want in zip(served[1:], expected[1:]):
            assert got.keys() == want.keys()
            for token in got:
                assert got[token]["logprob"] == pytest.approx(want[token]["logprob"], abs=1e-4)


@pytest.mark.parametrize("body, status, message", [
    ({"model": "another"}, 404, "The model `another` does not exist"),
    ({"prompt_logprobs": 513}, 400, r"prompt_logprobs: an integer in \[0, 512\]"),
    ({"prompt": [[1, 512]]}, 400, r"prompt\[0\]: a non-empty list of token ids in \[0, 512\)"),
    ({"max_tokens": 16}, 400, "max_tokens: this server scores prompts"),
])
def test_bad_requests_get_vllms_error_shape(teacher_server: str, body, status, message):
    request = {"model": "tiny-teacher", "prompt": [[1, 2]], "max_tokens": 1,
               "prompt_logprobs": 2, **body}
    response = httpx.post(f"{teacher_server}/v1/completions", json=request, timeout=60)
    assert response.status_code == status
    error = response.json()
    assert error["object"] == "error" and error["code"] == status
    assert re.search(message, error["message"])


def test_api_key_and_a_clean_stop_on_sigterm(finished_run: Path):
    port = free_port()
    server = start_teacher_server(finished_run / "student", port, "--model", "tiny-teacher",
                                  "--api-key-env", "TEACHER_KEY", "--log-every", "0.5",
                                  env={"TEACHER_KEY": "s3cret"})
    url = f"http://127.0.0.1:{port}"
    try:
        assert _complete(url, [[1, 2]], 2).status_code == 401
        answer = httpx.post(f"{url}/v1/completions", timeout=60,
                            headers={"Authorization": "Bearer s3cret"},
                            json={"model": "tiny-teacher", "prompt": [[1, 2]],
                                  "max_tokens": 1, "prompt_logprobs": 2})
        assert answer.status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200  # the health check is open
        time.sleep(1.5)  # one throughput line
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        output = stop_server(server)
    assert "requests/s" in output and "prompt tokens/s" in output
    assert output.rstrip().endswith("distill serve-teacher: stopped")
    assert "s3cret" not in output


def test_a_missing_model_or_key_is_refused_before_serving(tmp_path: Path, finished_run: Path):
    from tests.conftest import run_cli

    missing = run_cli("serve-teacher", str(tmp_path / "nothing"), "--port", str(free_port()))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    no_key = run_cli("serve-teacher", str(finished_run / "student"), "--port",
                     str(free_port()), "--api-key-env", "DISTILL_TEST_UNSET_KEY")
    assert no_key.returncode == 2 and "DISTILL_TEST_UNSET_KEY is unset" in no_key.stderr
