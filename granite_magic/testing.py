"""A local OpenRouter-compatible server for tests: real HTTP on 127.0.0.1.

It streams deterministic text (the same prompt, seed and parameters give the
same words; temperature 0 ignores the seed), sends keep-alive comments and a
usage chunk with a cost, lists models at ``/models``, and plays scenarios:
error statuses, 429 with Retry-After, mid-stream error events, dropped
connections, stalls, slow tokens, odd chunk boundaries and CRLF line ends.
Every request's headers and JSON body are recorded for assertions.

Token probabilities: a chat request with ``"logprobs": true`` (and
``"top_logprobs": K``), or a Responses request whose ``include`` names
``message.output_text.logprobs``, gets an entry for every streamed token with K
alternatives, deterministic like the text (``fake_logprobs``); asking for them
does not change the text.  ``Scenario(logprobs=False)`` plays a provider that
ignores the request and returns none, as most providers on OpenRouter do.

A provider that ignores a parameter: the model ``fake/ignores-NAME`` (``seed``,
``stop``, ``logprobs``, ``max_tokens``, ``tools``, any sampling field) is served
without being listed, and answers as if ``NAME`` had not been sent.

Raw completions (``--raw``): ``POST /completions`` with a ``prompt`` is answered as a chat request whose one user
message is the prompt, as a ``text_completion`` stream; ``"logprobs": K`` gets the classic parallel lists
(``tokens``, ``token_logprobs``, ``top_logprobs``) with the same numbers as chat's entries.

Tool calls, in all three API shapes, driven by the request's ``tools``.  When tools
are offered (and ``tool_choice`` is not ``"none"``) and the model has not called
them yet since the last user message, the reply calls the first tool (or the one
``tool_choice`` names) and finishes with ``tool_calls`` (``tool_use`` in Messages).
Its arguments fill the ``required`` properties of the tool's JSON Schema (optional
ones are left to the function's defaults): an ``enum`` or ``const`` gives its first
value; a number or integer takes the prompt's numbers in order ("How much is 120
dollars in yen?" → ``{"amount": 120}``), counting on from the last one (or from 1)
when they run out; a string takes the prompt's words from the last one backwards
("... in yen?" → ``"yen"``); a boolean is ``true``, an array holds one item, an
object is filled the same way.  The prompt is the last user message.  When the
conversation ends with tool results the reply quotes them: ``The tool said: R``
(``The tools said: R1; R2`` for several).  ``tool_choice`` ``"required"`` or a
function's name always calls, as real models do.  Call ids are deterministic
(``call_<hex>`` in chat, ``call_<hex>``/``fc_<hex>`` in Responses,
``toolu_<hex>`` in Messages).  A second step must answer every call of the
assistant message before it, by id, or gets a 400 as from the real APIs; every
body is recorded as it was sent (``requests``).  Scenario switches: ``tool_calls``
(parallel calls), ``tool_split`` (argument fragment size), ``tool_name`` (a call to
an unknown tool), ``tool_arguments`` (exact, e.g. malformed, argument text),
``tool_steps`` (replies that call before the answer).

Structured output: a request for JSON of a schema (``response_format`` json_schema in chat, ``text.format`` in
Responses, or the schema told in a system message as granite-magic tells it) is answered with an object that fits
it, filled like tool arguments (an enum's first value, the prompt's numbers and words); the model's listing names no
``response_format``, as OpenRouter's for Granite does not (``server.models`` can list one that does).
``Scenario(text=...)`` plays a model that writes something else (a first reply to repair).

Prompted mode, Granite's own convention: a request without native ``tools`` whose
system message holds a ``<tools>`` block is played the same way in text:
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (streamed in
``tool_split``-character pieces), then, after a user turn of ``<tool_response>``
blocks, the quoting answer.

OpenRouter's Batch API, chat only: ``POST /batches`` (``endpoint`` and ``model`` before ``requests`` in the JSON text,
as the real API stream-parses it; at most 5000 requests, unique ``custom_id`` s; 202 with a ``validating`` batch),
``GET /batches/{id}``, ``GET /batches/{id}/results?cursor=&limit=`` (409 until the batch has ended), ``GET /batches``
and ``POST /batches/{id}/cancel``.  A batch moves on only when polled: each ``GET /batches/{id}`` is one step
(``validating`` → ``in_progress`` → ``batch_per_poll`` requests finished a poll, all by default → ``completed``), so a
test never waits on a clock.  A request's answer is the whole ``chat.completion`` its live stream would have given
(``fake_completion``) at half the price.  Faults: ``batch_fail_ids``/``batch_fail_every`` (a request fails),
``fail_batch``/``batch_failure`` (a batch ends ``failed``), ``refuse_batches``/``batch_models`` (a model takes none);
from another process the same through ``/_control``'s ``"batches"`` (``_BATCH_CONTROLS``), and ``GET /_batches``
gives the counters (``batch_creates``, ``batch_polls``, ``batch_result_requests``).  ``run_batch_file`` stands in for
``vllm run-batch`` (or OpenAI's output and errors files) on an OpenAI-format JSONL file.

In-process::

    with FakeOpenRouter() as server:
        server.push(Scenario(status=429, retry_after="1"))
        client = GraniteClient(base_url=server.base_url, api_key="test")

From another process (notebooks, the browser test)::

    python -m granite_magic.testing --port 8765 --ttft 0.3 --tokens-per-s 100

and ``POST /_control`` with ``{"default": {...}, "push": [{...}]}`` to change scenarios.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["GRANITE_LISTING", "FakeOpenRouter", "RecordedRequest", "Scenario", "fake_completion", "fake_logprobs", "fake_reply",
           "run_batch_file"]

GRANITE_ID = "ibm-granite/granite-4.0-h-micro"
PROMPT_PRICE = 0.000000017  # USD per token, as listed
COMPLETION_PRICE = 0.000000112

GRANITE_LISTING: dict[str, Any] = {
    "id": GRANITE_ID,
    "name": "IBM: Granite 4.0 Micro",
    "context_length": 131000,
    "pricing": {"prompt": f"{PROMPT_PRICE:.9f}", "completion": f"{COMPLETION_PRICE:.9f}", "request": "0", "image": "0"},
    "top_provider": {"context_length": 131000, "max_completion_tokens": None, "is_moderated": False},
    "supported_parameters": [
        "frequency_penalty", "max_tokens", "presence_penalty", "repetition_penalty",
        "seed", "stop", "temperature", "top_k", "top_p",
    ],
    "default_parameters": {},
}

_WORDS = ["the", "river", "carved", "stone", "slowly", "one", "patient", "season", "at", "a", "time", "while", "light", "moved", "across", "quiet", "hills", "and", "a", "small", "bird", "sang", "above", "water", "that", "remembered", "every", "storm", "granite", "holds", "old", "heat", "deep", "below", "the", "valley", "where", "farmers", "planted", "barley", "in", "long", "straight", "rows", "under", "clear", "autumn", "skies", "bright", "clouds", "drift", "over", "silver", "lakes", "gentle", "wind", "carries", "seeds", "far", "away", "from", "home"]

_ERROR_TEXT = {
    400: "Invalid request: max_tokens must be at least 1",
    401: "No auth credentials found",
    402: "Insufficient credits. Add more using https://openrouter.ai/credits",
    403: "Input was flagged by moderation",
    404: "No endpoints found for this model",
    408: "Request timed out",
    429: "Rate limit exceeded: free-models-per-min",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "No instances available",
}


@dataclass
class Scenario:
    """How the server answers one request (fields left at their defaults mean "normal")."""

    status: int = 200
    retry_after: str | None = None
    error_message: str | None = None
    text: str | None = None  # reply with exactly this text, split into words
    tokens: int | None = None  # reply length in tokens; default depends on the prompt
    ttft_s: float = 0.0
    tokens_per_s: float | None = None  # None: as fast as the socket goes
    error_after: int | None = None  # send an error event after this many tokens
    error_code: int | str = 502
    drop_after: int | None = None  # close the connection after this many tokens
    stall_after: int | None = None  # go silent after this many tokens...
    stall_s: float = 5.0  # ...for this long
    split: int | None = None  # write the body in pieces of this many bytes
    crlf: bool = False
    keepalive_every: int = 16  # a ": OPENROUTER PROCESSING" comment every N tokens (0: none)
    usage: bool = True
    finish: bool = True  # send the finish_reason chunk
    done: bool = True  # end with data: [DONE]
    logprobs: bool = True  # answer a request for token probabilities (False: a provider that ignores it)
    # Tool calls (when the request offers tools; see the module docstring).  ``text`` is then what the model
    # writes before its calls.
    tool_calls: int = 1  # calls in one reply (parallel calls): the offered tools in turn, or the one tool again; 0: answer in text
    tool_split: int = 4  # stream each call's arguments in fragments of this many characters (0: in one piece)
    tool_name: str | None = None  # the first call names this tool instead (e.g. "nope", one that was not offered)
    tool_arguments: str | None = None  # the first call's arguments are exactly this text (e.g. "{not json")
    tool_steps: int = 1  # replies that call tools, after the last user message, before the model answers from the results

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown scenario fields: {sorted(unknown)}")
        return cls(**data)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float
    client_port: int = 0
    disconnected: bool = False  # the client closed the connection before the reply ended

    @property
    def sampling(self) -> dict[str, Any]:
        """The body without the fields every request carries."""
        fixed = {"model", "messages", "stream", "stream_options"}
        return {k: v for k, v in (self.body or {}).items() if k not in fixed}


def fake_reply(messages: Sequence[dict[str, Any]], params: dict[str, Any], *, tokens: int | None = None, nonce: int | None = None) -> list[str]:
    """The deterministic reply as a list of tokens (words with their leading space).

    Seeded by the messages and every sampling field; the seed only counts when
    decoding is not greedy (temperature 0 or top_k 1: there is nothing to draw,
    and both give the same text), and a request without a seed draws from
    ``nonce``, as a real sampler would differ each time.
    """
    greedy = params.get("temperature") == 0 or params.get("top_k") == 1
    sampling = {k: v for k, v in params.items() if k not in ("seed", "stop", "max_tokens", *_PROBS_FIELDS)}
    if greedy:
        sampling.pop("temperature", None)
        sampling.pop("top_k", None)
    seed_part = None if greedy else params.get("seed", f"nonce-{nonce}")
    key = json.dumps([messages, sampling, seed_part], sort_keys=True, default=str)
    rng = random.Random(hashlib.sha256(key.encode()).digest())
    count = tokens if tokens is not None else rng.randint(24, 64)
    words: list[str] = []
    capital = True
    for i in range(count):
        word = rng.choice(_WORDS)
        word = word.capitalize() if capital else word
        capital = i % 9 == 8
        words.append((" " if i else "") + word + ("." if capital or i == count - 1 else ""))
    return words


# Asking for probabilities changes what is reported, never which text is drawn (as on a real server).
_PROBS_FIELDS = ("logprobs", "top_logprobs", "include")
_RESPONSES_LOGPROBS = "message.output_text.logprobs"


def fake_logprobs(messages: Sequence[dict[str, Any]], params: dict[str, Any], index: int, token: str, k: int) -> dict[str, Any]:
    """The probability entry of the ``index``-th streamed token, in the chat ``logprobs.content`` shape.

    Each step has a distribution over 20 words spelled like the token (the rest of the
    vocabulary keeps 2-20 % of the mass), drawn from the messages, the seed, the position and
    the token; the token takes a rank drawn from that distribution, as a sampler would pick it,
    so it is usually but not always the most likely.  ``top_logprobs`` are the first ``k`` ranks:
    the same numbers whatever ``k`` is, and the token is among them only when its rank is.
    """
    key = json.dumps([messages, params.get("seed"), index, token], sort_keys=True, default=str)
    rng = random.Random(hashlib.sha256(key.encode()).digest())
    weights = sorted((rng.uniform(0.5, 1.5) / rank**1.3 for rank in range(1, _FAKE_TOP + 1)), reverse=True)
    total = sum(weights) / rng.uniform(0.8, 0.98)
    chosen = rng.choices(range(_FAKE_TOP), weights=weights)[0]
    spelled = dict.fromkeys(_spelled_like(token, word) for word in rng.sample(_VOCABULARY, len(_VOCABULARY)))
    others = [word for word in spelled if word != token]
    words = [*others[:chosen], token, *others[chosen : _FAKE_TOP - 1]]
    entries: list[dict[str, Any]] = [{"token": w, "logprob": math.log(p / total), "bytes": list(w.encode())}
                                     for w, p in zip(words, weights, strict=True)]
    return {**entries[chosen], "top_logprobs": [dict(e) for e in entries[:k]]}


_FAKE_TOP = 20  # the most alternatives an OpenAI-compatible server returns
_VOCABULARY = sorted(set(_WORDS))


def _spelled_like(token: str, word: str) -> str:
    """``word`` with ``token``'s leading space, capital and full stop."""
    core = token.strip(" .")
    word = word.capitalize() if core[:1].isupper() else word
    return (" " if token.startswith(" ") else "") + word + ("." if token.endswith(".") else "")


