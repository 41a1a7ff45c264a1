"""HTTP for a served teacher: the few endpoints of vLLM's OpenAI-compatible API that
distillation uses, over one or more replicas of the same model, with retries.

Every failure names the URL and what went wrong, and never the API key (it lives only in
the client's default headers). Which failures are worth another try:

- no connection, a timeout, or HTTP 408 / 429 / 5xx: the replica is busy, restarting or
  gone. The request goes to the next replica at once; once every replica has had a try,
  each further attempt waits twice as long as the one before (``backoff_s``, 2x, ... up to
  ``MAX_BACKOFF_S``). A replica that failed is tried last for ``COOLDOWN_S`` seconds, so a
  dead replica among live ones costs one failed connection per cool-down, not one per
  request.
- any other 4xx: the server refused the request itself (a top-k above its
  ``--max-logprobs``, a prompt longer than its context, a wrong key); sending it elsewhere
  would not help: :class:`RequestRefused` at once.
- a body that is not JSON: :class:`MalformedResponse` at once (a broken server or a proxy
  answering in its place).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import httpx

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
BACKOFF_S = 0.5       # the first wait, once every replica has failed a request once
MAX_BACKOFF_S = 60.0
COOLDOWN_S = 30.0     # how long a replica that failed is tried after the others


class TeacherUnavailable(RuntimeError):
    """The served teacher gave no usable answer (after the retries that could help). During
    training the run stops on it (its last checkpoint intact); at start it is a ValueError."""


class ReplicaFailed(TeacherUnavailable):
    """One replica did not answer (no connection, a timeout, 408 / 429 / 5xx): worth
    another try, on another replica or later."""


class RequestRefused(TeacherUnavailable):
    """The server answered a 4xx that another try would not change."""


class MalformedResponse(TeacherUnavailable):
    """An answer not in the shape the API promises; the message names the URL and field."""


def error_message(response: httpx.Response) -> str:
    """What a server said in its error body: vLLM's ``{"object": "error", "message": ...}``
    or OpenAI's ``{"error": {"message": ...}}``, else the start of the text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        for key in ("message", "detail"):
            if inner.get(key):
                return str(inner[key])[:500]
    return response.text[:200].strip() or response.reason_phrase


class Replicas:
    """A pool of base URLs serving one model, used round-robin. Thread-safe: requests of one
    micro-batch go out concurrently (``map``), from the prefetcher's worker thread."""

    def __init__(self, urls: Sequence[str], api_key: str | None, timeout_s: float,
                 retries: int, backoff_s: float = BACKOFF_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not urls:
            raise ValueError("no server URL given")
        self.urls = [url.rstrip("/") for url in urls]
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Sized so that every concurrent request of a micro-batch has its own connection.
        self._workers = max(2, 2 * len(self.urls))
        limits = httpx.Limits(max_connections=2 * self._workers,
                              max_keepalive_connections=2 * self._workers)
        # ``transport``: tests answer without a socket (httpx.MockTransport).
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s),
                                  limits=limits, transport=transport)
        self._lock = threading.Lock()
        self._turn = 0
        self._failed_at: dict[str, float] = {}
        self._pool: ThreadPoolExecutor | None = None

    def describe(self) -> str:
        return ", ".join(self.urls)

    # ---- one attempt on one replica

    def once(self, url: str, method: str, path: str, body: Any = None) -> Any:
        """One attempt at ``url``: the decoded JSON (None for an empty 200 body, as
        vLLM's /health gives). Raises ReplicaFailed (worth another try) or another
        TeacherUnavailable (not)."""
        try:
            response = self._http.request(method, url + path, json=body)
        except httpx.TimeoutException:
            raise ReplicaFailed(f"{url}{path}: no answer within teacher.served.timeout_s="
                             f"{self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:  # refused, reset, DNS, ...: the replica is not there
            raise ReplicaFailed(f"{url}{path}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            text = f"{url}{path}: HTTP {response.status_code}: {error_message(response)}"
            if response.status_code in RETRY_STATUS:
                raise ReplicaFailed(text)
            raise RequestRefused(text)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise MalformedResponse(f"{url}{path}: the answer is not JSON: "
                                    f"{response.text[:120]!r}") from None

    # ---- with retries over the replicas

    def failed(self, url: str) -> None:
        """Note that ``url`` failed now: it is tried after the others for a while."""
        with self._lock:
            self._failed_at[url] = time.monotonic()

    def _order(self) -> list[str]:
        """This request's replicas: round-robin from the next turn, those that failed within
        the cool-down last."""
        with self._lock:
            start, self._turn = self._turn, self._turn + 1
            now = time.monotonic()
            recent = {url for url, when in self._failed_at.items() if now - when < COOLDOWN_S}
        turn = [self.urls[(start + i) % len(self.urls)] for i in range(len(self.urls))]
        return [u for u in turn if u not in recent] + [u for u in turn if u in recent]

    def call(self, method: str, path: str, body: Any = None) -> tuple[str, Any]:
        """(the URL that answered, its JSON), trying up to ``1 + retries`` times."""
        order = self._order()
        problems: list[str] = []
        for attempt in range(self.retries + 1):
            url = order[attempt % len(order)]
            if attempt >= len(order):  # every replica failed once: back off, doubling
                time.sleep(min(self.backoff_s * 2 ** (attempt - len(order)), MAX_BACKOFF_S))
            try:
                answer = self.once(url, method, path, body)
            except ReplicaFailed as exc:
                self.failed(url)
                problems.append(str(exc))
                continue
            with self._lock:
                self._failed_at.pop(url, None)
            return url, answer
        raise TeacherUnavailable(
            f"the teacher's server did not answer {method} {path} after {self.retries + 1} "
            f"attempt(s) over {self.describe()} (teacher.served.retries={self.retries}): "
            + "; ".join(dict.fromkeys(problems)))

    def map(self, method: str, path: str, bodies: Sequence[Any]) -> list[tuple[str, Any]]:
        """``call`` for each body, concurrently; answers in the order of ``bodies``. The
        first failure is raised once every request has finished (none is left running)."""
        if len(bodies) == 1:
            return [self.call(method, path, bodies[0])]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="served")
        futures = [self._pool.submit(self.call, method, path, body) for body in bodies]
        errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return [f.result() for f in futures]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._http.close()

