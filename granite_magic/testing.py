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
``stop``, ``logprobs``, ``max_tokens``, any sampling field) is served without
being listed, and answers as if ``NAME`` had not been sent.

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
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["GRANITE_LISTING", "FakeOpenRouter", "RecordedRequest", "Scenario", "fake_logprobs", "fake_reply"]

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
        self.in_flight = 0
        self.max_in_flight = 0  # the most streams served at the same moment
        self._queue: list[Scenario] = []
        self._lock = threading.Lock()
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
            self.default = Scenario()
            self.max_in_flight = self.in_flight

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Every generation request, whatever its API shape."""
        return [r for r in self.requests if r.method == "POST" and r.path.rstrip("/").endswith(tuple(_API_PATHS.values()))]

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
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"data": list(self.fake.models.values())})
        elif self.path.startswith("/_requests"):
            self._json(200, {"requests": [asdict(r) for r in self.fake.requests if r is not record]})
        else:
            self._json(404, {"error": {"code": 404, "message": f"no route {self.path}"}})

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
        if api is None:
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
        self._json(200, {"ok": True})

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
        if self.fake.api_key is not None and self.headers.get("Authorization") != f"Bearer {self.fake.api_key}":
            return 401, _ERROR_TEXT[401]
        if scenario.status != 200:
            return scenario.status, scenario.error_message or _ERROR_TEXT.get(scenario.status, "error")
        model = body.get("model")
        if not self.fake.accept_any_model and model not in self.fake.models and _ignored(model) is None:
            return 404, f"No endpoints found for {model}."
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return 400, "messages must be a non-empty list"
        return None

    def _stream(self, request: dict[str, Any], scenario: Scenario, fmt: _Format) -> None:
        """One scenario, written in any API shape: the shapes differ only in how events look."""
        tokens, finish = self._reply_tokens(request, scenario)
        prompt_tokens = _prompt_tokens(request)
        writer = _EventWriter(self, scenario)
        writer.comment()
        self.fake.sleep(scenario.ttft_s)
        writer.events(fmt.start(prompt_tokens))
        delay = 1 / scenario.tokens_per_s if scenario.tokens_per_s else 0.0
        k = _probs_asked(request) if scenario.logprobs and _ignored(request.get("model")) != "logprobs" else None
        for i, token in enumerate(tokens):
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
            probs = None if k is None else fake_logprobs(request["messages"], request, i, token, k)
            writer.events(fmt.text(token, probs))
            if delay:
                self.fake.sleep(delay)
        usage = _usage(prompt_tokens, len(tokens)) if scenario.usage else None
        writer.events(fmt.finish(finish if scenario.finish else None, usage))
        if scenario.done:
            writer.events(fmt.done())
        writer.end()

    def _reply_tokens(self, body: dict[str, Any], scenario: Scenario) -> tuple[list[str], str]:
        params = {k: v for k, v in body.items() if k not in ("model", "messages", "stream", "stream_options")}
        if not self.fake.honour_seed:
            params.pop("seed", None)
        params.pop(_ignored(body.get("model")) or "", None)
        if scenario.text is not None:
            tokens = [w if i == 0 else " " + w for i, w in enumerate(scenario.text.split(" "))]
        else:
            nonce = self.fake._next_nonce() if "seed" not in params else None
            tokens = fake_reply(body["messages"], params, tokens=scenario.tokens, nonce=nonce)
        return _apply_limits(tokens, params)

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


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    cost = prompt_tokens * PROMPT_PRICE + completion_tokens * COMPLETION_PRICE
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "cost": round(cost, 12)}


SSE = tuple[str | None, Any]  # (event name or None, JSON payload or the literal "[DONE]")


class _Format:
    """How one API shape spells the events of a reply."""

    def __init__(self, generation_id: str, model: str) -> None:
        self.generation_id, self.model, self.created = generation_id, model, int(time.time())

    def start(self, prompt_tokens: int) -> list[SSE]:
        return []

    def text(self, token: str, probs: dict[str, Any] | None) -> list[SSE]:
        """One token's event(s); ``probs`` is its probability entry when the request asked for them."""
        raise NotImplementedError

    def finish(self, reason: str | None, usage: dict[str, Any] | None) -> list[SSE]:
        raise NotImplementedError

    def error(self, code: int | str) -> list[SSE]:
        raise NotImplementedError

    def done(self) -> list[SSE]:
        return [(None, "[DONE]")]