_IGNORING_PREFIX = "fake/ignores-"


def _ignored(model: Any) -> str | None:
    """The parameter a ``fake/ignores-NAME`` model ignores."""
    return model.removeprefix(_IGNORING_PREFIX) if isinstance(model, str) and model.startswith(_IGNORING_PREFIX) else None


def _probs_asked(request: dict[str, Any]) -> int | None:
    """How many alternatives a request asks for with each token (0: none), or None: no probabilities."""
    include = request.get("include")
    if request.get("logprobs") is not True and not (isinstance(include, list) and _RESPONSES_LOGPROBS in include):
        return None
    k = request.get("top_logprobs")
    return k if isinstance(k, int) and not isinstance(k, bool) and k > 0 else 0


class FakeOpenRouter:
    """The server object: start/stop, scenarios, and what it received."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None, honour_seed: bool = True) -> None:
        self.api_key = api_key  # when set, requests must carry it
        self.honour_seed = honour_seed
        self.default = Scenario()
        self.models: dict[str, dict[str, Any]] = {GRANITE_ID: GRANITE_LISTING}
        self.accept_any_model = False
        self.requests: list[RecordedRequest] = []
        self.costs: dict[str, float] = {}  # generation id -> what it cost, for GET /generation and GET /key
        self.credit_limit = 10.0  # USD: GET /key reports this limit and what is left of it
        self.in_flight = 0
        self.max_in_flight = 0  # the most streams served at the same moment
        # OpenRouter's Batch API (see _Batch): a batch moves on only when it is polled, never with the clock.
        self.batches: dict[str, _Batch] = {}
        self.batch_models: set[str] | None = None  # the models that take batches; None: every model listed
        self.batch_per_poll: int | None = None  # requests a poll finishes; None: all that remain (0: a stuck batch)
        self.batch_fail_ids: set[str] = set()  # custom ids whose request fails (a row with an error)
        self.batch_fail_every = 0  # the Nth, 2Nth, ... request of every batch fails (0: none)
        self.batch_failure: str | None = None  # batches created while this is set end "failed" with it as the message
        self.batch_creates: list[dict[str, Any]] = []  # the body of every create call that made a batch
        self.batch_polls: dict[str, int] = {}  # batch id -> GET /batches/{id} calls
        self.batch_result_requests: list[tuple[str, str | None]] = []  # (batch id, cursor) of each results page asked for
        self._queue: list[Scenario] = []
        self._lock = threading.Lock()
        self._batch_lock = threading.Lock()  # apart from _lock: a batch's answers draw nonces under it
        self._batch_serial = 0  # never reset, so no id names two batches (a client may keep one on disk)
        self._nonce = 0
        self._stopping = threading.Event()
        self._httpd = _QuietServer((host, port), _handler_for(self))
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/api/v1"

    def start(self) -> FakeOpenRouter:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-openrouter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenRouter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def push(self, *scenarios: Scenario) -> None:
        """Queue scenarios for the next requests, in order; then the default applies again."""
        with self._lock:
            self._queue.extend(scenarios)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.costs.clear()
            self.default = Scenario()
            self.max_in_flight = self.in_flight
        with self._batch_lock:
            self.batches.clear()
            self.batch_models, self.batch_per_poll, self.batch_failure = None, None, None
            self.batch_fail_ids, self.batch_fail_every = set(), 0
            self.batch_creates.clear()
            self.batch_polls.clear()
            self.batch_result_requests.clear()

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Every generation request, whatever its API shape."""
        return [r for r in self.requests if r.method == "POST" and r.path.rstrip("/").endswith(tuple(_API_PATHS.values()))]

    # --- the Batch API's knobs and counters ------------------------------------------------

    def refuse_batches(self, *models: str) -> None:
        """These models answer a create call with a 400 (the model does not support batches)."""
        self.batch_models = self.batch_capable() - set(models)

    def batch_capable(self) -> set[str]:
        return set(self.models) if self.batch_models is None else set(self.batch_models)

    def fail_batch(self, batch_id: str, message: str = "Batch failed: the provider returned errors", *,
                   status: str = "failed") -> None:
        """The batch ends ``status`` (``failed``, ``expired`` or ``cancelled``) at its next poll, with ``message`` as
        its error, keeping the answers it has; a batch that has ended stays as it is."""
        if status not in _ENDED - {"completed"}:
            raise ValueError(f"a batch cannot be made to end {status!r}")
        with self._batch_lock:
            self.batches[batch_id].fate = (status, message)

    @property
    def batch_custom_ids(self) -> list[str]:
        """Every custom id submitted, in order, across the create calls (one sent twice is here twice)."""
        return [request["custom_id"] for body in self.batch_creates for request in body["requests"]]

    def batch_counters(self) -> dict[str, Any]:
        """What ``GET /_batches`` tells another process: the batches, the create calls' custom ids, polls, pages."""
        with self._batch_lock:
            return {"batches": [batch.as_object(results=False) for batch in self.batches.values()],
                    "creates": [[request["custom_id"] for request in body["requests"]] for body in self.batch_creates],
                    "polls": dict(self.batch_polls), "result_requests": [list(pair) for pair in self.batch_result_requests]}

    def _create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._batch_lock:
            self.batch_creates.append(body)
            self._batch_serial += 1
            batch = _Batch(f"batch_fake{self._batch_serial:04d}", str(body["model"]), list(body["requests"]), int(time.time()))
            if self.batch_failure is not None:
                batch.fate = ("failed", self.batch_failure)
            self.batches[batch.id] = batch
            return batch.as_object(results=False)

    def _cancel_batch(self, batch_id: str) -> dict[str, Any] | None:
        with self._batch_lock:
            batch = self.batches.get(batch_id)
            if batch is not None and not batch.ended:
                batch.end("cancelled", None)
            return None if batch is None else batch.as_object(results=True)

    def _poll_batch(self, batch_id: str) -> dict[str, Any] | None:
        """One step of the batch's life (None: no such batch): each poll is one, so a test decides how far it has got."""
        with self._batch_lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return None
            self.batch_polls[batch_id] = self.batch_polls.get(batch_id, 0) + 1
            if batch.fate is not None and not batch.ended:
                batch.end(*batch.fate)
            elif batch.status == "validating":
                batch.status = "in_progress"
            elif not batch.ended:
                self._finish_requests(batch)
            return batch.as_object(results=True)

    def _finish_requests(self, batch: _Batch) -> None:
        done = len(batch.rows)
        waiting = batch.requests[done:]
        for position, request in enumerate(waiting[: self.batch_per_poll], start=done + 1):
            batch.rows.append(self._batch_row(batch, position, request))
        if len(batch.rows) == len(batch.requests):
            batch.end("completed")

    def _batch_row(self, batch: _Batch, position: int, request: dict[str, Any]) -> dict[str, Any]:
        """One request's result row: the live reply to the same request at the batch price, or its error."""
        custom_id = request["custom_id"]
        row = {"id": f"batchreq_{batch.id.removeprefix('batch_')}_{position}", "custom_id": custom_id}
        chat = {**request["body"], "model": batch.model}  # the batch's model answers every request
        injected = custom_id in self.batch_fail_ids or (self.batch_fail_every > 0 and position % self.batch_fail_every == 0)
        problem = _request_problem(chat)
        if injected or problem is not None:
            error = {"code": "provider_error", "message": _ERROR_TEXT[502]} if injected else {"code": "invalid_request", "message": problem}
            return {**row, "response": None, "error": error}
        generation_id = f"gen-{self._next_nonce()}-fake"
        # shaped by the default scenario (its text, length, tool switches): pushed scenarios are for live requests
        body = fake_completion(chat, completion_id=generation_id, scenario=self.default, honour_seed=self.honour_seed,
                               nonce=self._next_nonce, price=BATCH_PRICE)
        with self._lock:
            self.costs[generation_id] = body["usage"]["cost"]
        return {**row, "response": {"status_code": 200, "request_id": generation_id, "body": body}, "error": None}

    def _next_scenario(self) -> Scenario:
        with self._lock:
            return self._queue.pop(0) if self._queue else self.default

    def _next_nonce(self) -> int:
        with self._lock:
            self._nonce += 1
            return self._nonce

    def sleep(self, seconds: float) -> None:
        """Sleep that ends early when the server stops (so tests never hang on it)."""
        self._stopping.wait(seconds)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing an idle keep-alive connection is normal, not an error.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(server: FakeOpenRouter) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        fake = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client's connection pool is exercised
    fake: FakeOpenRouter

    def setup(self) -> None:
        super().setup()
        # Send each write at once, so the client sees the chunk boundaries we choose.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read .requests instead

    # --- routing ---------------------------------------------------------------

    def do_GET(self) -> None:
        record = self._record(None)
        batches = _BATCH_ROUTE.search(self.path.split("?")[0].rstrip("/"))
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"data": list(self.fake.models.values())})
        elif self.path.startswith("/_requests"):
            self._json(200, {"requests": [asdict(r) for r in self.fake.requests if r is not record]})
        elif self.path.startswith("/_batches"):
            self._json(200, self.fake.batch_counters())
        elif batches is not None:
            self._batch_get(batches["id"], batches["action"])
        elif self.path.split("?")[0].rstrip("/").endswith(("/key", "/generation")):
            self._account(self.path)
        else:
            self._json(404, {"error": {"code": 404, "message": f"no route {self.path}"}})

    def _account(self, path: str) -> None:
        """OpenRouter's ``GET /key`` (credit used and left, its label shaped like a key) and ``GET /generation?id=``."""
        if not self._authorized():
            self._error(401, _ERROR_TEXT[401])
            return
        with self.fake._lock:
            costs = dict(self.fake.costs)
        if path.split("?")[0].rstrip("/").endswith("/key"):
            used = round(sum(costs.values()), 12)
            label = (self.fake.api_key or "sk-or-v1-unset")[:12] + "..."  # OpenRouter shows the start of the key
            self._json(200, {"data": {"label": label, "limit": self.fake.credit_limit, "usage": used,
                                      "limit_remaining": round(self.fake.credit_limit - used, 12)}})
            return
        wanted = parse_qs(urlsplit(path).query).get("id", [""])[0]
        if wanted not in costs:
            self._json(404, {"error": {"code": 404, "message": f"Generation {wanted} not found"}})
            return
        self._json(200, {"data": {"id": wanted, "total_cost": costs[wanted]}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            self._json(400, {"error": {"code": 400, "message": "body is not JSON"}})
            return
        if self.path.startswith("/_control"):
            self._control(body)
            return
        record = self._record(body)
        route = self.path.split("?")[0].rstrip("/")
        api = next((name for name, path in _API_PATHS.items() if route.endswith(path)), None)
        batches = _BATCH_ROUTE.search(route)
        if batches is not None:
            self._batch_post(batches["id"], batches["action"], raw, body)
        elif api is None:
            self._json(404, {"error": {"code": 404, "message": f"no route {self.path}"}})
        else:
            self._generate(api, body, record)

    def _record(self, body: Any) -> RecordedRequest:
        record = RecordedRequest(
            self.command, self.path, dict(self.headers.items()), body, time.monotonic(), self.client_address[1]
        )
        with self.fake._lock:
            self.fake.requests.append(record)
        return record

    def _control(self, body: dict[str, Any]) -> None:
        if "default" in body:
            self.fake.default = Scenario.from_dict(body["default"])
        self.fake.push(*(Scenario.from_dict(s) for s in body.get("push", [])))
        if body.get("clear_requests"):
            self.fake.requests.clear()
        settings = body.get("batches") or {}
        unknown = sorted(set(settings) - set(_BATCH_CONTROLS))
        if unknown:
            self._error(400, f"unknown batch settings: {unknown}; known: {sorted(_BATCH_CONTROLS)}")
            return
        try:
            for name, value in settings.items():
                _BATCH_CONTROLS[name](self.fake, value)
        except (KeyError, TypeError, ValueError) as exc:
            self._error(400, f"batch settings: {exc!r}")
            return
        self._json(200, {"ok": True})

    def _authorized(self) -> bool:
        return self.fake.api_key is None or self.headers.get("Authorization") == f"Bearer {self.fake.api_key}"

    # --- the Batch API ---------------------------------------------------------------------

    def _batch_post(self, batch_id: str | None, action: str | None, raw: bytes, body: Any) -> None:
        if not self._authorized():
            self._error(401, _ERROR_TEXT[401])
        elif batch_id is None:
            problem = _batch_problem(body, _top_keys(raw), self.fake.batch_capable())
            if problem is not None:
                self._error(400, problem)
            else:
                self._json(202, self.fake._create_batch(body))
        elif action == "cancel":
            self._batch_answer(batch_id, self.fake._cancel_batch(batch_id))
        else:
            self._error(404, f"no route {self.path}")

    def _batch_get(self, batch_id: str | None, action: str | None) -> None:
        if not self._authorized():
            self._error(401, _ERROR_TEXT[401])
        elif batch_id is None:
            with self.fake._batch_lock:
                listed = [batch.as_object(results=False) for batch in reversed(self.fake.batches.values())]
            self._json(200, {"object": "list", "data": listed})  # newest first
        elif action is None:
            self._batch_answer(batch_id, self.fake._poll_batch(batch_id))
        elif action == "results":
            self._batch_results(batch_id)
        else:
            self._error(404, f"no route {self.path}")

    def _batch_answer(self, batch_id: str, batch: dict[str, Any] | None) -> None:
        if batch is None:
            self._error(404, f"Batch {batch_id} not found")
        else:
            self._json(200, batch)

    def _batch_results(self, batch_id: str) -> None:
        query = {name: values[0] for name, values in parse_qs(urlsplit(self.path).query).items()}
        with self.fake._batch_lock:
            batch = self.fake.batches.get(batch_id)
            if batch is not None:
                self.fake.batch_result_requests.append((batch_id, query.get("cursor")))
            rows, status = ([], "") if batch is None else (list(batch.rows), batch.status)
        if batch is None:
            self._error(404, f"Batch {batch_id} not found")
        elif status not in _ENDED:
            self._error(409, f"Batch {batch_id} is {status}: its results can be read once it has ended")
        else:
            self._json(*_results_page(rows, query))

    def _error(self, status: int, message: str) -> None:
        """An error as OpenRouter words one: ``{"error": {"code", "message"}}``."""
        self._json(status, {"error": {"code": status, "message": message}})

    # --- generation (every API shape) ------------------------------------------------

    def _generate(self, api: str, body: dict[str, Any], record: RecordedRequest) -> None:
        scenario = self.fake._next_scenario()
        request = _as_chat(api, body)
        refusal = self._refusal(request, scenario)
        if refusal is not None:
            status, message = refusal
            headers = {"Retry-After": scenario.retry_after} if scenario.retry_after else {}
            self._json(status, {"error": {"code": status, "message": message}}, headers)
            return
        generation_id = f"gen-{self.fake._next_nonce()}-fake"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Generation-Id", generation_id)
        self.end_headers()
        self._count_stream(+1)
        try:
            self._stream(request, scenario, _FORMATS[api](generation_id, str(body.get("model"))))
        except (BrokenPipeError, ConnectionResetError):
            record.disconnected = True
            self.close_connection = True
        finally:
            self._count_stream(-1)

    def _count_stream(self, change: int) -> None:
        with self.fake._lock:
            self.fake.in_flight += change
            self.fake.max_in_flight = max(self.fake.max_in_flight, self.fake.in_flight)

    def _refusal(self, body: dict[str, Any], scenario: Scenario) -> tuple[int, str] | None:
        if not self._authorized():
            return 401, _ERROR_TEXT[401]
        if scenario.status != 200:
            return scenario.status, scenario.error_message or _ERROR_TEXT.get(scenario.status, "error")
        model = body.get("model")
        if not self.fake.accept_any_model and model not in self.fake.models and _ignored(model) is None:
            return 404, f"No endpoints found for {model}."
        ignored = _ignored(model)
        provider = body.get("provider")
        if isinstance(provider, dict) and provider.get("require_parameters") and ignored is not None and ignored in body:
            return 404, "No endpoints found that can handle the requested parameters."  # OpenRouter's words
        problem = _request_problem(body)
        return None if problem is None else (400, problem)

    def _stream(self, request: dict[str, Any], scenario: Scenario, fmt: _Format) -> None:
        """One scenario, written in any API shape: the shapes differ only in how events look.

        A reply is a list of steps (a token, or a tool call's start, argument fragment or end), each written
        as one or more events; the scenario's drops, errors, stalls and keep-alives count steps.
        """
        tokens, calls, finish = _reply(request, scenario, honour_seed=self.fake.honour_seed, nonce=self.fake._next_nonce)
        prompt_tokens = _prompt_tokens(request)
        writer = _EventWriter(self, scenario)
        writer.comment()
        self.fake.sleep(scenario.ttft_s)
        writer.events(fmt.start(prompt_tokens))
        delay = 1 / scenario.tokens_per_s if scenario.tokens_per_s else 0.0
        k = _probs_k(request, scenario)
        steps = [fmt.text(token, None if k is None else fake_logprobs(request["messages"], request, i, token, k))
                 for i, token in enumerate(tokens)]
        steps += _call_steps(fmt, calls, scenario.tool_split)
        for i, events in enumerate(steps):
            if i == scenario.drop_after:
                writer.drop()
                return
            if i == scenario.error_after:
                writer.events(fmt.error(scenario.error_code))
                writer.end()
                return
            if i == scenario.stall_after:
                self.fake.sleep(scenario.stall_s)
            if scenario.keepalive_every and i and i % scenario.keepalive_every == 0:
                writer.comment()
            writer.events(events)
            if delay:
                self.fake.sleep(delay)
        billed = _usage(prompt_tokens, len(steps))
        with self.fake._lock:
            self.fake.costs[fmt.generation_id] = billed["cost"]
        usage = billed if scenario.usage else None  # without usage in the stream, GET /generation still knows the cost
        writer.events(fmt.finish(finish if scenario.finish else None, usage))
        if scenario.done:
            writer.events(fmt.done())
        writer.end()

    # --- plain JSON replies ---------------------------------------------------------

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _reply(request: dict[str, Any], scenario: Scenario, *, honour_seed: bool = True,
           nonce: Callable[[], int] | None = None) -> tuple[list[str], list[_FakeCall], str]:
    """The reply's text tokens, its native tool calls, and its finish reason (a live stream and a batch's answer
    alike).  ``nonce`` is asked for a number only when the request draws without a seed (None: a fixed draw)."""
    view = _tool_view(request)
    calls = _planned_calls(view, scenario)
    said = [scenario.text] if scenario.text else []  # what the model writes before its calls
    if calls and not view.prompted:
        return (_words(said[0]) if said else []), calls, "tool_calls"  # limits are not applied to native calls
    if calls:  # Granite's convention is plain text, limits and all
        written = _continued(request, "\n".join([*said, *map(_prompted_call, calls)]))
        tokens, finish = _apply_limits(list(_text_pieces(written, scenario.tool_split)), _params(request))
        return tokens, [], finish
    text = scenario.text if scenario.text is not None else _answer(view.messages) or _structured(request)
    tokens, finish = _reply_tokens(request, scenario, text, honour_seed=honour_seed, nonce=nonce)
    return tokens, [], finish


def _reply_tokens(body: dict[str, Any], scenario: Scenario, text: str | None, *, honour_seed: bool,
                  nonce: Callable[[], int] | None) -> tuple[list[str], str]:
    params = _params(body)
    if not honour_seed:
        params.pop("seed", None)
    params.pop(_ignored(body.get("model")) or "", None)
    if text is not None:
        tokens = _words(text)
    else:
        drawn = nonce() if nonce is not None and "seed" not in params else None
        tokens = fake_reply(body["messages"], params, tokens=scenario.tokens, nonce=drawn)
    return _apply_limits(tokens, params)


def _probs_k(request: dict[str, Any], scenario: Scenario) -> int | None:
    """The alternatives per token a reply carries (None: no probabilities): as asked, unless the provider ignores it."""
    return _probs_asked(request) if scenario.logprobs and _ignored(request.get("model")) != "logprobs" else None


def fake_completion(request: dict[str, Any], *, completion_id: str = "chatcmpl-fake", scenario: Scenario | None = None,
                    honour_seed: bool = True, nonce: Callable[[], int] | None = None,
                    price: float | None = 1.0) -> dict[str, Any]:
    """The whole (not streamed) ``chat.completion`` the fake answers a chat request with: the text, tool calls,
    probabilities, finish reason and token counts its stream would have, the cost at ``price`` times the listed
    prices (0.5: a batch's discount; None: no cost, as a local engine reports none)."""
    scenario = scenario or Scenario()
    tokens, calls, finish = _reply(request, scenario, honour_seed=honour_seed, nonce=nonce)
    model = str(request.get("model"))
    message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens) if tokens or not calls else None}
    if calls:
        message["tool_calls"] = [{"id": f"call_{call.key}", "type": "function",
                                  "function": {"name": call.name, "arguments": call.arguments}} for call in calls]
    k = _probs_k(request, scenario)
    logprobs = None if k is None else {
        "content": [fake_logprobs(request["messages"], request, i, token, k) for i, token in enumerate(tokens)], "refusal": None}
    # counted as the stream counts its steps, so both report the same completion tokens
    steps = len(tokens) + len(_call_steps(_ChatFormat(completion_id, model), calls, scenario.tool_split))
    usage = _usage(_prompt_tokens(request), steps, price=1.0 if price is None else price)
    if price is None:
        del usage["cost"]
    choice = {"index": 0, "message": message, "finish_reason": finish, "native_finish_reason": finish, "logprobs": logprobs}
    return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "provider": "FakeProvider", "choices": [choice], "usage": usage}


