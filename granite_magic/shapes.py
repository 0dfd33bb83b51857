"""The three request formats OpenRouter serves, without I/O.

Each shape builds its request body from the same parameter table and decodes
its stream into the same typed events (``protocol.Event``), so everything above
the client (accumulation, results, the magic, the panel) is shape-blind:

* ``chat``: OpenAI chat completions, ``POST /chat/completions`` (the default);
* ``responses``: OpenAI Responses, ``POST /responses`` (stateless);
* ``messages``: Anthropic Messages, ``POST /messages`` (named SSE events).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import InvalidParameterError
from .protocol import (
    ChatStreamDecoder,
    ChunkMeta,
    Done,
    ErrorEvent,
    Event,
    Finish,
    ServerSentEvent,
    SSEStreamDecoder,
    TextDelta,
    ToolCallDelta,
    UsageReport,
    as_cost,
    chat_body,
    parse_data,
)
from .result import Usage

__all__ = ["API_SHAPES", "MESSAGES_DEFAULT_MAX_TOKENS", "Shape", "StreamDecoder", "shape"]

# The Messages API requires max_tokens; this is sent when the user set none (and shown by --dry-run).
MESSAGES_DEFAULT_MAX_TOKENS = 4096


class StreamDecoder(Protocol):
    def feed(self, chunk: bytes) -> list[Event]: ...
    def close(self) -> list[Event]: ...


BodyBuilder = Callable[[str, Sequence[Mapping[str, Any]], Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Shape:
    """One request format: where it is sent, how its body is built, how its stream is read."""

    name: str
    path: str
    build: BodyBuilder
    decoder_type: Callable[[], StreamDecoder]

    def body(self, model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        return self.build(model, messages, params)

    def decoder(self) -> StreamDecoder:
        return self.decoder_type()


def shape(name: str) -> Shape:
    try:
        return API_SHAPES[name]
    except KeyError:
        raise InvalidParameterError(f"api={name!r} is invalid: must be one of {', '.join(API_SHAPES)}") from None


def _split_system(messages: Sequence[Mapping[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    system = "\n\n".join(str(m["content"]) for m in messages if m.get("role") == "system") or None
    return system, [{"role": m["role"], "content": m["content"]} for m in messages if m.get("role") != "system"]


# --- OpenAI Responses --------------------------------------------------------------


def responses_body(model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    """``instructions`` carries the system prompt; ``max_tokens`` is called ``max_output_tokens``."""
    instructions, turns = _split_system(messages)
    body: dict[str, Any] = {"model": model, "input": turns, "stream": True}
    if instructions:
        body["instructions"] = instructions
    for name, value in params.items():
        body["max_output_tokens" if name == "max_tokens" else name] = value
    return body


_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


class ResponsesStreamDecoder(SSEStreamDecoder):
    """``data:`` events with a ``type``: output text deltas, then completed, incomplete or failed."""

    def events(self, sse: ServerSentEvent) -> list[Event]:
        data = parse_data(sse.data)
        return data if isinstance(data, list) else self._event(data)

    def _event(self, data: Mapping[str, Any]) -> list[Event]:
        kind = data.get("type", "")
        response = data.get("response") or {}
        if kind == "response.output_text.delta":
            return [TextDelta(str(data.get("delta", "")))] if data.get("delta") else []
        if kind == "response.function_call_arguments.delta":
            return [ToolCallDelta(int(data.get("output_index", 0)), data.get("item_id"), None, data.get("delta"))]
        if kind == "response.created":
            return [ChunkMeta(response.get("model"), response.get("provider"), response.get("id"))]
        if kind == "response.completed":
            return [*_responses_usage(response), Finish("stop", response.get("status"))]
        if kind == "response.incomplete":
            reason = (response.get("incomplete_details") or {}).get("reason")
            return [*_responses_usage(response), Finish(_INCOMPLETE_REASONS.get(str(reason), "length"), reason)]
        if kind == "response.failed":
            error = response.get("error") or {}
            return [ErrorEvent(str(error.get("message") or "the response failed"), error.get("code")), Finish("error")]
        if kind == "error":
            return [_error_event(data)]
        return []


def _responses_usage(response: Mapping[str, Any]) -> list[Event]:
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return []
    return [UsageReport(Usage(
        prompt_tokens=usage.get("input_tokens"), completion_tokens=usage.get("output_tokens"),
        total_tokens=usage.get("total_tokens"), cost=as_cost(usage.get("cost")),
        cached_tokens=(usage.get("input_tokens_details") or {}).get("cached_tokens"),
        reasoning_tokens=(usage.get("output_tokens_details") or {}).get("reasoning_tokens"),
    ))]


# --- Anthropic Messages --------------------------------------------------------------


def messages_body(model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    """A top-level ``system``, a required ``max_tokens``, and ``stop`` called ``stop_sequences``."""
    system, turns = _split_system(messages)
    body: dict[str, Any] = {"model": model, "messages": turns, "max_tokens": MESSAGES_DEFAULT_MAX_TOKENS, "stream": True}
    if system:
        body["system"] = system
    for name, value in params.items():
        body["stop_sequences" if name == "stop" else name] = value
    return body


_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                 "refusal": "content_filter", "pause_turn": "stop"}


class MessagesStreamDecoder(SSEStreamDecoder):
    """Named events: message_start, content_block_delta, message_delta (usage, stop reason), message_stop."""

    def __init__(self) -> None:
        super().__init__()
        self._usage = Usage()

    def events(self, sse: ServerSentEvent) -> list[Event]:
        data = parse_data(sse.data)
        return data if isinstance(data, list) else self._event(data.get("type") or sse.event, data)

    def _event(self, kind: str, data: Mapping[str, Any]) -> list[Event]:
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "input_json_delta":
                return [ToolCallDelta(int(data.get("index", 0)), None, None, delta.get("partial_json"))]
            return [TextDelta(str(delta["text"]))] if delta.get("text") else []
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                return [ToolCallDelta(int(data.get("index", 0)), block.get("id"), block.get("name"), None)]
            return []
        if kind == "message_start":
            message = data.get("message") or {}
            return [ChunkMeta(message.get("model"), message.get("provider"), message.get("id")), *self._merge_usage(message.get("usage"))]
        if kind == "message_delta":
            reason = (data.get("delta") or {}).get("stop_reason")
            finish = [Finish(_STOP_REASONS.get(reason, "stop"), reason)] if reason else []
            return [*self._merge_usage(data.get("usage")), *finish]
        if kind == "message_stop":
            return [Done()]
        if kind == "error":
            return [_error_event(data)]
        return []  # ping, content_block_stop

    def _merge_usage(self, raw: Any) -> list[Event]:
        """Input tokens arrive with message_start, the (cumulative) output count with message_delta."""
        if not isinstance(raw, dict):
            return []
        usage = self._usage
        usage.prompt_tokens = raw.get("input_tokens", usage.prompt_tokens)
        usage.completion_tokens = raw.get("output_tokens", usage.completion_tokens)
        usage.cost = as_cost(raw.get("cost")) if "cost" in raw else usage.cost
        if usage.prompt_tokens is not None and usage.completion_tokens is not None:
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        return [UsageReport(Usage(**vars(usage)))]


def _error_event(data: Mapping[str, Any]) -> ErrorEvent:
    """``{"type": "error", "error": {...}}`` (Messages) or the error fields at the top (Responses)."""
    nested = data.get("error")
    error: Mapping[str, Any] = nested if isinstance(nested, dict) else data
    return ErrorEvent(str(error.get("message") or "unknown error"), error.get("code") or error.get("type"))


API_SHAPES: dict[str, Shape] = {
    "chat": Shape("chat", "/chat/completions", chat_body, ChatStreamDecoder),
    "responses": Shape("responses", "/responses", responses_body, ResponsesStreamDecoder),
    "messages": Shape("messages", "/messages", messages_body, MessagesStreamDecoder),
}
