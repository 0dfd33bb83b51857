"""The OpenRouter streaming protocol without I/O.

Bytes go in, typed events come out; events go into an ``Accumulator`` and a
``Result`` comes out.  Nothing here touches a socket or a clock it was not
given, so every function can be fed arbitrary input in tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import errors
from .result import Result, ToolCall, Usage

__all__ = [
    "Accumulator",
    "ChatStreamDecoder",
    "ChunkMeta",
    "Done",
    "ErrorEvent",
    "Event",
    "Finish",
    "SSEDecoder",
    "SSEStreamDecoder",
    "ServerSentEvent",
    "TextDelta",
    "ToolCallDelta",
    "UsageReport",
    "as_cost",
    "build_messages",
    "chat_body",
    "chunk_events",
    "decode_chat_chunk",
    "error_for_status",
    "parse_data",
    "parse_retry_after",
]


# --- Server-Sent Events -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental SSE parser (WHATWG rules) fed with raw bytes from any read size.

    Comment lines (``: OPENROUTER PROCESSING``) are skipped, ``\\n``, ``\\r\\n``
    and ``\\r`` all end a line, and multi-line ``data:`` fields are joined with
    ``\\n``.  Lines are split as bytes and decoded one at a time: CR and LF never
    occur inside a multi-byte UTF-8 sequence, so a character split across two
    reads is always whole by the time its line is complete.
    """

    def __init__(self) -> None:
        self._tail = b""
        self._skip_lf = False  # the last read ended in CR: a leading LF completes CRLF
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        if not chunk:
            return []
        lines = (self._tail + chunk).splitlines(keepends=True)
        last = lines[-1]
        if last.endswith((b"\n", b"\r")):
            self._tail = b""
            self._skip_lf = last.endswith(b"\r")
        else:
            self._tail = lines.pop()
        events: list[ServerSentEvent] = []
        for line in lines:
            if line.startswith(b"data: "):  # the hot path: one per token
                self._data.append(line[6:].rstrip(b"\r\n").decode("utf-8", errors="replace"))
                continue
            event = self._line(line.rstrip(b"\r\n").decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of stream: finish a last event even if its blank line never came.

        The spec discards it, but servers that close right after ``data: [DONE]``
        without the blank line exist, and losing their last event helps nobody.
        """
        events = self.feed(b"\n") if self._tail else []
        last = self._line("")
        return events + ([last] if last is not None else [])

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = ServerSentEvent("\n".join(self._data), self._event or "message", self._id, self._retry)
        self._data = []
        self._event = ""
        return event


# --- Typed events --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(frozen=True, slots=True)
class UsageReport:
    usage: Usage


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str
    native_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    message: str
    code: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChunkMeta:
    model: str | None = None
    provider: str | None = None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """The ``[DONE]`` terminator."""


Event = TextDelta | ToolCallDelta | UsageReport | Finish | ErrorEvent | ChunkMeta | Done


def parse_data(data: str) -> dict[str, Any] | list[Event]:
    """A ``data:`` payload as a JSON object, or the events it stands for on its own:
    ``[Done()]`` for the terminator, an ErrorEvent for a line that is not JSON, nothing for other JSON."""
    if data.strip() == "[DONE]":
        return [Done()]
    try:
        parsed = json.loads(data)
    except json.JSONDecodeError:
        return [ErrorEvent(f"the server sent a line that is not JSON: {data[:200]!r}")]
    return parsed if isinstance(parsed, dict) else []


def as_cost(value: Any) -> float | None:
    """A cost in USD from a number or a numeric string; None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def decode_chat_chunk(data: str) -> list[Event]:
    """One chat-completions ``data:`` payload to typed events."""
    chunk = parse_data(data)
    if isinstance(chunk, list):
        return chunk
    events: list[Event] = []
    if "model" in chunk or "provider" in chunk:
        events.append(ChunkMeta(chunk.get("model"), chunk.get("provider"), chunk.get("id")))
    return events + chunk_events(chunk)


def chunk_events(chunk: Mapping[str, Any]) -> list[Event]:
    """The events of one parsed chunk, without its metadata."""
    events: list[Event] = []
    for choice in chunk.get("choices") or ():
        events.extend(_choice_events(choice))
    if chunk.get("usage"):
        events.append(UsageReport(_usage(chunk["usage"])))
    if isinstance(chunk.get("error"), dict):
        events.append(_error_event(chunk["error"]))
    return events


def _choice_events(choice: Mapping[str, Any]) -> list[Event]:
    events: list[Event] = []
    delta = choice.get("delta") or {}
    content = delta.get("content")
    if content:
        events.append(TextDelta(content))
    for call in delta.get("tool_calls") or ():
        function = call.get("function") or {}
        events.append(ToolCallDelta(call.get("index", 0), call.get("id"), function.get("name"), function.get("arguments")))
    reason = choice.get("finish_reason")
    if reason:
        events.append(Finish(reason, choice.get("native_finish_reason")))
    return events


def _usage(raw: Mapping[str, Any]) -> Usage:
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return Usage(
        prompt_tokens=raw.get("prompt_tokens"),
        completion_tokens=raw.get("completion_tokens"),
        total_tokens=raw.get("total_tokens"),
        cost=as_cost(raw.get("cost")),
        cached_tokens=prompt_details.get("cached_tokens"),
        reasoning_tokens=completion_details.get("reasoning_tokens"),
    )


def _error_event(error: Mapping[str, Any]) -> ErrorEvent:
    # code is usually the HTTP status as an int but may be a string ("server_error") or absent
    metadata = error.get("metadata")
    return ErrorEvent(str(error.get("message") or "unknown error"), error.get("code"), metadata if isinstance(metadata, dict) else {})


class SSEStreamDecoder:
    """Bytes of an SSE stream to typed events; a subclass says what each server-sent event means."""

    def __init__(self) -> None:
        self._sse = SSEDecoder()

    def feed(self, chunk: bytes) -> list[Event]:
        return self._decode(self._sse.feed(chunk))

    def close(self) -> list[Event]:
        return self._decode(self._sse.close())

    def _decode(self, sse_events: Iterable[ServerSentEvent]) -> list[Event]:
        events: list[Event] = []
        for sse in sse_events:
            events.extend(self.events(sse))
        return events

    def events(self, sse: ServerSentEvent) -> list[Event]:
        raise NotImplementedError


class ChatStreamDecoder(SSEStreamDecoder):
    """A chat-completions stream.

    Every chunk repeats the model and provider; ``ChunkMeta`` is emitted only
    when they change, which keeps the per-token path short.
    """

    def __init__(self) -> None:
        super().__init__()
        self._meta: tuple[Any, Any] | None = None

    def events(self, sse: ServerSentEvent) -> list[Event]:
        chunk = parse_data(sse.data)
        if isinstance(chunk, list):
            return chunk
        events: list[Event] = []
        meta = (chunk.get("model"), chunk.get("provider"))
        if meta != self._meta and (meta[0] or meta[1]):
            self._meta = meta
            events.append(ChunkMeta(meta[0], meta[1], chunk.get("id")))
        events.extend(chunk_events(chunk))
        return events


# --- Accumulation --------------------------------------------------------------


class Accumulator:
    """Folds events into the live state of a reply; ``result()`` snapshots it.

    Also the object a progress callback sees while streaming: ``text`` is joined
    lazily so a renderer that reads it 15 times a second does not make a long
    reply quadratic.
    """

    def __init__(self, params: Mapping[str, Any] | None = None, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.params = dict(params or {})
        self._clock = clock
        self.started = clock()
        self.first_token_at: float | None = None
        self.chunks = 0
        self.model: str | None = None
        self.provider: str | None = None
        self.generation_id: str | None = None
        self.finish: Finish | None = None
        self.usage = Usage()
        self.error: ErrorEvent | None = None
        self.done = False
        self._parts: list[str] = []
        self._joined = ""
        self._joined_parts = 0
        self._tool_calls: dict[int, ToolCall] = {}

    def restart_clock(self) -> None:
        """Start timing now: a queued comparison column starts when it may send, not when it was planned."""
        self.started = self._clock()

    @property
    def text(self) -> str:
        if self._joined_parts != len(self._parts):
            self._joined = "".join(self._parts)
            self._joined_parts = len(self._parts)
        return self._joined

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self.started

    @property
    def has_output(self) -> bool:
        return self.first_token_at is not None

    def feed(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self._text(event.text)
        elif isinstance(event, ChunkMeta):
            self.model = event.model or self.model
            self.provider = event.provider or self.provider
        elif isinstance(event, ToolCallDelta):
            self._tool_call(event)
        elif isinstance(event, UsageReport):
            self.usage = event.usage
        elif isinstance(event, Finish):
            self.finish = event
        elif isinstance(event, ErrorEvent):
            self.error = event
        elif isinstance(event, Done):
            self.done = True

    def _text(self, text: str) -> None:
        if self.first_token_at is None:
            self.first_token_at = self._clock()
        self._parts.append(text)
        self.chunks += 1

    def _tool_call(self, delta: ToolCallDelta) -> None:
        if self.first_token_at is None:
            self.first_token_at = self._clock()
        call = self._tool_calls.setdefault(delta.index, ToolCall(delta.index))
        call.id = delta.id or call.id
        call.name += delta.name or ""
        call.arguments += delta.arguments or ""

    def result(self, *, error: str | None = None, partial: bool | None = None) -> Result:
        now = self._clock()
        finish = self.finish
        if partial is None:
            partial = error is not None or finish is None or finish.reason == "error"
        return Result(
            text=self.text,
            finish_reason=finish.reason if finish else None,
            native_finish_reason=finish.native_reason if finish else None,
            usage=self.usage,
            model=self.model,
            provider=self.provider,
            generation_id=self.generation_id,
            ttft_s=None if self.first_token_at is None else self.first_token_at - self.started,
            duration_s=now - self.started,
            params=dict(self.params),
            error=error,
            partial=partial,
            tool_calls=[self._tool_calls[i] for i in sorted(self._tool_calls)],
            chunks=self.chunks,
        )


# --- Requests --------------------------------------------------------------------


def build_messages(prompt: str, *, system: str | None = None, history: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.extend(dict(m) for m in history if m.get("role") != "system")
    messages.append({"role": "user", "content": prompt})
    return messages


def chat_body(model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    """The chat-completions request body: only the sampling fields that were set."""
    return {
        "model": model,
        "messages": list(messages),
        "stream": True,
        # A no-op on OpenRouter (usage is always sent) but Ollama and vLLM need it.
        "stream_options": {"include_usage": True},
        **params,
    }


# --- Errors ------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # rare: only servers that send an HTTP date

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_error_body(body: bytes) -> tuple[str | None, Any, dict[str, Any]]:
    """(message, code, metadata) from an error body; tolerant of non-JSON bodies."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = body.decode("utf-8", errors="replace").strip()
        return (text[:300] or None), None, {}
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, None, {}
    metadata = error.get("metadata")
    message = error.get("message")
    return (str(message) if message else None), error.get("code"), (metadata if isinstance(metadata, dict) else {})


def error_for_status(status: int, body: bytes, *, model: str) -> errors.APIError:
    """The typed exception for a non-200 response, with a message a person can act on."""
    api_message, code, metadata = parse_error_body(body)
    said = f" The API said: {api_message}" if api_message else ""
    kind, message = _STATUS_MESSAGES.get(status, (None, ""))
    if kind is None:
        if status >= 500:
            kind = errors.ServerError
            message = f"The model's provider failed (HTTP {status}), even after retries. Try again in a minute, or pass another model with -m."
        else:
            kind = errors.APIError
            message = f"The API answered HTTP {status}."
    if status == 403:
        reasons = metadata.get("reasons") or []
        if reasons:
            said += f" Flagged for: {', '.join(map(str, reasons))}."
    if status == 404:
        message = message.format(model=model)
    return kind(f"{message}{said}".strip(), status=status, code=code, metadata=metadata)


_STATUS_MESSAGES: dict[int, tuple[type[errors.APIError], str]] = {
    400: (errors.BadRequestError, "The request was refused (HTTP 400): check the parameters and the prompt length."),
    401: (errors.AuthenticationError, f"The API key was refused (HTTP 401): it is missing, invalid or disabled. {errors.KEY_HELP}"),
    402: (errors.InsufficientCreditsError, "Not enough credits, or the key's spending limit was reached (HTTP 402). Add credits at https://openrouter.ai/settings/credits or raise the key's limit."),
    403: (errors.ModerationError, "The input was refused by moderation (HTTP 403). Rephrase the prompt."),
    404: (errors.ModelNotFoundError, "No provider serves the model {model!r} (HTTP 404). Check the id with `%granite models` or pass another with -m."),
    408: (errors.ServerError, "The request timed out at the provider (HTTP 408), even after retries. Try again later."),
    413: (errors.BadRequestError, "The request is too large (HTTP 413): shorten the prompt or the conversation."),
    429: (errors.RateLimitError, "Rate limited (HTTP 429), even after waiting and retrying. Wait a minute, or use a paid model variant or your own key."),
}