def _request_problem(body: dict[str, Any]) -> str | None:
    """Why a chat body is refused (a 400 live, a failed request in a batch), or None."""
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return "messages must be a non-empty list"
    return _tool_problem(body)


def _apply_limits(tokens: list[str], params: dict[str, Any]) -> tuple[list[str], str]:
    """Honour ``stop`` (cut before the first stop string) and ``max_tokens``."""
    stops = params.get("stop") or []
    stops = [stops] if isinstance(stops, str) else stops
    text = "".join(tokens)
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    if cut >= 0:
        kept: list[str] = []
        length = 0
        for token in tokens:
            if length + len(token) > cut:
                if cut > length:
                    kept.append(token[: cut - length])
                break
            kept.append(token)
            length += len(token)
        return kept, "stop"
    limit = params.get("max_tokens")
    if isinstance(limit, int) and limit < len(tokens):
        return tokens[:limit], "length"
    return tokens, "stop"


def _prompt_tokens(body: dict[str, Any]) -> int:
    words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    return words + 4 * len(body.get("messages", []))


def _usage(prompt_tokens: int, completion_tokens: int, *, price: float = 1.0) -> dict[str, Any]:
    """The usage a reply reports, its cost at ``price`` times the listed prices."""
    cost = (prompt_tokens * PROMPT_PRICE + completion_tokens * COMPLETION_PRICE) * price
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "cost": round(cost, 12)}


