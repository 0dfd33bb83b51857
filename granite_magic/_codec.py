"""A run's events as compact JSON data: the body of a recording file (``_cache`` adds the key and the file).

``encode_events`` turns timed events into ``{"events": [[dt, EVENT], ...], "tokens": COLUMNS}`` and
``decode_events`` gives them back.  ``dt`` is the time since the previous event in ticks of 0.1 ms (whole
ticks, so no rounding error piles up).  ``EVENT`` is a string for a text delta, a count ``n`` for a token
probabilities event (the next ``n`` tokens of ``COLUMNS``, of the columns' ``kind``), and an object with a
``type`` for anything else.

Token probabilities are nearly all of a file's bytes with ``--probs``, so they are stored as columns over
the whole run rather than per token, which lets gzip see like beside like:

* ``texts``: every text that occurs, most frequent first; the other columns point into it;
* ``top``: how many alternatives each token has; ``alt``: their texts, all tokens after another;
* ``pick``: the chosen token, as the index of its own alternative (the usual case: servers repeat the
  pick among the alternatives), else ``[text, LOGPROB]``;
* ``logprob``: each token's alternatives as a chain: the first log probability in ticks of 1e-4 nats,
  then how far each next one lies below the one before.  A step below an alternative of more than 10 %
  counts 1 tick, below one of 1-10 % 10 ticks, below one under 1 % 100 ticks; a negative step (a server
  that does not sort) always counts 1 tick.  A value that is not a real log probability (``-inf``, ``nan``,
  beyond 1e9) is its float spelling as a string, and the chain starts again after it.

So every log probability comes back within 0.00005 nats of the original where the alternative before it
is above 10 %, 0.0005 nats where it is 1-10 % and 0.005 nats below: a probability is kept to 0.005 %,
0.05 % or 0.5 % of itself, and never more than 0.00502 percentage points off (the lens shows 0.1).  A pick
is its alternative's value when that is the very number the server sent, else its own to 0.00005 nats.
Texts, tool calls, usage, finish reasons and errors are exact; times are kept to 0.1 ms.  That keeps an
8-seed x 500-token sweep with 20 alternatives per token under 300 KB (``benchmarks/bench_cache.py``).

Format 1 files (tokens written inside their events, every log probability to 1e-4) are still read.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from dataclasses import fields as dataclass_fields
from itertools import pairwise
from typing import Any

from ._events import ChunkMeta, Done, ErrorEvent, Event, Finish, TextDelta, TokenLogprobs, ToolCallDelta, UsageReport
from ._result import Usage
from ._tokens import Alternative, ProbsKind, Token

__all__ = ["decode_events", "encode_events"]

_TICKS = 10_000  # per nat (log probabilities) and per second (times)
# Steps below an alternative at or under these log probabilities (in ticks) count 10 and 100 ticks.
_TEN_PERCENT = math.log(0.1) * _TICKS
_ONE_PERCENT = math.log(0.01) * _TICKS
_LARGEST_TICKS = 10**13  # 1e9 nats: beyond any real log probability

TimedEvents = Sequence[tuple[float, Event]]


def encode_events(events: TimedEvents) -> dict[str, Any]:
    """``events`` (seconds from the run's start, event) as JSON data; ``decode_events`` reads it back."""
    ticks = [round(at * _TICKS) for at, _ in events]
    steps = [now - before for before, now in pairwise([0, *ticks])]
    columns = _TokenColumns()
    document: dict[str, Any] = {"events": [[step, _encode_event(event, columns)]
                                           for step, (_, event) in zip(steps, events, strict=True)]}
    if columns.kind is not None:  # a probabilities event, even one of no tokens
        document["tokens"] = columns.encode()
    return document


def decode_events(document: Mapping[str, Any], *, format: int = 2) -> tuple[tuple[float, Event], ...]:
    """The timed events ``encode_events`` made ``document`` from (or format 1's); ``ValueError`` for anything else."""
    try:
        tokens = _TokenReader(document["tokens"]) if "tokens" in document else _TokenReader.empty()
        events = tuple(_decode_timed(_list(document["events"]), tokens, format))
        if not tokens.finished:
            raise ValueError(f"{tokens.left} token probabilities that no event uses")
        return events
    except (KeyError, TypeError, IndexError, AttributeError, OverflowError) as exc:  # OverflowError: a 400-digit number
        raise ValueError(f"unexpected content ({type(exc).__name__}: {exc})") from None


def _decode_timed(items: list[Any], tokens: _TokenReader, format: int) -> Iterator[tuple[float, Event]]:
    tick = 0
    for item in items:
        step, data = _list(item)
        tick += _int(step)
        yield tick / _TICKS, _decode_event(data, tokens, format)


# --- one event -----------------------------------------------------------------------------------


def _encode_event(event: Event, columns: _TokenColumns) -> Any:
    if isinstance(event, TextDelta):
        return event.text
    if isinstance(event, TokenLogprobs):
        count = columns.add(event.tokens, event.kind)
        return count if event.kind == columns.kind else {"type": "logprobs", "kind": event.kind, "n": count}
    if isinstance(event, ToolCallDelta):
        return _present(type="tool", index=event.index, id=event.id, name=event.name, arguments=event.arguments)
    if isinstance(event, UsageReport):
        return {"type": "usage", "usage": _present(**asdict(event.usage))}
    if isinstance(event, Finish):
        return _present(type="finish", reason=event.reason, native_reason=event.native_reason)
    if isinstance(event, ErrorEvent):
        return {"type": "error", "message": event.message, "code": event.code, "metadata": event.metadata,
                "transient": event.transient}
    if isinstance(event, ChunkMeta):
        return _present(type="meta", model=event.model, provider=event.provider, id=event.id)
    return {"type": "done"}


def _decode_event(data: Any, tokens: _TokenReader, format: int) -> Event:
    if format >= 2 and isinstance(data, str):
        return TextDelta(data)
    if format >= 2 and type(data) is int:
        return TokenLogprobs(tokens.take(data), tokens.kind)
    try:
        values = _dict(data)
        if values["type"] == "logprobs":
            if format == 1:
                return TokenLogprobs(tuple(_decode_v1_token(t) for t in _list(values["tokens"])), _kind(values["kind"]))
            return TokenLogprobs(tokens.take(_int(values["n"])), _kind(values["kind"]))
        return _DECODERS[values["type"]](values)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ValueError(f"not a recorded event ({type(exc).__name__}: {exc}): {str(data)[:100]}") from None


def _present(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


_DECODERS: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    "text": lambda d: TextDelta(_str(d["text"])),  # format 1
    "tool": lambda d: ToolCallDelta(_int(d["index"]), _opt_str(d.get("id")), _opt_str(d.get("name")),
                                    _opt_str(d.get("arguments"))),
    "usage": lambda d: UsageReport(_usage(d["usage"])),
    "finish": lambda d: Finish(_str(d["reason"]), _opt_str(d.get("native_reason"))),
    "error": lambda d: ErrorEvent(_str(d["message"]), d["code"], _dict(d["metadata"]), _bool(d["transient"])),
    "meta": lambda d: ChunkMeta(_opt_str(d.get("model")), _opt_str(d.get("provider")), _opt_str(d.get("id"))),
    "done": lambda d: Done(),
}


# --- token probabilities, in columns ---------------------------------------------------------------


class _TokenColumns:
    """Collects a run's tokens while its events are encoded; ``encode`` writes them as columns."""

    def __init__(self) -> None:
        self.tokens: list[Token] = []
        self.kind: ProbsKind | None = None  # the first event's: the short form's

    def add(self, tokens: Sequence[Token], kind: ProbsKind) -> int:
        self.kind = self.kind or kind
        self.tokens.extend(tokens)
        return len(tokens)

    def encode(self) -> dict[str, Any]:
        frequency = Counter(alt.text for token in self.tokens for alt in token.top)
        frequency.update(token.text for token in self.tokens)
        texts = [text for text, _ in frequency.most_common()]  # small indices for the common texts
        index = {text: i for i, text in enumerate(texts)}
        top: list[int] = []
        alt: list[int] = []
        pick: list[int | list[Any]] = []
        logprob: list[int | str] = []
        for token in self.tokens:
            top.append(len(token.top))
            alt.extend(index[a.text] for a in token.top)
            chain = _chain(a.logprob for a in token.top)
            pick.append(_pick(token, chain, index))
            logprob.extend(chain)
        return {"kind": self.kind, "texts": texts, "top": top, "alt": alt, "pick": pick, "logprob": logprob}


def _pick(token: Token, chain: list[int | str], index: Mapping[str, int]) -> int | list[Any]:
    """The pick as its alternative's index when the reader gets the same value either way: it is that very
    number, or its own value to 1e-4 equals what the reader gives the alternative.  Else ``[text, LOGPROB]``."""
    own = _quantise(token.logprob)
    read: list[float] | None = None
    for i, alt in enumerate(token.top):
        if alt.text != token.text:
            continue
        if alt.logprob == token.logprob:
            return i
        read = _unchain(chain) if read is None else read  # only for a pick reported apart from its alternative
        if read[i] == _unquantise(own):
            return i
    return [index[token.text], own]


class _TokenReader:
    """A file's token columns, handed out in order to the events that hold them."""

    def __init__(self, columns: Any) -> None:
        values = _dict(columns)
        self.kind = _kind(values["kind"])
        self._tokens = _read_columns(values)
        self._next = 0

    @classmethod
    def empty(cls) -> _TokenReader:
        return cls({"kind": "raw", "texts": [], "top": [], "alt": [], "pick": [], "logprob": []})

    @property
    def left(self) -> int:
        return len(self._tokens) - self._next

    @property
    def finished(self) -> bool:
        return self.left == 0

    def take(self, count: int) -> tuple[Token, ...]:
        if not 0 <= count <= self.left:
            raise IndexError(f"an event holds {count} tokens and {self.left} are left")
        self._next += count
        return tuple(self._tokens[self._next - count: self._next])


def _read_columns(values: Mapping[str, Any]) -> list[Token]:
    texts, top, alt, pick, chains = (_list(values[name]) for name in ("texts", "top", "alt", "pick", "logprob"))
    # Checked as whole lists: a sweep with --probs holds 10,000 alternatives per file.
    if not all(type(text) is str for text in texts):
        raise TypeError("token texts that are not strings")
    if not all(type(n) is int and n >= 0 for n in top) or len(pick) != len(top):
        raise TypeError(f"{len(pick)} picks for {len(top)} tokens, or alternatives that are not counts")
    if len(alt) != sum(top) or len(chains) != len(alt):
        raise TypeError(f"{sum(top)} alternatives, {len(alt)} texts and {len(chains)} log probabilities")
    if alt and not (all(type(i) is int for i in alt) and min(alt) >= 0 and max(alt) < len(texts)):
        raise IndexError(f"alternatives' texts outside the {len(texts)} texts")
    _check_steps(chains)
    tokens, start = [], 0
    for count, chosen in zip(top, pick, strict=True):
        end = start + count
        alternatives = tuple(map(Alternative, [texts[i] for i in alt[start:end]], _unchain(chains[start:end])))
        tokens.append(_token(chosen, alternatives, texts))
        start = end
    return tokens


def _token(chosen: Any, top: tuple[Alternative, ...], texts: list[str]) -> Token:
    if isinstance(chosen, list):
        text, logprob = chosen
        return Token(texts[_index(text, len(texts))], _unquantise(logprob), top)
    alt = top[_index(chosen, len(top))]
    return Token(alt.text, alt.logprob, top)


def _quantise(value: float) -> int | str:
    """``value`` in ticks; inf, nan and values beyond any real log probability (a masked token's -3.4e38) as
    their float spelling, exactly: float rounding there is coarser than a tick."""
    exact = value * _TICKS
    return round(exact) if math.isfinite(exact) and abs(round(exact)) <= _LARGEST_TICKS else repr(value)


def _unquantise(value: Any) -> float:
    return float(_str(value)) if isinstance(value, str) else _int(value) / _TICKS


def _chain(values: Iterable[float]) -> list[int | str]:
    """Log probabilities (most likely first) as the first one in ticks and the steps down to each next one."""
    steps: list[int | str] = []
    previous: int | None = None
    for value in values:
        exact = value * _TICKS
        if not math.isfinite(exact):
            steps.append(repr(value))
            previous = None
            continue
        if previous is None:
            step = now = round(exact)
        elif exact > previous or _unit(previous) == 1:
            step = previous - round(exact)  # whole ticks in integers: exact at any magnitude
            now = previous - step
        else:
            unit = _unit(previous)
            step = round((previous - exact) / unit)
            now = previous - step * unit  # from the value the reader will have: errors do not pile up
        if abs(now) > _LARGEST_TICKS:  # decided on what the reader gets, so that writing it again changes nothing
            steps.append(repr(value))
            previous = None
            continue
        steps.append(step)
        previous = now
    return steps


def _unchain(steps: list[Any], *, tiered: bool = True) -> list[float]:
    """The values ``_chain`` made ``steps`` from (format 1: ``tiered=False``, every step one tick); the steps
    are ints and strings (``_check_steps``)."""
    values: list[float] = []
    previous: int | None = None
    for step in steps:
        if step.__class__ is str:
            values.append(float(step))
            previous = None
            continue
        # _unit(previous), inline: this loop runs for every alternative of every token of a replay.
        if previous is None:
            previous = step
        elif step < 0 or previous > _TEN_PERCENT or not tiered:
            previous -= step
        else:
            previous -= step * (10 if previous > _ONE_PERCENT else 100)
        values.append(previous / _TICKS)
    return values


def _unit(previous: int) -> int:
    """Ticks per step below an alternative at ``previous`` ticks: coarser where a probability is small."""
    return 1 if previous > _TEN_PERCENT else 10 if previous > _ONE_PERCENT else 100


# --- format 1 (read only) --------------------------------------------------------------------------


def _decode_v1_token(data: Any) -> Token:
    """``[i, TEXTS, STEPS]`` (the token is ``top[i]``) or ``[text, LOGPROB, TEXTS, STEPS]``, every step 1 tick."""
    *chosen, texts, steps = _list(data)
    texts, logprobs = _list(texts), _unchain(_check_steps(_list(steps)), tiered=False)
    if len(texts) != len(logprobs) or not all(type(text) is str for text in texts):
        raise TypeError(f"{len(texts)} alternatives' texts for {len(logprobs)} log probabilities, or not strings")
    return _token_v1(chosen, tuple(map(Alternative, texts, logprobs)))


def _token_v1(chosen: list[Any], top: tuple[Alternative, ...]) -> Token:
    if len(chosen) == 1:
        alt = top[_index(chosen[0], len(top))]
        return Token(alt.text, alt.logprob, top)
    text, logprob = chosen
    return Token(_str(text), _unquantise(logprob), top)


# --- checked reading -----------------------------------------------------------------------------


def _check_steps(steps: list[Any]) -> list[Any]:
    if not all(type(step) is int or type(step) is str for step in steps):
        raise TypeError("log probabilities that are neither whole numbers nor float spellings")
    return steps


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _index(value: Any, length: int) -> int:
    if not 0 <= _int(value) < length:
        raise IndexError(f"alternative {value} of {length}")
    return _int(value)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def _usage(data: Any) -> Usage:
    values = _dict(data)
    known = {f.name for f in dataclass_fields(Usage)}
    if not set(values) <= known or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                       for v in values.values()):
        raise TypeError(f"not usage: {values!r}")
    return Usage(**values)


def _kind(value: Any) -> ProbsKind:
    if value == "raw":
        return "raw"
    if value == "server":
        return "server"
    raise TypeError(f"unknown probabilities kind {value!r}")


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value
