"""The three request formats OpenRouter serves, side by side, without I/O.

Each shape builds its request body from a ``Request`` (the parameter table gives
each field's name in that shape) and decodes its stream into the same typed
events (``_events``), so everything above the client is shape-blind:

* ``chat``: OpenAI chat completions, ``POST /chat/completions`` (the default);
* ``responses``: OpenAI Responses, ``POST /responses`` (stateless);
* ``messages``: Anthropic Messages, ``POST /messages`` (named SSE events);
* ``completions``: a raw completion (``--raw``), ``POST /completions`` with a ``prompt`` to continue: no
  chat turns, so it is not an ``api=`` choice but the shape of every request that carries a ``prompt``.

Tools: ``Request.tools`` are offered in each shape's spelling (``tools_for``,
``tool_choice_for``; ``chat_tools`` is also the form the local chat template and
Granite's prompted convention take), and the calls and results of the
conversation (kept in the chat form) become Responses ``function_call`` /
``function_call_output`` items or Messages ``tool_use`` / ``tool_result`` blocks.  Every decoder reads tool calls as ``ToolCallDelta``
events (the id and the name once, then argument fragments, keyed by an index)
and a reply that asked for calls finishes with ``tool_calls``.

Decoding is total: whatever JSON a server sends, a decoder returns events or
raises ``ProtocolError``, never anything else.
"""

from __future__ import annotations

import copy
import heapq
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._errors import InvalidParameterError, ProtocolError, is_transient
from ._events import ChunkMeta, Done, ErrorEvent, Event, Finish, TextDelta, TokenLogprobs, ToolCallDelta, UsageReport
from ._params import Api, Sampling, get_param
from ._result import Usage
from ._schema import JsonSchema
from ._sse import ServerSentEvent, SSEStreamDecoder
from ._tokens import Alternative, Token, spelled
from ._tools import TOOL_NAME, Tool
from ._values import loads
from ._vocab import SchemaMethod

__all__ = ["API_SHAPES", "COMPLETIONS", "COMPLETIONS_DEFAULT_MAX_TOKENS", "MESSAGES_DEFAULT_MAX_TOKENS", "TOOL_CHOICES", "Api", "Request", "Shape", "StreamDecoder",
           "build_messages", "chat_tools", "chunk_events", "messages_tools", "responses_tools", "shape", "shape_for", "tool_choice_for",
           "tools_for"]

# The Messages API requires max_tokens; this is sent when the user set none (and shown by --dry-run).
MESSAGES_DEFAULT_MAX_TOKENS = 4096
# The completions API stops at 16 tokens unless told otherwise (OpenAI, vLLM, llama.cpp's server); a raw completion
# asks for 256 when the user set no length, as simonw/llm does for completion models (``with_default_length``).
COMPLETIONS_DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class Structure:
    """The JSON shape a reply must have (``--schema``) and how it is obtained: ``grammar`` (the local model's tokens are
    constrained), ``provider`` (``response_format`` json_schema) or ``prompted`` (the schema is only in the prompt, which
    carries it in every method: a grammar constrains tokens, and the model never sees the schema's descriptions)."""

    schema: Mapping[str, Any]
    name: str
    method: SchemaMethod