def _params(body: dict[str, Any]) -> dict[str, Any]:
    """Everything a body asks for but the model, the messages and the streaming switches."""
    return {k: v for k, v in body.items() if k not in ("model", "messages", "stream", "stream_options")}


def _words(text: str) -> list[str]:
    return [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]


def _text_pieces(text: str, size: int) -> Iterator[str]:
    """``text`` in pieces of ``size`` characters (0: whole); nothing for no text."""
    step = size if size > 0 else max(len(text), 1)
    for start in range(0, len(text), step):
        yield text[start : start + step]


def _text_of(content: Any) -> str:
    """A message's text: a string, or the ``text`` of its parts (chat, Responses and Messages all have such lists)."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return "".join(str(part.get("text", "")) for part in parts if isinstance(part, dict))


# --- tool calls (chat form; every shape's request is seen in it) ------------------------------------


@dataclass(frozen=True)
class _FakeCall:
    key: str  # the hex every shape's ids are made from
    name: str
    arguments: str  # the JSON text streamed as the arguments


@dataclass(frozen=True)
class _ToolView:
    """What the model sees of tools: the offered functions, the conversation with its calls and results, the choice."""

    tools: list[dict[str, Any]]  # function definitions: {"name", "description", "parameters"}
    messages: list[dict[str, Any]]  # chat form; in prompted mode <tool_call> and <tool_response> text read as calls and results
    choice: Any = "auto"
    prompted: bool = False


_TOOLS_BLOCK = re.compile(r"<tools>\n(.*?)\n</tools>", re.S)
_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_RESULT_BLOCK = re.compile(r"<tool_response>\n(.*?)\n</tool_response>", re.S)


def _tool_view(request: dict[str, Any]) -> _ToolView:
    messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]
    tools = _functions(request.get("tools"))
    if _ignored(request.get("model")) == "tools":
        tools = []
    if tools:
        return _ToolView(tools, messages, request.get("tool_choice") or "auto")
    system = next((m for m in messages if m.get("role") == "system"), {})
    block = _TOOLS_BLOCK.search(_text_of(system.get("content")))
    if block is None:
        return _ToolView([], messages)
    lines = [_json_or_none(line) for line in block[1].splitlines() if line.strip()]
    return _ToolView(_functions(lines), [native for m in messages for native in _prompted_as_native(m)], prompted=True)


def _functions(tools: Any) -> list[dict[str, Any]]:
    found = [t.get("function") for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []
    return [f for f in found if isinstance(f, dict) and isinstance(f.get("name"), str)]


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _prompted_as_native(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Granite's convention read back: ``<tool_call>`` blocks as ``tool_calls``, a ``<tool_response>`` turn as results."""
    text = _text_of(message.get("content"))
    if message.get("role") == "assistant" and _CALL_BLOCK.search(text):
        calls = [{"id": f"prompted_{i}", "type": "function", "function": {"name": "", "arguments": block}}
                 for i, block in enumerate(_CALL_BLOCK.findall(text))]
        return [{"role": "assistant", "content": _CALL_BLOCK.sub("", text).strip() or None, "tool_calls": calls}]
    results = _RESULT_BLOCK.findall(text)
    if message.get("role") == "user" and results and not _RESULT_BLOCK.sub("", text).strip():
        return [{"role": "tool", "tool_call_id": f"prompted_{i}", "content": result} for i, result in enumerate(results)]
    return [message]