class _ChatFormat(_Format):
    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> SSE:
        return (None, {"id": self.generation_id, "provider": "FakeProvider", "model": self.model,
                       "object": "chat.completion.chunk", "created": self.created, "choices": choices, **extra})

    def text(self, token: str, probs: dict[str, Any] | None) -> list[SSE]:
        delta = {"role": "assistant", "content": token}
        logprobs = None if probs is None else {"content": [probs], "refusal": None}
        return [self._chunk([{"index": 0, "delta": delta, "finish_reason": None, "native_finish_reason": None, "logprobs": logprobs}])]

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
    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        return {"id": self.generation_id, "object": "response", "model": self.model, "status": status, **extra}

    def start(self, prompt_tokens: int) -> list[SSE]:
        return [(None, {"type": "response.created", "response": self._response("in_progress")})]

    def text(self, token: str, probs: dict[str, Any] | None) -> list[SSE]:
        event = {"type": "response.output_text.delta", "item_id": "msg_0", "output_index": 0, "content_index": 0, "delta": token}
        if probs is not None:  # the Responses API spells an entry without bytes
            event["logprobs"] = [{"token": probs["token"], "logprob": probs["logprob"],
                                  "top_logprobs": [{"token": t["token"], "logprob": t["logprob"]} for t in probs["top_logprobs"]]}]
        return [(None, event)]

    def finish(self, reason: str | None, usage: dict[str, Any] | None) -> list[SSE]:
        if reason is None:
            return []
        extra: dict[str, Any] = {}
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


_MESSAGES_STOP = {"stop": "end_turn", "length": "max_tokens"}


class _MessagesFormat(_Format):
    def start(self, prompt_tokens: int) -> list[SSE]:
        message: dict[str, Any] = {"id": self.generation_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "usage": {"input_tokens": prompt_tokens, "output_tokens": 0}}
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        return [("message_start", {"type": "message_start", "message": message}), ("content_block_start", block),
                ("ping", {"type": "ping"})]

    def text(self, token: str, probs: dict[str, Any] | None) -> list[SSE]:
        return [("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token}})]

    def finish(self, reason: str | None, usage: dict[str, Any] | None) -> list[SSE]:
        events: list[SSE] = [("content_block_stop", {"type": "content_block_stop", "index": 0})]
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


_FORMATS: dict[str, type[_Format]] = {"chat": _ChatFormat, "responses": _ResponsesFormat, "messages": _MessagesFormat}
_API_PATHS = {"chat": "/chat/completions", "responses": "/responses", "messages": "/messages"}


def _as_chat(api: str, body: dict[str, Any]) -> dict[str, Any]:
    """Any shape's request as a chat-completions body, so every shape gets the same reply."""
    if api == "chat":
        return body
    fixed = {"model", "stream", "stream_options", "input", "instructions", "system", "messages"}
    params = {k: v for k, v in body.items() if k not in fixed}
    if api == "responses":
        turns = body.get("input") or []
        turns = [{"role": "user", "content": turns}] if isinstance(turns, str) else list(turns)
        system = body.get("instructions")
        params["max_tokens"] = params.pop("max_output_tokens", None)
    else:
        turns = list(body.get("messages") or [])
        system = body.get("system")
        params["stop"] = params.pop("stop_sequences", None)
    messages = ([{"role": "system", "content": system}] if system else []) + turns
    return {"model": body.get("model"), "messages": messages, **{k: v for k, v in params.items() if v is not None}}


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