@dataclass(frozen=True)
class Request:
    """What is asked, independent of where it goes: model, messages, validated sampling.

    ``messages`` are in the chat-completions form (system, user, assistant, with ``tool_calls`` and
    ``role: "tool"`` results); each shape converts them.  ``documents`` are for a chat template that takes
    them (the local backend; over HTTP they travel in the system message).  ``tools`` are offered natively;
    in prompted mode they are already in the system message instead.  ``extra`` holds top-level body fields
    of the HTTP API that are not sampling parameters (OpenRouter's ``provider`` routing for ``--strict``).
    ``prompt`` makes it a raw completion (``--raw``): the text is continued as written, with no messages, no
    template and no framing.  ``structure`` asks for JSON of a schema (``--schema``), spelled by each shape.
    """

    model: str
    messages: tuple[Mapping[str, Any], ...]
    sampling: Sampling = field(default_factory=Sampling)
    documents: tuple[Mapping[str, str], ...] = ()
    tools: tuple[Tool, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    prompt: str | None = None
    structure: Structure | None = None

    @property
    def raw(self) -> bool:
        return self.prompt is not None

    @property
    def texts(self) -> tuple[str, ...]:
        """What the model reads, before any template: the prompt of a raw completion, else each message's content."""
        if self.prompt is not None:
            return (self.prompt,)
        return tuple(str(m.get("content") or "") for m in self.messages)


def build_messages(prompt: str, *, system: str | None = None, history: Sequence[Mapping[str, Any]] = ()) -> tuple[dict[str, Any], ...]:
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.extend(dict(m) for m in history if m.get("role") != "system")
    messages.append({"role": "user", "content": prompt})
    return tuple(messages)


class StreamDecoder(Protocol):
    def feed(self, chunk: bytes) -> list[Event]: ...
    def close(self) -> list[Event]: ...

    @property
    def recovered(self) -> Sequence[ErrorEvent]:
        """Errors the server reported and then finished the reply anyway: not failures, but worth a word."""
        ...


@dataclass(frozen=True)
class Shape:
    """One request format: where it is sent, how its body is built, how its stream is read."""

    name: str  # an Api, or "completions"
    path: str
    body: Callable[[Request], dict[str, Any]]
    decoder: Callable[[], StreamDecoder]


def shape(name: str) -> Shape:
    try:
        return API_SHAPES[name]
    except KeyError:
        raise InvalidParameterError(f"api={name!r} is invalid: must be one of {', '.join(API_SHAPES)}") from None


def shape_for(api_shape: Shape, request: Request) -> Shape:
    """The shape ``request`` goes out in: a raw completion's whatever the client's ``api``, else the client's own."""
    return COMPLETIONS if request.raw else api_shape


# --- reading JSON of unknown shape ----------------------------------------------------------


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def parse_data(data: str) -> dict[str, Any] | list[Event]:
    """A ``data:`` payload as a JSON object, or the events it stands for on its own:
    ``[Done()]`` for the terminator, nothing for JSON that is not an object."""
    if data.strip() == "[DONE]":
        return [Done()]
    try:
        parsed = json.loads(data)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError(f"the server sent a line that is not JSON: {data[:200]!r}") from None
    return parsed if isinstance(parsed, dict) else []


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def as_cost(value: Any) -> float | None:
    """A cost in USD from a number or a numeric string; None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _wrong(what: str, value: Any) -> ProtocolError:
    return ProtocolError(f"the server sent a chunk of the wrong shape ({what} is {type(value).__name__}: {json.dumps(value)[:80]})")


def _error_event(error: Any, *, fallback_code: Any = None) -> ErrorEvent:
    """An error object (or a bare string) as an event; ``code`` falls back to ``type`` when null.

    A status written as text (``"429"``) is read as the number it is, so it is transient exactly when the
    same HTTP status would be retried.
    """
    if not isinstance(error, dict):
        return ErrorEvent(str(error) if error not in (None, "") else "unknown error", fallback_code)
    code = _status_text(error.get("code"))
    if code is None:
        code = error.get("type", fallback_code)
    metadata = error.get("metadata")
    return ErrorEvent(str(error.get("message") or "unknown error"), code, metadata if isinstance(metadata, dict) else {},
                      transient=is_transient(code))


def _status_text(code: Any) -> Any:
    return int(code) if isinstance(code, str) and len(code) == 3 and code.isascii() and code.isdigit() else code


# --- each shape's spelling of the tools and of tool_choice ---------------------------------------


def _definition(tool: Tool) -> JsonSchema:
    # A copy, so a request body edited later never reaches back into the tool.
    return {"name": tool.name, "description": tool.description, "parameters": copy.deepcopy(tool.parameters)}


def chat_tools(tools: Sequence[Tool]) -> list[JsonSchema]:
    """OpenAI chat completions: ``[{"type": "function", "function": {name, description, parameters}}]``."""
    return [{"type": "function", "function": _definition(tool)} for tool in tools]


def responses_tools(tools: Sequence[Tool]) -> list[JsonSchema]:
    """OpenAI Responses: ``[{"type": "function", name, description, parameters}]``."""
    return [{"type": "function", **_definition(tool)} for tool in tools]


def messages_tools(tools: Sequence[Tool]) -> list[JsonSchema]:
    """Anthropic Messages: ``[{name, description, input_schema}]``."""
    definitions = map(_definition, tools)
    return [{"name": d["name"], "description": d["description"], "input_schema": d["parameters"]} for d in definitions]


_TOOL_LISTS: dict[str, Callable[[Sequence[Tool]], list[JsonSchema]]] = {
    "chat": chat_tools,
    "responses": responses_tools,
    "messages": messages_tools,
}

TOOL_CHOICES = ("auto", "none", "required")  # or the name of one of the offered functions

# Our tool_choice words → each shape's form.
_CHOICES: dict[str, dict[str, Any]] = {
    "chat": {"auto": "auto", "none": "none", "required": "required"},
    "responses": {"auto": "auto", "none": "none", "required": "required"},
    "messages": {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}},
}

# A function's name as tool_choice → each shape's form.
_NAMED_CHOICE: dict[str, Callable[[str], Any]] = {
    "chat": lambda name: {"type": "function", "function": {"name": name}},
    "responses": lambda name: {"type": "function", "name": name},
    "messages": lambda name: {"type": "tool", "name": name},
}


def tools_for(api: Api, tools: Sequence[Tool]) -> list[JsonSchema]:
    """The tool list in ``api``'s form (one of ``chat_tools``, ``responses_tools``, ``messages_tools``)."""
    return _TOOL_LISTS[_known_shape(api)](tools)


def tool_choice_for(api: Api, choice: str, tools: Sequence[Tool] | None = None) -> Any:
    """``choice`` ("auto", "none", "required" or a function's name) in ``api``'s form.

    With ``tools``, a function's name must be one of them.
    """
    words = _CHOICES[_known_shape(api)]
    if choice in words:
        return copy.deepcopy(words[choice])
    if not TOOL_NAME.match(choice) or (tools is not None and choice not in {t.name for t in tools}):
        offered = ", ".join(t.name for t in tools or ())
        raise InvalidParameterError(
            f"tool_choice {choice!r}: use auto, none, required or the name of an offered function"
            + (f" ({offered})" if offered else "")
        )
    return _NAMED_CHOICE[api](choice)


def _known_shape(api: str) -> str:
    if api not in _TOOL_LISTS:
        raise InvalidParameterError(f"unknown API shape {api!r}: use chat, responses or messages")
    return api


# --- what every shape's body shares: tools, extras, the conversation's calls --------------------


def _finished(body: dict[str, Any], request: Request, api: Api) -> dict[str, Any]:
    """The tools (when offered) in ``api``'s spelling, and the top-level extras that do not clash."""
    if request.tools:
        body["tools"] = tools_for(api, request.tools)
        choice = request.sampling.get("tool_choice")
        if choice is not None:  # the table gives it no wire name: each shape spells the value differently
            body["tool_choice"] = tool_choice_for(api, choice, request.tools)
    if request.structure is not None and request.structure.method == "provider":
        body.update(_STRUCTURED[api](request.structure))
    for name, value in request.extra.items():
        body.setdefault(name, value)  # extras never replace what the request itself says
    return body


def _json_schema(structure: Structure) -> dict[str, Any]:
    """OpenAI's ``json_schema`` format: strict (every field required, nothing else allowed) when the schema allows it,
    since a strict provider refuses a schema that does not."""
    return {"name": structure.name, "strict": strict_compatible(structure.schema), "schema": copy.deepcopy(dict(structure.schema))}


# How each shape asks the provider for a reply of a schema (Anthropic's Messages API has no such field: the
# client never chooses ``provider`` for it).
_STRUCTURED: dict[str, Callable[[Structure], dict[str, Any]]] = {
    "chat": lambda structure: {"response_format": {"type": "json_schema", "json_schema": _json_schema(structure)}},
    "responses": lambda structure: {"text": {"format": {"type": "json_schema", **_json_schema(structure)}}},
    "messages": lambda structure: {},
}


def strict_compatible(schema: Any) -> bool:
    """Whether OpenAI's strict mode takes ``schema``: every object lists all its properties as required and allows
    no others (the spec language always writes such schemas; a class with optional fields does not)."""
    if isinstance(schema, Mapping):
        if schema.get("type") == "object" or "properties" in schema:
            properties = schema.get("properties") or {}
            if schema.get("additionalProperties", True) is not False or set(schema.get("required", ())) != set(properties):
                return False
        return all(strict_compatible(value) for key, value in schema.items() if key not in ("enum", "const", "default", "examples"))
    if isinstance(schema, list):
        return all(strict_compatible(item) for item in schema)
    return True


@dataclass(frozen=True)
class _Call:
    """One entry of an assistant message's ``tool_calls`` (chat form), read leniently."""

    id: str
    name: str
    arguments: str


def _calls_of(message: Mapping[str, Any]) -> list[_Call]:
    calls = message.get("tool_calls")
    found: list[_Call] = []
    for call in calls if isinstance(calls, (list, tuple)) else ():
        function = _map(_map(call).get("function"))
        arguments = function.get("arguments")
        found.append(_Call(str(_map(call).get("id") or ""), str(function.get("name") or ""),
                           arguments if isinstance(arguments, str) else json.dumps(arguments or {})))
    return found


def _content_text(content: Any) -> str:
    """A tool result's content as text (the tool loop sends text; anything else is written as JSON)."""
    if isinstance(content, str):
        return content
    return "" if content is None else json.dumps(content, ensure_ascii=False, default=str)


# --- OpenAI chat completions -------------------------------------------------------------------


def chat_body(request: Request) -> dict[str, Any]:
    """The chat-completions request body: only the sampling fields that were set."""
    body = {
        "model": request.model,
        "messages": [_chat_message(m) for m in request.messages],
        "stream": True,
        # A no-op on OpenRouter (usage is always sent) but Ollama and vLLM need it.
        "stream_options": {"include_usage": True},
        **request.sampling.for_target("chat"),
    }
    return _finished(body, request, "chat")


def _chat_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """Messages are already in the chat form; only ``is_error`` (the Messages API's flag) is left out:
    chat has no such field (the error is the content) and strict servers refuse fields they do not know."""
    return {k: v for k, v in message.items() if not (k == "is_error" and message.get("role") == "tool")}


def chunk_events(chunk: Mapping[str, Any]) -> list[Event]:
    """The events of one parsed chat chunk, without its metadata (also used for llama.cpp's chunks)."""
    events: list[Event] = []
    choices = chunk.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise _wrong("choices", choices)
    for choice in choices or ():
        if choice is None:
            continue  # some servers pad with nulls; nothing is lost
        if not isinstance(choice, dict):
            raise _wrong("a choice", choice)
        events.extend(_choice_events(choice))
    if chunk.get("usage"):
        events.append(UsageReport(_chat_usage(_obj(chunk["usage"]))))
    if "error" in chunk and chunk["error"] is not None:
        events.append(_error_event(chunk["error"]))
    return events


def _choice_events(choice: Mapping[str, Any]) -> list[Event]:
    events: list[Event] = []
    delta = choice.get("delta")
    if delta is not None and not isinstance(delta, dict):
        raise _wrong("delta", delta)
    delta = delta or {}
    content = delta.get("content")
    if content is not None and not isinstance(content, str):
        raise _wrong("content", content)
    if content:
        events.append(TextDelta(content))
    events.extend(_token_logprobs(_obj(choice.get("logprobs")).get("content"), content or ""))
    calls = delta.get("tool_calls")
    for position, call in enumerate(calls if isinstance(calls, list) else ()):
        call = _obj(call)
        function = _obj(call.get("function"))
        index = _int(call.get("index"))
        # Servers that send whole calls leave out the index: a call's place in the list keeps parallel calls apart.
        # OpenAI opens a call with "arguments": "" (and some servers send "" ids later): nothing, not news.
        events.append(ToolCallDelta(position if index is None else index, _str(call.get("id")) or None,
                                    _str(function.get("name")) or None, _str(function.get("arguments")) or None))
    reason = choice.get("finish_reason")
    if reason:
        events.append(Finish(str(reason), _str(choice.get("native_finish_reason"))))
    return events


# --- token probabilities (chat and Responses) ----------------------------------------------------


def _token_logprobs(entries: Any, text: str) -> list[Event]:
    """A ``TokenLogprobs`` event for the probability entries that came with ``text``, or nothing.

    Entries are ``{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob"}, ...]}`` in
    chat's ``logprobs.content`` and in the Responses API's ``logprobs``.  Probabilities are an
    extra: an entry of the wrong shape is skipped rather than failing the reply, and the tokens are
    laid over ``text`` (``align``), so they spell it exactly; text no entry covers is an ``unknown``
    token.  With no usable entry there is no event: the accumulator marks that text as having no
    probability (``Accumulator``).
    """
    if not isinstance(entries, list):
        return []
    tokens = [token for token in map(_token, entries) if token is not None]
    return [TokenLogprobs(tuple(spelled(tokens, text)), "server")] if tokens else []


def _token(entry: Any) -> Token | None:
    entry = _obj(entry)
    logprob = _logprob(entry.get("logprob"))
    if logprob is None:
        return None
    text = _token_text(entry)
    return Token(text, logprob, _alternatives(entry.get("top_logprobs"), text))


def _token_text(entry: Mapping[str, Any]) -> str:
    """``token``, else the UTF-8 ``bytes`` some servers send beside it (OpenAI, vLLM), else nothing."""
    text = _str(entry.get("token"))
    if text is not None:
        return text
    raw = entry.get("bytes")
    if isinstance(raw, list) and all(_int(b) is not None and 0 <= b < 256 for b in raw):
        return bytes(raw).decode("utf-8", errors="replace")
    return ""


# However many alternatives a server sends, no request asks for more than top_logprobs' maximum (20): more are
# never kept (the accumulator then keeps the request's own K).  2,000 per token would otherwise cost ~1.4 KB each.
MOST_ALTERNATIVES = int(get_param("top_logprobs").maximum or 20)


def _alternatives(entries: Any, picked: str) -> tuple[Alternative, ...]:
    """The ``MOST_ALTERNATIVES`` most likely, first, one per token text, and the picked token's own after them.

    llama.cpp's server appends the chosen token when it is not among the top K, and two token ids
    can share a text; the first entry of a text is kept.  The chosen token stays, last, when it falls
    outside the kept ones: it is a real alternative with a true log probability.
    """
    seen: dict[str, float] = {}
    for entry in entries if isinstance(entries, list) else ():
        entry = _obj(entry)
        logprob = _logprob(entry.get("logprob"))
        text = _token_text(entry)
        if logprob is not None and text not in seen:
            seen[text] = logprob
    # nlargest is sorted(reverse=True)[:n], which is stable: ties keep the server's order
    top = heapq.nlargest(MOST_ALTERNATIVES, seen.items(), key=lambda item: item[1])
    if picked in seen and all(text != picked for text, _ in top):
        top.append((picked, seen[picked]))
    return tuple(Alternative(text, logprob) for text, logprob in top)


def _logprob(value: Any) -> float | None:
    """A finite log probability; a hair above 0 (rounding on the server) counts as 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # a JSON integer too large for a float
        return None
    return min(number, 0.0) if math.isfinite(number) and number <= 1e-6 else None


def _chat_usage(raw: Mapping[str, Any]) -> Usage:
    return Usage(
        prompt_tokens=_int(raw.get("prompt_tokens")),
        completion_tokens=_int(raw.get("completion_tokens")),
        total_tokens=_int(raw.get("total_tokens")),
        cost=as_cost(raw.get("cost")),
        cached_tokens=_int(_obj(raw.get("prompt_tokens_details")).get("cached_tokens")),
        reasoning_tokens=_int(_obj(raw.get("completion_tokens_details")).get("reasoning_tokens")),
    )


class ChatStreamDecoder(SSEStreamDecoder[Event]):
    """A chat-completions stream.

    Every chunk repeats the model and provider; ``ChunkMeta`` is emitted only
    when they change, which keeps the per-token path short.
    """

    recovered: tuple[ErrorEvent, ...] = ()  # an error chunk ends a chat reply: there is nothing to recover from
    read_chunk = staticmethod(chunk_events)

    def __init__(self) -> None:
        super().__init__()
        self._meta: tuple[Any, Any] | None = None

    def events(self, sse: ServerSentEvent) -> list[Event]:
        if sse.event not in ("message", "error"):
            return []  # chat chunks are unnamed; a named event is an extension we do not know
        chunk = parse_data(sse.data)
        if isinstance(chunk, list):
            return chunk
        events: list[Event] = []
        meta = (_str(chunk.get("model")), _str(chunk.get("provider")))
        if meta != self._meta and (meta[0] or meta[1]):
            self._meta = meta
            events.append(ChunkMeta(meta[0], meta[1], _str(chunk.get("id"))))
        events.extend(self.read_chunk(chunk))
        return events


# --- OpenAI Responses --------------------------------------------------------------------------


def _split_system(messages: Sequence[Mapping[str, Any]]) -> tuple[str | None, list[Mapping[str, Any]]]:
    """The system messages joined (Responses and Messages take the system prompt outside the turns), and the turns."""
    system = "\n\n".join(str(m["content"]) for m in messages if m.get("role") == "system") or None
    return system, [m for m in messages if m.get("role") != "system"]


def _plain(message: Mapping[str, Any]) -> dict[str, Any]:
    return {"role": message.get("role"), "content": message.get("content")}


def responses_body(request: Request) -> dict[str, Any]:
    """``instructions`` carries the system prompt; the table renames ``max_tokens``."""
    instructions, turns = _split_system(request.messages)
    body: dict[str, Any] = {"model": request.model, "input": [item for m in turns for item in _responses_items(m)], "stream": True}
    if instructions:
        body["instructions"] = instructions
    body.update(request.sampling.for_target("responses"))
    if request.sampling.get("top_logprobs"):
        body["include"] = ["message.output_text.logprobs"]  # Responses returns token probabilities only when asked to include them
    return _finished(body, request, "responses")


def _responses_items(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One chat message as Responses input items: calls and results are items of their own, not messages."""
    if message.get("role") == "tool":
        return [{"type": "function_call_output", "call_id": str(message.get("tool_call_id") or ""),
                 "output": _content_text(message.get("content"))}]
    calls = _calls_of(message) if message.get("role") == "assistant" else []
    if not calls:
        return [_plain(message)]
    said = [_plain(message)] if message.get("content") else []  # the text the model wrote before its calls
    return [*said, *({"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.arguments} for c in calls)]


_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


def _error_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """A Responses `error` event's error object.  The reference puts ``code`` and ``message`` at the top;
    OpenAI and OpenRouter also nest them under ``error`` (a rate limit does).  Each field is taken from the
    nested object when it has it, else from the top (the event's own ``type``, "error", is not the error's)."""
    nested = _obj(data.get("error"))
    flat = {key: value for key, value in data.items() if key not in ("type", "error")}
    return {**flat, **{key: value for key, value in nested.items() if value not in (None, "")}}


class ResponsesStreamDecoder(SSEStreamDecoder[Event]):
    """``data:`` events with a ``type``: output text deltas and function calls, then completed, incomplete or failed.

    A function call is an output item: ``response.output_item.added`` names it (its ``call_id`` is the id
    the result must echo; the item's own ``id`` is only the stream's), then ``response.function_call_arguments.delta``
    events carry its arguments, keyed by ``output_index``.  A server that sends a call only whole (in
    ``response.output_item.done`` or the completed response's ``output``) is read from there, once.

    An ``error`` event is held: the reply fails with it when the stream ends (``[DONE]`` or the last byte)
    without the response completing.  If ``response.completed`` (or ``incomplete``) follows, the reply is
    whole and the error goes to ``recovered``, which the client reports as a warning.
    """

    def __init__(self) -> None:
        super().__init__()
        self._calls: dict[int, bool] = {}  # output_index of each call seen → whether argument text arrived for it
        self._error: ErrorEvent | None = None  # an `error` event that no end of the response has followed yet
        self._ended = False  # response.completed or response.incomplete arrived
        self.recovered: list[ErrorEvent] = []

    def events(self, sse: ServerSentEvent) -> list[Event]:
        data = parse_data(sse.data)
        if isinstance(data, list):  # [DONE]: an error still waiting for the response's end is the reply's failure
            return [*self._unresolved(), *data]
        # The type is in the JSON; a server that puts it only in the SSE `event:` field is read from there.
        kind = _str(data.get("type")) or (sse.event if sse.event != "message" else "")
        return self._event(kind, data)

    def close(self) -> list[Event]:
        return [*super().close(), *self._unresolved()]

    def _unresolved(self) -> list[Event]:
        error, self._error = self._error, None
        return [error] if error is not None else []

    def _error_reported(self, error: ErrorEvent) -> list[Event]:
        """An `error` event fails the reply only when the stream ends without the response completing: OpenRouter
        sends one and then carries on (its own SDK waits for the end), so it is held until then."""
        if self._ended:
            self.recovered.append(error)
        else:
            self._error = self._error or error
        return []

    def _response_ended(self, events: list[Event]) -> list[Event]:
        self._ended = True
        if self._error is not None:
            self.recovered.append(self._error)
            self._error = None
        return events

    def _event(self, kind: str, data: Mapping[str, Any]) -> list[Event]:
        response = _obj(data.get("response"))
        if kind == "response.output_text.delta":
            delta = data.get("delta")
            if delta is not None and not isinstance(delta, str):
                raise _wrong("delta", delta)
            return [*([TextDelta(delta)] if delta else []), *_token_logprobs(data.get("logprobs"), delta or "")]
        if kind == "response.function_call_arguments.delta":
            return self._arguments(_int(data.get("output_index")) or 0, _str(data.get("delta")))
        if kind == "response.output_item.added":
            return self._call_start(_int(data.get("output_index")) or 0, _obj(data.get("item")))
        if kind == "response.output_item.done":
            return self._whole_call(_int(data.get("output_index")) or 0, _obj(data.get("item")))
        if kind == "response.created":
            return [ChunkMeta(_str(response.get("model")), _str(response.get("provider")), _str(response.get("id")))]
        if kind == "response.completed":
            return self._response_ended(self._completed(response))
        if kind == "response.incomplete":
            reason = _obj(response.get("incomplete_details")).get("reason")
            finish = Finish(_INCOMPLETE_REASONS.get(str(reason), "length"), _str(reason))
            return self._response_ended([*responses_usage(response), finish])
        if kind == "response.failed":
            held = self._unresolved()  # the failure's own error says why; else the error event before it does
            error = response.get("error")
            return [*([_error_event(error)] if error else held or [_error_event("the response failed")]), Finish("error")]
        if kind == "error":
            return self._error_reported(_error_event(_error_fields(data)))
        return []

    def _call_start(self, index: int, item: Mapping[str, Any]) -> list[Event]:
        if item.get("type") != "function_call":
            return []  # a message or reasoning item: its text comes in its own events
        arguments = _str(item.get("arguments")) or None  # "" when the arguments will stream
        self._calls[index] = self._calls.get(index, False) or arguments is not None
        return [ToolCallDelta(index, _str(item.get("call_id")), _str(item.get("name")), arguments)]

    def _arguments(self, index: int, fragment: str | None) -> list[Event]:
        if not fragment:
            return []
        self._calls[index] = True
        return [ToolCallDelta(index, None, None, fragment)]

    def _whole_call(self, index: int, item: Mapping[str, Any]) -> list[Event]:
        """A finished call item: only what did not stream (a call never announced, or arguments never streamed)."""
        if item.get("type") != "function_call" or self._calls.get(index):
            return []
        if index not in self._calls:
            return self._call_start(index, item)
        return self._arguments(index, _str(item.get("arguments")))

    def _completed(self, response: Mapping[str, Any]) -> list[Event]:
        output = response.get("output")
        calls = [e for i, item in enumerate(output if isinstance(output, list) else ()) for e in self._whole_call(i, _obj(item))]
        # Responses has no finish reason of its own: a reply that asked for calls ends like chat's "tool_calls".
        reason = "tool_calls" if self._calls else "stop"
        return [*calls, *responses_usage(response), Finish(reason, _str(response.get("status")))]


def responses_usage(response: Mapping[str, Any]) -> list[Event]:
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return []
    return [UsageReport(Usage(
        prompt_tokens=_int(usage.get("input_tokens")), completion_tokens=_int(usage.get("output_tokens")),
        total_tokens=_int(usage.get("total_tokens")), cost=as_cost(usage.get("cost")),
        cached_tokens=_int(_obj(usage.get("input_tokens_details")).get("cached_tokens")),
        reasoning_tokens=_int(_obj(usage.get("output_tokens_details")).get("reasoning_tokens")),
    ))]


# --- Anthropic Messages ------------------------------------------------------------------------


def messages_body(request: Request) -> dict[str, Any]:
    """A top-level ``system`` and a required ``max_tokens``; the table renames ``stop``."""
    system, turns = _split_system(request.messages)
    body: dict[str, Any] = {"model": request.model, "messages": _messages_turns(turns), "max_tokens": MESSAGES_DEFAULT_MAX_TOKENS,
                            "stream": True}
    if system:
        body["system"] = system
    body.update(request.sampling.for_target("messages"))
    return _finished(body, request, "messages")


def _messages_turns(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages as Messages turns: calls become ``tool_use`` blocks of the assistant's turn, and results
    ``tool_result`` blocks of the next user turn (one turn for consecutive results, as Anthropic requires)."""
    turns: list[dict[str, Any]] = []
    results: list[dict[str, Any]] | None = None  # the blocks of the user turn that consecutive results go into
    for message in messages:
        if message.get("role") == "tool":
            if results is None:
                results = []
                turns.append({"role": "user", "content": results})
            results.append(_tool_result(message))
            continue
        results = None
        calls = _calls_of(message) if message.get("role") == "assistant" else []
        turns.append({"role": "assistant", "content": _assistant_blocks(message, calls)} if calls else _plain(message))
    return turns


def _assistant_blocks(message: Mapping[str, Any], calls: Sequence[_Call]) -> list[dict[str, Any]]:
    text = message.get("content")
    said = [{"type": "text", "text": text}] if isinstance(text, str) and text else []  # Anthropic refuses empty text blocks
    return [*said, *({"type": "tool_use", "id": c.id, "name": c.name, "input": _input_object(c.arguments)} for c in calls)]


def _tool_result(message: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": str(message.get("tool_call_id") or ""),
            "content": _content_text(message.get("content")), "is_error": message.get("is_error") is True}


def _input_object(arguments: str) -> dict[str, Any]:
    """The arguments as the object Messages wants.

    Text that is not an object (a malformed call, which the tool loop has answered with an error result
    the model can read) goes as ``{}``: the request must stay valid for the model to see that error.
    """
    try:
        value = loads(arguments) if arguments.strip() else {}
        if isinstance(value, str):  # arguments encoded once more as a JSON string, as the tool loop accepts them
            value = loads(value)
    except ValueError:  # too deep too: the body must stay something a JSON encoder can write
        return {}
    return value if isinstance(value, dict) else {}


_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                 "refusal": "content_filter", "pause_turn": "stop", "model_context_window_exceeded": "length"}


class MessagesStreamDecoder(SSEStreamDecoder[Event]):
    """Named events: message_start, content_block_delta, message_delta (usage, stop reason), message_stop."""

    recovered: tuple[ErrorEvent, ...] = ()  # Anthropic's `error` event ends the stream

    def __init__(self) -> None:
        super().__init__()
        self._usage: dict[str, int] = {}
        self._cost: float | None = None

    def events(self, sse: ServerSentEvent) -> list[Event]:
        data = parse_data(sse.data)
        return data if isinstance(data, list) else self._event(str(data.get("type") or sse.event), data)

    def _event(self, kind: str, data: Mapping[str, Any]) -> list[Event]:
        if kind == "content_block_delta":
            return self._delta(_int(data.get("index")) or 0, _obj(data.get("delta")))
        if kind == "content_block_start":
            block = _obj(data.get("content_block"))
            if block.get("type") == "tool_use":
                return [ToolCallDelta(_int(data.get("index")) or 0, _str(block.get("id")), _str(block.get("name")), None)]
            return []
        if kind == "message_start":
            message = _obj(data.get("message"))
            meta = ChunkMeta(_str(message.get("model")), _str(message.get("provider")), _str(message.get("id")))
            return [meta, *self._merge_usage(message.get("usage"))]
        if kind == "message_delta":
            reason = _obj(data.get("delta")).get("stop_reason")
            finish = [Finish(_STOP_REASONS.get(str(reason), "stop"), str(reason))] if reason else []
            return [*self._merge_usage(data.get("usage")), *finish]
        if kind == "message_stop":
            return [Done()]
        if kind == "error":
            return [_error_event(data.get("error") if isinstance(data.get("error"), dict) else data)]
        return []  # ping, content_block_stop

    @staticmethod
    def _delta(index: int, delta: Mapping[str, Any]) -> list[Event]:
        if delta.get("type") == "input_json_delta":
            return [ToolCallDelta(index, None, None, _str(delta.get("partial_json")))]
        text = delta.get("text")
        if text is not None and not isinstance(text, str):
            raise _wrong("text", text)
        return [TextDelta(text)] if text else []

    def _merge_usage(self, raw: Any) -> list[Event]:
        """Input counts arrive with message_start, the (cumulative) output count with message_delta.

        With prompt caching, ``input_tokens`` counts only the uncached part: the prompt
        is the sum of it, the tokens written to the cache and those read from it.
        """
        if not isinstance(raw, dict):
            return []
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens"):
            if _int(raw.get(name)) is not None:
                self._usage[name] = raw[name]
        if "cost" in raw:
            self._cost = as_cost(raw.get("cost"))
        return [UsageReport(self._current_usage())]

    def _current_usage(self) -> Usage:
        counts = self._usage
        inputs = [counts[n] for n in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens") if n in counts]
        prompt = sum(inputs) if inputs else None
        completion = counts.get("output_tokens")
        total = prompt + completion if prompt is not None and completion is not None else None
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total, cost=self._cost,
                     cached_tokens=counts.get("cache_read_input_tokens"))


# --- raw completions (--raw) --------------------------------------------------------------------


def completions_body(request: Request) -> dict[str, Any]:
    """The completions request body: the prompt as written, and only the sampling fields that were set.

    The completions API spells token probabilities as one number (``logprobs: K``, the alternatives per token):
    the table sends ``top_logprobs`` under that name, and ``logprobs`` alone asks for the chosen tokens only (0).
    """
    body: dict[str, Any] = {
        "model": request.model,
        "prompt": request.prompt or "",
        "stream": True,
        "stream_options": {"include_usage": True},
        **request.sampling.for_target("completions"),
    }
    if request.sampling.get("logprobs") is True:
        body.setdefault("logprobs", 0)
    for name, value in request.extra.items():
        body.setdefault(name, value)
    return body


def completion_chunk_events(chunk: Mapping[str, Any]) -> list[Event]:
    """The events of one completions chunk: a choice's ``text`` (chat says ``delta.content``) and its token
    probabilities, usage and errors as in chat."""
    choices = chunk.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise _wrong("choices", choices)
    events: list[Event] = []
    for choice in choices or ():
        if choice is None:
            continue
        if not isinstance(choice, dict):
            raise _wrong("a choice", choice)
        text = choice.get("text")
        if text is not None and not isinstance(text, str):
            raise _wrong("text", text)
        if text:
            events.append(TextDelta(text))
        events.extend(_token_logprobs(_completion_logprobs(choice.get("logprobs")), text or ""))
        if reason := choice.get("finish_reason"):
            events.append(Finish(str(reason), _str(choice.get("native_finish_reason"))))
    if chunk.get("usage"):
        events.append(UsageReport(_chat_usage(_obj(chunk["usage"]))))
    if "error" in chunk and chunk["error"] is not None:
        events.append(_error_event(chunk["error"]))
    return events


def _completion_logprobs(logprobs: Any) -> Any:
    """A completions choice's ``logprobs`` as chat's entries: the classic parallel lists (``tokens``,
    ``token_logprobs``, ``top_logprobs`` as ``{token: logprob}``, as OpenAI, vLLM and llama-cpp-python send them), or
    chat's own ``content`` list (llama.cpp's C++ server).  Whatever does not fit is left out."""
    logprobs = _obj(logprobs)
    if isinstance(logprobs.get("content"), list):
        return logprobs["content"]
    tokens, chosen, tops = (logprobs.get(name) for name in ("tokens", "token_logprobs", "top_logprobs"))
    if not isinstance(tokens, list) or not isinstance(chosen, list):
        return None
    tops = tops if isinstance(tops, list) else []
    return [{"token": token, "logprob": logprob,
             "top_logprobs": [{"token": text, "logprob": value} for text, value in _obj(top).items()]}
            for token, logprob, top in zip(tokens, chosen, [*tops, *[None] * (len(tokens) - len(tops))], strict=False)]


class CompletionsStreamDecoder(ChatStreamDecoder):
    """A completions stream: chat's framing, model and provider, with ``text`` choices."""

    read_chunk = staticmethod(completion_chunk_events)


# Not an ``api=`` choice: the shape of every request that carries a prompt to continue (``shape_for``).
COMPLETIONS = Shape("completions", "/completions", completions_body, CompletionsStreamDecoder)

API_SHAPES: dict[str, Shape] = {
    "chat": Shape("chat", "/chat/completions", chat_body, ChatStreamDecoder),
    "responses": Shape("responses", "/responses", responses_body, ResponsesStreamDecoder),
    "messages": Shape("messages", "/messages", messages_body, MessagesStreamDecoder),
}