def _planned_calls(view: _ToolView, scenario: Scenario) -> list[_FakeCall]:
    """The calls this reply makes: none when no tools are offered, the choice is "none", or the model has
    called ``tool_steps`` times since the last user message (``required`` or a function's name always calls)."""
    named = _named(view.choice)
    tools = [t for t in view.tools if named is None or t["name"] == named]
    if not tools or view.choice == "none":
        return []
    forced = view.choice == "required" or named is not None
    if not forced and _calls_since_user(view.messages) >= scenario.tool_steps:
        return []
    filler = _Filler(_text_of(next((m.get("content") for m in reversed(view.messages) if m.get("role") == "user"), "")))
    calls = []
    for k in range(scenario.tool_calls):
        tool = tools[k % len(tools)]
        arguments = json.dumps(filler.object(tool.get("parameters")))  # arguments are an object, whatever the schema says
        if k == 0:
            arguments = arguments if scenario.tool_arguments is None else scenario.tool_arguments
        key = hashlib.sha256(json.dumps([view.messages, k], sort_keys=True, default=str).encode()).hexdigest()[:24]
        calls.append(_FakeCall(key, (scenario.tool_name or tool["name"]) if k == 0 else tool["name"], arguments))
    return calls


def _calls_since_user(messages: Sequence[dict[str, Any]]) -> int:
    count = 0
    for message in reversed(messages):
        if message.get("role") == "user":
            break
        count += message.get("role") == "assistant" and bool(message.get("tool_calls"))
    return count


_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_WORD = re.compile(r"[^\W\d_]+")


class _Filler:
    """Arguments from a JSON Schema and the prompt; its numbers and words are used up across the calls of a
    reply, so two calls of the same tool get different arguments."""

    def __init__(self, prompt: str) -> None:
        self.numbers: list[int | float] = [float(n) if "." in n else int(n) for n in _NUMBER.findall(prompt)]
        self.words = _WORD.findall(prompt)
        self.numbers_used = 0
        self.words_used = 0

    def value(self, schema: Any) -> Any:
        schema = schema if isinstance(schema, dict) else {}
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        branches = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(branches, list) and branches:  # the first branch that is not null (Optional[X] is X)
            return self.value(next((b for b in branches if isinstance(b, dict) and b.get("type") != "null"), branches[0]))
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        return self._of_type(kind, schema)

    def _of_type(self, kind: Any, schema: dict[str, Any]) -> Any:
        if kind == "object":
            return self.object(schema)
        if kind == "array":
            return [self.value(schema["items"])] if isinstance(schema.get("items"), dict) else []
        if kind in ("number", "integer"):
            return self.number(integer=kind == "integer")
        if kind in ("boolean", "null"):
            return True if kind == "boolean" else None
        return self.word()  # a string, or a schema that says nothing

    def object(self, schema: Any) -> dict[str, Any]:
        """The ``required`` properties only: optional ones are left to the function's defaults."""
        schema = schema if isinstance(schema, dict) else {}
        properties = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
        required = schema["required"] if isinstance(schema.get("required"), list) else []
        return {name: self.value(properties.get(name)) for name in required if isinstance(name, str)}

    def number(self, *, integer: bool) -> int | float:
        """The prompt's next number; when they have run out, counting on from the last one (or from 1)."""
        i = self.numbers_used
        self.numbers_used += 1
        value = self.numbers[i] if i < len(self.numbers) else (self.numbers[-1] if self.numbers else 0) + i - len(self.numbers) + 1
        return int(value) if integer else value

    def word(self) -> str:
        """The prompt's words from the last one backwards (the last word of a question is often its subject)."""
        self.words_used += 1
        return self.words[-self.words_used % len(self.words)] if self.words else "text"


def _structured(request: dict[str, Any]) -> str | None:
    """The reply to a request for JSON of a schema: an object that fits it (made as tool arguments are, from the
    prompt's words and numbers), when the schema is asked for by ``response_format`` (chat), ``text.format``
    (Responses) or told in a system message the way granite-magic tells it; None otherwise."""
    schema = _schema_asked(request)
    if schema is None:
        return None
    messages = request.get("messages") or []
    prompt = next((_text_of(m.get("content")) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), "")
    return json.dumps(_Filler(prompt).object(schema), ensure_ascii=False)


def _schema_asked(request: dict[str, Any]) -> dict[str, Any] | None:
    from ._spec import SCHEMA_INSTRUCTION

    if _ignored(request.get("model")) == "response_format":  # a provider that drops the field: a sentence, as asked
        return None
    for holder in (request.get("response_format"), (request.get("text") or {}).get("format") if isinstance(request.get("text"), dict) else None):
        if isinstance(holder, dict) and holder.get("type") == "json_schema":
            found = holder.get("json_schema", holder).get("schema") if isinstance(holder.get("json_schema", holder), dict) else None
            return found if isinstance(found, dict) else None
    for message in request.get("messages") or []:
        text = _text_of(message.get("content")) if isinstance(message, dict) and message.get("role") == "system" else ""
        if SCHEMA_INSTRUCTION in text:
            line = text.split(SCHEMA_INSTRUCTION, 1)[1].strip().split("\n", 1)[0]
            told = _json_or_none(line)
            return told if isinstance(told, dict) else None
    return None


def _answer(messages: Sequence[dict[str, Any]]) -> str | None:
    """The reply to a conversation that ends with tool results: it quotes them; None otherwise."""
    results = _trailing_results(messages)
    if not results:
        return None
    return f"The tool said: {results[0]}" if len(results) == 1 else f"The tools said: {'; '.join(results)}"


def _trailing_results(messages: Sequence[dict[str, Any]]) -> list[str]:
    results: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.insert(0, _text_of(message.get("content")))
    return results


def _continued(request: dict[str, Any], text: str) -> str:
    """A reply that an assistant message last has already begun continues it: only the rest is sent."""
    messages = request.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    begun = last.get("content") if last.get("role") == "assistant" else None
    return text[len(begun):] if isinstance(begun, str) and begun and text.startswith(begun) else text


def _prompted_call(call: _FakeCall) -> str:
    """A call in Granite's convention; arguments that are not JSON go in as they are (a malformed block)."""
    return f'<tool_call>\n{{"name": {json.dumps(call.name)}, "arguments": {call.arguments}}}\n</tool_call>'


def _tool_problem(request: dict[str, Any]) -> str | None:
    """What the real APIs refuse: a named ``tool_choice`` that is not offered, results that do not answer the
    calls of the assistant message just before them (each call, by id, once), calls left unanswered."""
    named = _named(request.get("tool_choice"))
    if named is not None and named not in {f["name"] for f in _functions(request.get("tools"))}:
        return f"tool_choice names {named!r}, which is not one of the tools offered"
    waiting: set[Any] | None = None  # ids of the last assistant message's calls that still need a result
    for message in (m for m in request.get("messages") or [] if isinstance(m, dict)):
        if message.get("role") == "tool":
            call_id = message.get("tool_call_id")
            if waiting is None or call_id not in waiting:
                return f"a tool result (tool_call_id {call_id!r}) must answer a call of the assistant message just before it"
            waiting.discard(call_id)
            continue
        if waiting:
            return f"an assistant message with tool_calls must be followed by a result for each call; missing: {sorted(map(str, waiting))}"
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        waiting = {c.get("id") if isinstance(c, dict) else None for c in calls} if isinstance(calls, list) and calls else None
        if waiting is not None and not all(isinstance(i, str) and i for i in waiting):
            return "every tool call in the conversation needs an id"
    return f"the conversation ends with tool calls that have no results: {sorted(map(str, waiting))}" if waiting else None


