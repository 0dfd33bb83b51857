"""Typed stream events, and the ``Accumulator`` that folds them into a ``Result``.

Every API shape (``_shapes``) and the local backend decode into these events, so
everything above them is blind to where a reply came from.  No I/O here: the
clock is injected, so accumulation can be fed arbitrary events in tests.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._result import Ended, Result, ToolCall, Usage
from ._tokens import ProbsKind, Token, at_most, spelled, unknown
from ._values import loads

__all__ = [
    "Accumulator",
    "ChunkMeta",
    "Done",
    "ErrorEvent",
    "Event",
    "Finish",
    "ParsedCall",
    "Progress",
    "TextDelta",
    "TokenLogprobs",
    "ToolCallAssembler",
    "ToolCallDelta",
    "UsageReport",
]


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
    transient: bool = False  # the same failure over HTTP would be retried (overloaded, rate limited, 5xx)


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """Probabilities of generated tokens (with their alternatives), in order; they accompany the text deltas."""

    tokens: tuple[Token, ...]
    kind: ProbsKind = "server"


@dataclass(frozen=True, slots=True)
class ChunkMeta:
    model: str | None = None
    provider: str | None = None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """The end of the stream (``[DONE]``, ``message_stop``)."""


Event = TextDelta | TokenLogprobs | ToolCallDelta | UsageReport | Finish | ErrorEvent | ChunkMeta | Done


# --- calls as they come from a stream ----------------------------------------------------------------


@dataclass(frozen=True)
class ParsedCall:
    """A call the model asked for, not yet run: from native deltas (``ToolCallAssembler``) or prompted text."""

    index: int  # the position in the reply (native: the stream's own index)
    name: str
    arguments: str  # raw JSON text of the arguments object
    id: str | None = None  # the provider's call id; prompted calls have none
    problem: str | None = None  # a malformed <tool_call> block: why it could not be read (arguments hold its text)


@dataclass
class _Parts:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ToolCallAssembler:
    """Folds streamed tool-call deltas ``(index, id, name, arguments fragment)`` into whole calls.

    The argument fragments are joined in arrival order whatever the split; the id and the name are taken
    from the first delta that has them, since all three shapes send them whole (and some providers repeat
    them on every chunk, which concatenating would double).
    """

    def __init__(self) -> None:
        self._calls: dict[int, _Parts] = {}

    def add(self, index: int, call_id: str | None = None, name: str | None = None, arguments: str | None = None) -> None:
        parts = self._calls.setdefault(index, _Parts())
        parts.id = parts.id or call_id or None
        parts.name = parts.name or name or ""
        if arguments:
            parts.arguments.append(arguments)

    def calls(self) -> list[ParsedCall]:
        """The calls so far, in index order."""
        return [ParsedCall(index, p.name, "".join(p.arguments), p.id) for index, p in sorted(self._calls.items())]

    def __len__(self) -> int:
        return len(self._calls)


class Progress(Protocol):
    """What an ``on_update`` callback sees while a reply streams (read it, do not keep it)."""

    @property
    def text(self) -> str: ...
    @property
    def chunks(self) -> int: ...
    @property
    def elapsed_s(self) -> float: ...
    @property
    def has_output(self) -> bool: ...
    @property
    def usage(self) -> Usage: ...
    @property
    def ttft_s(self) -> float | None: ...
    @property
    def note(self) -> str | None: ...


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
        self.note: str | None = None  # what the client is doing while no text arrives ("rate limited, retrying in 4 s")
        self.sent = False  # the request left (or the local model began on it): a run, not one that never started
        # Told when the server rate-limits this request (429, or 503 with Retry-After) and the client waits ``delay``
        # seconds before trying again: a batch's gate lowers how many run at once (``AdaptiveGate``).
        self.on_throttled: Callable[[float], None] | None = None
        self._parts: list[str] = []
        self._joined = ""
        self._joined_parts = 0
        self._tool_calls = ToolCallAssembler()
        self.tokens: list[Token] = []
        self.probs_kind: ProbsKind | None = None
        self._length = 0  # characters of text
        self._covered = 0  # characters of text the tokens cover
        self._unspelled = (0, 0)  # where the text no token covers yet starts: (part, character in it)
        self._known = 0  # tokens with a probability
        top = self.params.get("top_logprobs")
        # the request's K bounds the alternatives kept, whatever the server sends (the pick's own is kept as well)
        self._k = top if isinstance(top, int) and not isinstance(top, bool) and top >= 0 else None

    def restart_clock(self) -> None:
        """Start timing now: a queued comparison column starts when it may send, not when it was planned."""
        self.started = self._clock()

    def start_over(self, note: str) -> None:
        """Forget what arrived: the request is sent again from the beginning (``note`` says why, in the live view).
        The clock keeps running, so the reply's time includes the attempt that was cut."""
        self.first_token_at = None
        self.chunks = 0
        self.model = self.provider = self.generation_id = None
        self.finish = None
        self.usage = Usage()
        self.error = None
        self.done = False
        self.note = note
        self._parts, self._joined, self._joined_parts = [], "", 0
        self._tool_calls = ToolCallAssembler()
        self.tokens = []
        self.probs_kind = None
        self._length = self._covered = 0
        self._unspelled = (0, 0)
        self._known = 0

    @property
    def text(self) -> str:
        if self._joined_parts != len(self._parts):
            self._joined = "".join(self._parts)
            self._joined_parts = len(self._parts)
        return self._joined

    @property
    def parts(self) -> list[str]:
        """The text deltas as they arrived (one per token, for most servers)."""
        return list(self._parts)

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self.started

    @property
    def has_output(self) -> bool:
        return self.first_token_at is not None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def ended(self) -> bool:
        """A finish reason or the end-of-stream marker arrived."""
        return self.finish is not None or self.done

    def feed(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self._text(event.text)
        elif isinstance(event, TokenLogprobs):
            self._probabilities(event)
        elif isinstance(event, ChunkMeta):  # interned: a map's rows share a few names instead of a copy each
            self.model = _interned(event.model) or self.model
            self.provider = _interned(event.provider) or self.provider
            self.generation_id = self.generation_id or event.id
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
            self.note = None
        self._parts.append(text)
        self._length += len(text)
        self.chunks += 1

    def _probabilities(self, event: TokenLogprobs) -> None:
        """Lay the tokens over the text no token covers yet.

        The chat and Responses decoders send a chunk's tokens right after its text, laid over it; the local
        backend sends tokens once the stream has shown their text, so they may lag it.  Either way tokens
        come in the order of the text, and so they cover the start of what is not yet covered; but text that
        came with no usable probabilities (a chunk without ``logprobs``, or with nothing valid in them) gets
        no tokens, and then the tokens cover the end of it, and what is before them has no probability.
        Anything else (a recording that does not fit its text) is laid over all of it with ``spelled``.
        Each case reads only the tokens' length of text, or consumes what it reads: linear in the reply.
        """
        self.probs_kind = event.kind
        tokens = event.tokens if self._k is None else [at_most(token, self._k) for token in event.tokens]
        own = "".join(token.text for token in tokens)
        waiting = self._length - self._covered
        if len(own) <= waiting and self._waiting_head(len(own)) == own:
            laid = [t for t in tokens if t.text or t.known]
            self._cover(len(own))
        elif len(own) <= waiting and self._waiting_tail(len(own)) == own:
            gap = self._waiting_text()[: waiting - len(own)]
            laid = [unknown(gap), *(t for t in tokens if t.text or t.known)]
            self._cover(waiting)
        else:
            laid = spelled(tokens, self._waiting_text())
            self._cover(waiting)
        self.tokens.extend(laid)
        self._known += sum(token.known for token in laid)

    def _waiting_head(self, n: int) -> str:
        part, start = self._unspelled
        head: list[str] = []
        have = -start
        while have < n and part < len(self._parts):
            head.append(self._parts[part])
            have += len(self._parts[part])
            part += 1
        return "".join(head)[start : start + n]

    def _waiting_tail(self, n: int) -> str:
        tail: list[str] = []
        have, part = 0, len(self._parts)
        while have < n and part > 0:
            part -= 1
            tail.append(self._parts[part])
            have += len(self._parts[part])
        return "".join(reversed(tail))[have - n :]

    def _waiting_text(self) -> str:
        part, start = self._unspelled
        return "".join(self._parts[part:])[start:]

    def _cover(self, n: int) -> None:
        part, start = self._unspelled
        self._covered += n
        start += n
        while part < len(self._parts) - 1 and start >= len(self._parts[part]):
            start -= len(self._parts[part])
            part += 1
        self._unspelled = (part, start)

    def _tokens(self) -> list[Token]:
        """The tokens, spelling the text exactly (the end no token covered has no probability); none when not one
        token came with a probability (a provider that ignores the request)."""
        if not self._known:
            return []
        rest = self._waiting_text() if self._covered < self._length else ""
        return [*self.tokens, unknown(rest)] if rest else list(self.tokens)

    def _tool_call(self, delta: ToolCallDelta) -> None:
        if self.first_token_at is None:
            self.first_token_at = self._clock()
        self._tool_calls.add(delta.index, delta.id, delta.name, delta.arguments)

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The calls the model asked for so far, in order (not run: the tool loop runs them)."""
        return [ToolCall(c.name, _arguments(c.arguments), c.id, c.arguments) for c in self._tool_calls.calls()]

    def result(self, *, error: str | None = None, ended: Ended | None = None) -> Result:
        finish = self.finish
        if ended is None:
            ended = "failed" if error is not None or finish is None or finish.reason == "error" else "complete"
        return Result(
            text=self.text,
            finish_reason=_interned(finish.reason) if finish else None,
            native_finish_reason=_interned(finish.native_reason) if finish else None,
            usage=self.usage,
            model=self.model,
            provider=self.provider,
            generation_id=self.generation_id,
            ttft_s=self.ttft_s,
            duration_s=self._clock() - self.started,
            params=dict(self.params),
            error=error,
            ended=ended,
            tool_calls=self.tool_calls,
            chunks=self.chunks,
            tokens=self._tokens(),
            probs_kind=self.probs_kind,
        )


def _interned(name: str | None) -> str | None:
    """One copy of a short name every reply repeats (a model, a provider, a finish reason), not one per reply."""
    return sys.intern(name) if name is not None and len(name) <= 200 else name


def _arguments(raw: str) -> dict[str, Any] | None:
    try:
        value = loads(raw) if raw.strip() else {}
    except ValueError:  # not JSON, or nested too deep to read: the tool loop reports it as a malformed call
        return None
    return value if isinstance(value, dict) else None