def _named(choice: Any) -> str | None:
    """The function a chat-form ``tool_choice`` names (``{"type": "function", "function": {"name": ...}}``), if any."""
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


SSE = tuple[str | None, Any]  # (event name or None, JSON payload or the literal "[DONE]")


class _Format:
    """How one API shape spells the events of a reply (one object per reply: Messages and Responses count blocks)."""

    def __init__(self, generation_id: str, model: str) -> None:
        self.generation_id, self.model, self.created = generation_id, model, int(time.time())

    def start(self, prompt_tokens: int) -> list[SSE]:
        return []

    def text(self, token: str, probs: dict[str, Any] | None) -> list[SSE]:
        """One token's event(s); ``probs`` is its probability entry when the request asked for them."""
        raise NotImplementedError

    def call_start(self, n: int, call: _FakeCall) -> list[SSE]:
        """The ``n``-th tool call of the reply begins: its id and name, no arguments yet."""
        raise NotImplementedError

    def call_arguments(self, n: int, call: _FakeCall, fragment: str) -> list[SSE]:
        raise NotImplementedError

    def call_end(self, n: int, call: _FakeCall) -> list[SSE]:
        return []

    def finish(self, reason: str | None, usage: dict[str, Any] | None) -> list[SSE]:
        raise NotImplementedError

    def error(self, code: int | str) -> list[SSE]:
        raise NotImplementedError

    def done(self) -> list[SSE]:
        return [(None, "[DONE]")]


def _call_steps(fmt: _Format, calls: Sequence[_FakeCall], split: int) -> list[list[SSE]]:
    """Each call as steps: its start, its argument fragments, its end (steps without events left out)."""
    steps: list[list[SSE]] = []
    for n, call in enumerate(calls):
        steps.append(fmt.call_start(n, call))
        steps += [fmt.call_arguments(n, call, piece) for piece in _text_pieces(call.arguments, split)]
        steps.append(fmt.call_end(n, call))
    return [step for step in steps if step]


class _ChatFormat(_Format):
    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> SSE:
        return (None, {"id": self.generation_id, "provider": "FakeProvider", "model": self.model,
                       "object": "chat.completion.chunk", "created": self.created, "choices": choices, **extra})

    def _delta(self, delta: dict[str, Any]) -> SSE:
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": None, "native_finish_reason": None, "logprobs": None}])

    def text(self, token: str, probs: dict[str, Any] | None) -> list[SSE]:
        delta = {"role": "assistant", "content": token}
        logprobs = None if probs is None else {"content": [probs], "refusal": None}
        return [self._chunk([{"index": 0, "delta": delta, "finish_reason": None, "native_finish_reason": None, "logprobs": logprobs}])]

    def call_start(self, n: int, call: _FakeCall) -> list[SSE]:
        # OpenAI sends the id, type and name once, with empty arguments, then only argument fragments.
        entry = {"index": n, "id": f"call_{call.key}", "type": "function", "function": {"name": call.name, "arguments": ""}}
        return [self._delta({"role": "assistant", "content": None, "tool_calls": [entry]})]

    def call_arguments(self, n: int, call: _FakeCall, fragment: str) -> list[SSE]:
        return [self._delta({"tool_calls": [{"index": n, "function": {"arguments": fragment}}]})]

    def finish(self, reason: str | None, usage: dict[str, Any] | None) -> list[SSE]:
        events = []
        if reason:
            delta = {"role": "assistant", "content": ""}
            events.append(self._chunk([{"index": 0, "delta": delta, "finish_reason": reason, "native_finish_reason": reason, "logprobs": None}]))
        if usage:
            details = {"is_byok": False, "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}
            events.append(self._chunk([], usage={**usage, **details}))
        return events

    def error(self, code: int | str) -> list[SSE]:
        choice = {"index": 0, "delta": {"content": ""}, "finish_reason": "error", "native_finish_reason": "error"}
        return [self._chunk([choice], error={"code": code, "message": "Provider disconnected unexpectedly"})]


class _ResponsesFormat(_Format):
    """Text is output item 0 (when there is text); each function call is an output item after it."""

    def __init__(self, generation_id: str, model: str) -> None:
        super().__init__(generation_id, model)
        self._said: list[str] = []
        self._calls: list[dict[str, Any]] = []  # the finished function_call items

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        return {"id": self.generation_id, "object": "response", "model": self.model, "status": status, **extra}

    def start(self, prompt_tokens: int) -> list[SSE]:
        return [(None, {"type": "response.created", "response": self._response("in_progress")})]

    def text(self, token: str, probs: dict[str, Any] | None) -> list[SSE]:
        self._said.append(token)
        event = {"type": "response.output_text.delta", "item_id": "msg_0", "output_index": 0, "content_index": 0, "delta": token}
        if probs is not None:  # the Responses API spells an entry without bytes
            event["logprobs"] = [{"token": probs["token"], "logprob": probs["logprob"],
                                  "top_logprobs": [{"token": t["token"], "logprob": t["logprob"]} for t in probs["top_logprobs"]]}]
        return [(None, event)]

    def _item(self, n: int, call: _FakeCall, arguments: str, status: str) -> tuple[int, dict[str, Any]]:
        item = {"type": "function_call", "id": f"fc_{call.key}", "call_id": f"call_{call.key}", "name": call.name,
                "arguments": arguments, "status": status}
        return (1 if self._said else 0) + n, item

    def call_start(self, n: int, call: _FakeCall) -> list[SSE]:
        index, item = self._item(n, call, "", "in_progress")
        return [(None, {"type": "response.output_item.added", "output_index": index, "item": item})]

    def call_arguments(self, n: int, call: _FakeCall, fragment: str) -> list[SSE]:
        index, item = self._item(n, call, "", "in_progress")
        return [(None, {"type": "response.function_call_arguments.delta", "item_id": item["id"], "output_index": index, "delta": fragment})]

    def call_end(self, n: int, call: _FakeCall) -> list[SSE]:
        index, item = self._item(n, call, call.arguments, "completed")
        self._calls.append(item)
        return [(None, {"type": "response.function_call_arguments.done", "item_id": item["id"], "output_index": index,
                        "arguments": call.arguments}),
                (None, {"type": "response.output_item.done", "output_index": index, "item": item})]

    def _output(self) -> list[dict[str, Any]]:
        message = {"type": "message", "id": "msg_0", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": "".join(self._said), "annotations": []}]}
        return [*([message] if self._said else []), *self._calls]

    def finish(self, reason: str | None, usage: dict[str, Any] | None) -> list[SSE]:
        if reason is None:
            return []
        extra: dict[str, Any] = {"output": self._output()}
        if usage:
            extra["usage"] = {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
                              "total_tokens": usage["total_tokens"], "cost": usage["cost"]}
        if reason == "length":
            extra["incomplete_details"] = {"reason": "max_output_tokens"}
            return [(None, {"type": "response.incomplete", "response": self._response("incomplete", **extra)})]
        return [(None, {"type": "response.completed", "response": self._response("completed", **extra)})]

    def error(self, code: int | str) -> list[SSE]:
        error = {"code": code, "message": "Provider disconnected unexpectedly"}
        return [(None, {"type": "response.failed", "response": self._response("failed", error=error)})]


_MESSAGES_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


class _MessagesFormat(_Format):
    """Content blocks, numbered from 0: the text (when there is text), then one ``tool_use`` block per call."""

    def __init__(self, generation_id: str, model: str) -> None:
        super().__init__(generation_id, model)
        self._blocks = 0  # blocks started so far
        self._open: str | None = None  # the type of the block being written

    def start(self, prompt_tokens: int) -> list[SSE]:
        message: dict[str, Any] = {"id": self.generation_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                                   "stop_reason": None, "usage": {"input_tokens": prompt_tokens, "output_tokens": 0}}
        return [("message_start", {"type": "message_start", "message": message})]

    def _begin(self, block: dict[str, Any]) -> list[SSE]:
        events = [*self._end(), ("content_block_start", {"type": "content_block_start", "index": self._blocks, "content_block": block})]
        if self._blocks == 0:
            events.append(("ping", {"type": "ping"}))  # where Anthropic sends its first ping
        self._blocks += 1
        self._open = str(block["type"])
        return events

    def _end(self) -> list[SSE]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1})]

    def text(self, token: str, probs: dict[str, Any] | None) -> list[SSE]:
        begin = self._begin({"type": "text", "text": ""}) if self._open != "text" else []
        return [*begin, ("content_block_delta", {"type": "content_block_delta", "index": self._blocks - 1,
                                                 "delta": {"type": "text_delta", "text": token}})]

    def call_start(self, n: int, call: _FakeCall) -> list[SSE]:
        return self._begin({"type": "tool_use", "id": f"toolu_{call.key}", "name": call.name, "input": {}})

    def call_arguments(self, n: int, call: _FakeCall, fragment: str) -> list[SSE]:
        return [("content_block_delta", {"type": "content_block_delta", "index": self._blocks - 1,
                                         "delta": {"type": "input_json_delta", "partial_json": fragment}})]

    def call_end(self, n: int, call: _FakeCall) -> list[SSE]:
        return self._end()

    def finish(self, reason: str | None, usage: dict[str, Any] | None) -> list[SSE]:
        events = self._end()
        if reason:
            delta = {"type": "message_delta", "delta": {"stop_reason": _MESSAGES_STOP.get(reason, reason), "stop_sequence": None}}
            if usage:
                delta["usage"] = {"output_tokens": usage["completion_tokens"], "cost": usage["cost"]}
            events.append(("message_delta", delta))
        return events

    def error(self, code: int | str) -> list[SSE]:
        return [("error", {"type": "error", "error": {"type": "overloaded_error", "code": code,
                                                      "message": "Provider disconnected unexpectedly"}})]

    def done(self) -> list[SSE]:
        return [("message_stop", {"type": "message_stop"})]


class _CompletionsFormat(_ChatFormat):
    """The completions stream: chat's chunks with a choice's ``text``, and probabilities in the classic parallel lists
    (``tokens``, ``token_logprobs``, ``top_logprobs`` as ``{token: logprob}``), as OpenAI and vLLM send them."""

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> SSE:
        return (None, {"id": self.generation_id, "provider": "FakeProvider", "model": self.model, "object": "text_completion",
                       "created": self.created, "choices": choices, **extra})

    def text(self, token: str, probs: dict[str, Any] | None) -> list[SSE]:
        logprobs = None if probs is None else {
            "tokens": [probs["token"]], "token_logprobs": [probs["logprob"]], "text_offset": [0],
            "top_logprobs": [{entry["token"]: entry["logprob"] for entry in probs["top_logprobs"]}]}
        return [self._chunk([{"index": 0, "text": token, "logprobs": logprobs, "finish_reason": None}])]

    def finish(self, reason: str | None, usage: dict[str, Any] | None) -> list[SSE]:
        events = [self._chunk([{"index": 0, "text": "", "logprobs": None, "finish_reason": reason}])] if reason else []
        return events + ([self._chunk([], usage=usage)] if usage else [])

    def error(self, code: int | str) -> list[SSE]:
        choice = {"index": 0, "text": "", "finish_reason": "error"}
        return [self._chunk([choice], error={"code": code, "message": "Provider disconnected unexpectedly"})]


_FORMATS: dict[str, type[_Format]] = {"chat": _ChatFormat, "responses": _ResponsesFormat, "messages": _MessagesFormat,
                                      "completions": _CompletionsFormat}
# Matched in this order by the path's end: "/chat/completions" ends in "/completions" too.
_API_PATHS = {"chat": "/chat/completions", "responses": "/responses", "messages": "/messages", "completions": "/completions"}


# --- every shape's request as a chat-completions body -----------------------------------------------


def _as_chat(api: str, body: dict[str, Any]) -> dict[str, Any]:
    """Any shape's request as a chat-completions body, so every shape gets the same reply.

    Function calls and their results become chat's assistant ``tool_calls`` and ``role: "tool"``
    messages, and the tools and ``tool_choice`` chat's spelling of them.
    """
    if api == "chat":
        return body
    if api == "completions":
        return _completion_as_chat(body)
    fixed = {"model", "stream", "stream_options", "input", "instructions", "system", "messages", "tools", "tool_choice"}
    params = {k: v for k, v in body.items() if k not in fixed}
    if api == "responses":
        turns = _from_responses(body.get("input"))
        system = body.get("instructions")
        params["max_tokens"] = params.pop("max_output_tokens", None)
    else:
        turns = _from_messages(body.get("messages"))
        system = body.get("system")
        params["stop"] = params.pop("stop_sequences", None)
    tools = body.get("tools")
    params["tools"] = [_chat_tool(tool) for tool in tools] if isinstance(tools, list) else tools
    params["tool_choice"] = _chat_choice(body.get("tool_choice"))
    messages = ([{"role": "system", "content": system}] if system else []) + turns
    return {"model": body.get("model"), "messages": messages, **{k: v for k, v in params.items() if v is not None}}


def _completion_as_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A completions request as chat: the prompt is the one user message (no prompt: no messages, refused with a 400),
    and ``logprobs: K`` (the alternatives per token) is chat's ``logprobs: true, top_logprobs: K``."""
    params = {k: v for k, v in body.items() if k not in ("prompt", "logprobs")}
    prompt = body.get("prompt")
    k = body.get("logprobs")
    if isinstance(k, int) and not isinstance(k, bool):
        params |= {"logprobs": True, "top_logprobs": k}
    return {**params, "messages": [{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt else []}


def _from_responses(items: Any) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for item in items if isinstance(items, list) else ():
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function", "function": {"name": item.get("name"), "arguments": item.get("arguments")}}
            last = messages[-1] if messages else {}
            if last.get("role") == "assistant":  # the text the model wrote before its calls
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": item.get("output")})
        else:
            messages.append(dict(item) if isinstance(item, dict) else item)  # a copy: the recorded body stays as it was sent
    return messages


def _from_messages(turns: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for turn in turns if isinstance(turns, list) else ():
        content = turn.get("content") if isinstance(turn, dict) else None
        blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
        if not any(b.get("type") in ("tool_use", "tool_result") for b in blocks):
            messages.append(turn)
        elif turn.get("role") == "assistant":
            text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
            calls = [{"id": b.get("id"), "type": "function", "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input"))}}
                     for b in blocks if b.get("type") == "tool_use"]
            messages.append({"role": "assistant", "content": text or None, "tool_calls": calls})
        else:
            messages += [{"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": _text_of(b.get("content")),
                          **({"is_error": True} if b.get("is_error") is True else {})} for b in blocks if b.get("type") == "tool_result"]
            rest = [b for b in blocks if b.get("type") != "tool_result"]
            if rest:
                messages.append({"role": turn.get("role"), "content": rest})
    return messages


def _chat_tool(tool: Any) -> Any:
    """A Responses (``{type, name, ...}``) or Messages (``{name, input_schema, ...}``) tool in chat's form."""
    if not isinstance(tool, dict) or "function" in tool:
        return tool
    if "input_schema" in tool:
        function = {"name": tool.get("name"), **({"description": tool["description"]} if "description" in tool else {}),
                    "parameters": tool.get("input_schema")}
        return {"type": "function", "function": function}
    return {"type": tool.get("type", "function"), "function": {k: v for k, v in tool.items() if k != "type"}}


def _chat_choice(choice: Any) -> Any:
    """``tool_choice`` in chat's form: Messages' ``{type: auto|any|none|tool}``, Responses' ``{type: function, name}``."""
    if not isinstance(choice, dict) or "function" in choice:
        return choice
    if choice.get("type") in ("function", "tool"):
        return {"type": "function", "function": {"name": choice.get("name")}}
    return {"auto": "auto", "any": "required", "none": "none"}.get(str(choice.get("type")), choice)


class _EventWriter:
    """Writes SSE events as HTTP/1.1 chunks, optionally re-split and with CRLF."""

    def __init__(self, handler: _Handler, scenario: Scenario) -> None:
        self.handler = handler
        self.newline = "\r\n" if scenario.crlf else "\n"
        self.split = scenario.split

    def comment(self) -> None:
        self._write(f": OPENROUTER PROCESSING{self.newline}{self.newline}")

    def events(self, events: list[SSE]) -> None:
        for name, payload in events:
            text = payload if isinstance(payload, str) else json.dumps(payload)
            head = f"event: {name}{self.newline}" if name else ""
            self._write(f"{head}data: {text}{self.newline}{self.newline}")

    def _write(self, text: str) -> None:
        data = text.encode()
        for piece in _pieces(data, self.split):
            self.handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.handler.wfile.flush()

    def end(self) -> None:
        self.handler.wfile.write(b"0\r\n\r\n")
        self.handler.wfile.flush()

    def drop(self) -> None:
        """Close the socket mid-body: the client sees an incomplete chunked stream."""
        self.handler.close_connection = True
        self.handler.connection.shutdown(socket.SHUT_RDWR)


def _pieces(data: bytes, size: int | None) -> Iterator[bytes]:
    if not size:
        yield data
        return
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- OpenRouter's Batch API ----------------------------------------------------------------------------

BATCH_ENDPOINT = "/v1/chat/completions"  # the one endpoint the fake batches: it answers chat only
BATCH_MOST = 5000  # requests in one create call, at most
BATCH_PRICE = 0.5  # a batch's answers cost half the live price
_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
_BEFORE_REQUESTS = ("endpoint", "model", "callback_url")  # the real API stream-parses the body: these come first
_PAGE_MOST = 1000  # result rows in one page, at most (and by default)
# /batches, /batches/{id}, /batches/{id}/results, /batches/{id}/cancel (under /api/v1, or /api/beta as documented)
_BATCH_ROUTE = re.compile(r"/batches(?:/(?P<id>[^/]+)(?:/(?P<action>[^/]+))?)?$")


@dataclass
class _Batch:
    """One batch: ``validating``, then ``in_progress`` while polls finish its requests, then ended (see _ENDED)."""

    id: str
    model: str
    requests: list[dict[str, Any]]  # {"custom_id", "body"}, as submitted
    created_at: int
    status: str = "validating"
    rows: list[dict[str, Any]] = field(default_factory=list)  # the result rows of the requests finished so far, in order
    fate: tuple[str, str] | None = None  # (status, message): how it ends at its next poll, when it is to fail
    error: dict[str, Any] | None = None
    finalized_at: int | None = None

    @property
    def ended(self) -> bool:
        return self.status in _ENDED

    def end(self, status: str, message: str | None = None) -> None:
        self.status, self.finalized_at = status, int(time.time())
        self.error = None if message is None else {"message": message}

    def as_object(self, *, results: bool) -> dict[str, Any]:
        """The batch object; an ended batch carries its usage, and its result rows when ``results``."""
        failed = sum(row["error"] is not None for row in self.rows)
        return {"id": self.id, "object": "batch", "endpoint": BATCH_ENDPOINT, "model": self.model, "status": self.status,
                "request_counts": {"total": len(self.requests), "completed": len(self.rows) - failed, "failed": failed},
                "created_at": self.created_at, "completion_window": "24h",
                "results": list(self.rows) if results and self.ended else None,
                "usage": _summed_usage(self.rows) if self.ended else None,
                "error": self.error, "finalized_at": self.finalized_at}


def _summed_usage(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    usages = [row["response"]["body"]["usage"] for row in rows if row["response"] is not None]
    summed = {name: sum(usage[name] for usage in usages) for name in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return {**summed, "cost": round(sum(usage["cost"] for usage in usages), 12)}


def _top_keys(raw: bytes) -> list[str]:
    """The top-level keys of a JSON object in the order the text has them (the hook turns every object into its keys,
    and the outermost call is the last)."""
    keys = json.loads(raw or b"{}", object_pairs_hook=lambda pairs: [name for name, _ in pairs])
    return keys if isinstance(keys, list) and all(isinstance(k, str) for k in keys) else []


def _batch_problem(body: Any, keys: list[str], capable: set[str]) -> str | None:
    """Why a create call is refused with a 400, or None."""
    if not isinstance(body, dict):
        return "The body must be a JSON object"
    late = [key for key in _BEFORE_REQUESTS if key in keys and "requests" in keys and keys.index(key) > keys.index("requests")]
    if late:
        return f"{', '.join(late)} must come before requests in the body (it is read as a stream)"
    endpoint, model = body.get("endpoint"), body.get("model")
    if not isinstance(endpoint, str) or not endpoint:
        return "endpoint is required"
    if endpoint != BATCH_ENDPOINT:
        return f"endpoint {endpoint} is not supported here: this server batches {BATCH_ENDPOINT} only"
    if not isinstance(model, str) or not model:
        return "model is required"
    if model not in capable:
        return f"Model {model} does not support batches"
    return _requests_problem(body.get("requests"))


def _requests_problem(requests: Any) -> str | None:
    if not isinstance(requests, list) or not requests:
        return "requests must be a non-empty array"
    if len(requests) > BATCH_MOST:
        return f"A batch holds at most {BATCH_MOST} requests; this one has {len(requests)}"
    seen: set[str] = set()
    for i, request in enumerate(requests):
        custom_id = request.get("custom_id") if isinstance(request, dict) else None
        if not isinstance(custom_id, str) or not custom_id:
            return f"requests[{i}] has no custom_id"
        if custom_id in seen:
            return f"requests[{i}]: duplicate custom_id {custom_id!r}"
        seen.add(custom_id)
        if not isinstance(request.get("body"), dict):
            return f"requests[{i}] ({custom_id}) has no body"
    return None


def _results_page(rows: list[dict[str, Any]], query: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """A page of an ended batch's rows: those after the row the cursor names (the last row of the page before), so
    asking for the same page again gives the same rows."""
    limit = query.get("limit", str(_PAGE_MOST))
    if not limit.isdigit() or int(limit) < 1:
        return 400, {"error": {"code": 400, "message": f"limit must be a positive integer, not {limit!r}"}}
    ids = [row["id"] for row in rows]
    cursor = query.get("cursor")
    if cursor is not None and cursor not in ids:
        return 400, {"error": {"code": 400, "message": f"unknown cursor {cursor!r}"}}
    start = 0 if cursor is None else ids.index(cursor) + 1
    page = rows[start : start + min(int(limit), _PAGE_MOST)]
    more = start + len(page) < len(rows)
    return 200, {"object": "list", "data": page, "has_more": more, "next_cursor": page[-1]["id"] if more else None}


# ``POST /_control`` with ``{"batches": {...}}``: each setting turns one of the server's batch knobs.
_BATCH_CONTROLS: dict[str, Callable[[FakeOpenRouter, Any], None]] = {
    "models": lambda fake, value: setattr(fake, "batch_models", None if value is None else set(value)),
    "refuse": lambda fake, value: fake.refuse_batches(*value),
    "per_poll": lambda fake, value: setattr(fake, "batch_per_poll", value),
    "fail_ids": lambda fake, value: setattr(fake, "batch_fail_ids", set(value)),
    "fail_every": lambda fake, value: setattr(fake, "batch_fail_every", int(value)),
    "failure": lambda fake, value: setattr(fake, "batch_failure", value),
    "fail_batch": lambda fake, value: fake.fail_batch(value["id"], **{k: v for k, v in value.items() if k != "id"}),
}


# --- a stand-in for `vllm run-batch` ---------------------------------------------------------------------


@dataclass(frozen=True)
class _FileStyle:
    """How an engine writes a batch's output: its ids, and where and how a failed request goes."""

    line_prefix: str
    request_prefix: str
    errors_apart: bool  # failures go to an errors file of their own, not the output
    failure: Callable[[int, str], tuple[dict[str, Any] | None, dict[str, Any] | None]]  # (status, message) -> (body, error)


_FILE_STYLES: dict[str, _FileStyle] = {
    # vLLM writes a failure inline: no body, and its ErrorResponse as the line's error
    "vllm": _FileStyle("vllm-", "vllm-batch-", False, lambda status, message: (
        None, {"object": "error", "message": message, "type": "BadRequestError" if status == 400 else "InternalServerError",
               "param": None, "code": status})),
    # OpenAI puts it in the errors file, as the HTTP error the request got (the line's own error is for the batch's)
    "openai": _FileStyle("batch_req_", "req_", True, lambda status, message: (
        {"error": {"message": message, "type": "invalid_request_error" if status == 400 else "server_error",
                   "param": None, "code": None}}, None)),
}


def run_batch_file(input_path: str | Path, output_path: str | Path, *, errors_path: str | Path | None = None,
                   fail: Iterable[str] = (), missing: Iterable[str] = (), style: str = "vllm") -> None:
    """What ``vllm run-batch -i INPUT -o OUTPUT`` does, answering with the fake's replies: reads OpenAI-format batch
    input lines (``{"custom_id", "method", "url", "body"}``) and writes one output line per request, in order
    (``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``, the body a whole
    ``chat.completion`` without a cost, as a local engine reports none).

    ``fail``: custom ids whose request fails (a 500); a line that is not a chat request fails with a 400.  ``missing``:
    custom ids left out entirely, as from a run cut short.  ``style="openai"`` writes as OpenAI's Batch API does:
    failures go to ``errors_path`` (written, empty when nothing failed), not the output.
    """
    if style not in _FILE_STYLES:
        raise ValueError(f"style must be one of {sorted(_FILE_STYLES)}, not {style!r}")
    shape = _FILE_STYLES[style]
    if shape.errors_apart != (errors_path is not None):
        raise ValueError(f"style={style!r} {'needs' if shape.errors_apart else 'takes no'} errors_path")
    failing, left_out = set(fail), set(missing)
    output: list[str] = []
    errors: list[str] = []
    for number, text in enumerate(Path(input_path).read_text().splitlines(), start=1):
        if not text.strip():
            continue
        line = json.loads(text)
        if line.get("custom_id") in left_out:
            continue
        answer = _file_answer(shape, number, line, failing)
        (errors if shape.errors_apart and answer["response"]["status_code"] != 200 else output).append(json.dumps(answer))
    Path(output_path).write_text("".join(f"{line}\n" for line in output))
    if errors_path is not None:
        Path(errors_path).write_text("".join(f"{line}\n" for line in errors))


def _file_answer(shape: _FileStyle, number: int, line: dict[str, Any], failing: set[str]) -> dict[str, Any]:
    custom_id = line.get("custom_id")
    key = hashlib.sha256(json.dumps([custom_id, number]).encode()).hexdigest()[:24]
    response: dict[str, Any] = {"status_code": 200, "request_id": f"{shape.request_prefix}{key}"}
    failure = _file_failure(line, failing)
    error = None
    if failure is None:
        response["body"] = fake_completion(line["body"], completion_id=f"chatcmpl-{key}", price=None)
    else:
        response["status_code"] = failure[0]
        response["body"], error = shape.failure(*failure)
    return {"id": f"{shape.line_prefix}{key}", "custom_id": custom_id, "response": response, "error": error}


def _file_failure(line: dict[str, Any], failing: set[str]) -> tuple[int, str] | None:
    """(HTTP status, message) when the line's request fails, else None."""
    if line.get("url") != BATCH_ENDPOINT or not isinstance(line.get("body"), dict):
        return 400, f"url {line.get('url')!r} is not supported: only {BATCH_ENDPOINT}, with a body"
    if line.get("custom_id") in failing:
        return 500, "Internal server error"
    problem = _request_problem(line["body"])
    return None if problem is None else (400, problem)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake OpenRouter API on 127.0.0.1 for tests and demos.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--tokens-per-s", type=float, default=None)
    parser.add_argument("--tokens", type=int, default=None, help="reply length in tokens")
    parser.add_argument("--api-key", default=None, help="require this key")
    args = parser.parse_args(argv)
    server = FakeOpenRouter(port=args.port, api_key=args.api_key)
    server.default = replace(server.default, ttft_s=args.ttft, tokens_per_s=args.tokens_per_s, tokens=args.tokens)
    server.start()
    print(server.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
