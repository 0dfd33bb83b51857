"""Any Python value as bounded text, and JSON read with a bound on its nesting: what tools hand back and send.

Pure and total (no I/O, no package imports; nothing here raises for a strange value):

* ``loads`` / ``raw_decode``: ``json`` with nesting bounded by ``MAX_JSON_DEPTH``; deeper is a ``ValueError``
  like any other malformed JSON, never a ``RecursionError`` (a model's tool-call arguments are read here);
* ``to_json``: a value as JSON values (dataclass → object, Enum → its value, Path → text, date → ISO text,
  set → sorted list); a ``TypeError`` for what has no JSON form, contains itself or nests too deep;
* ``value_text``: a value as at most ``limit`` characters of text (JSON where it has a JSON form, else a
  ``safe_repr``), saying how much was cut;
* ``safe_repr``: a repr that never raises (a failing ``__repr__`` is described), with cycles cut, containers
  and long reprs shortened, and generators left unconsumed;
* ``saved``: what a notebook keeps of a value: the JSON value when it is short, else ``value_text``.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
import enum
import json
import re
import reprlib
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "PREVIEW_CHARS", "clip", "loads", "raw_decode", "safe_repr", "saved", "to_json", "value_text"]

# Tool-call arguments and results nest a few levels; 100 is far beyond any real one and far below Python's stack.
MAX_JSON_DEPTH = 100
# What a notebook shows and keeps of one tool result (the model gets more: _tools.MAX_RESULT_CHARS).
PREVIEW_CHARS = 2_000

_TOO_DEEP = f"nested deeper than {MAX_JSON_DEPTH} levels"


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how many were cut."""
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit} more characters cut]"


# --- reading JSON --------------------------------------------------------------------------------------

_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _too_deep(text: str) -> bool:
    """Whether ``text`` opens more than ``MAX_JSON_DEPTH`` brackets at once (strings skipped); linear."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False  # the usual case, at C speed
    depth = 0
    for found in _STRING_OR_BRACKET.finditer(text):
        mark = found.group()
        if mark in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif mark in "]}":
            depth -= 1
    return False


def loads(text: str) -> Any:
    """``json.loads``, with JSON nested deeper than ``MAX_JSON_DEPTH`` a ``ValueError``."""
    if _too_deep(text):
        raise ValueError(_TOO_DEEP)
    try:
        return json.loads(text)
    except RecursionError:  # a stack already deep when this was called
        raise ValueError(_TOO_DEEP) from None


def raw_decode(text: str, *, strict: bool = True) -> tuple[Any, int]:
    """``json.JSONDecoder().raw_decode``: the first JSON value in ``text`` and where it ends, nesting bounded;
    ``strict=False`` takes control characters (a raw newline) inside strings."""
    if _too_deep(text):
        raise ValueError(_TOO_DEEP)
    try:
        return json.JSONDecoder(strict=strict).raw_decode(text)
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None


# --- values as JSON ------------------------------------------------------------------------------------


def _dataclass_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _ordered(values: Any) -> list[Any]:
    try:  # a set's order changes between runs: sort it so the model (and a replay) sees the same text
        return sorted(values)
    except TypeError:
        return sorted(values, key=safe_repr)


Inner = Callable[[Any], Any]

# A value's kind → its JSON form, given how to convert what it holds (the first row that matches wins; Enum
# before str for str-mixin enums).
_FORMS: tuple[tuple[Callable[[Any], bool], Callable[[Any, Inner], Any]], ...] = (
    (lambda v: isinstance(v, enum.Enum), lambda v, inner: inner(v.value)),
    (lambda v: isinstance(v, (str, int, float, bool, type(None))), lambda v, inner: v),
    (_dataclass_instance, lambda v, inner: {f.name: inner(getattr(v, f.name)) for f in dataclasses.fields(v)}),
    (lambda v: isinstance(v, PurePath), lambda v, inner: str(v)),
    (lambda v: isinstance(v, (dt.datetime, dt.date, dt.time)), lambda v, inner: v.isoformat()),
    (lambda v: isinstance(v, dt.timedelta), lambda v, inner: v.total_seconds()),
    (lambda v: isinstance(v, Mapping), lambda v, inner: {_key(k, inner): inner(x) for k, x in v.items()}),
    (lambda v: isinstance(v, (list, tuple)), lambda v, inner: [inner(x) for x in v]),
    (lambda v: isinstance(v, (set, frozenset)), lambda v, inner: [inner(x) for x in _ordered(v)]),
    (lambda v: callable(getattr(v, "tolist", None)), lambda v, inner: inner(v.tolist())),  # NumPy scalars and arrays, pandas Series
)


def _key(key: Any, inner: Inner) -> str:
    return key if isinstance(key, str) else str(inner(key))


def to_json(value: Any) -> Any:
    """``value`` as JSON values (dataclass → object, Enum → its value, Path → text, date → ISO text, set → sorted list).

    Raises ``TypeError`` for a value with no JSON form, one that contains itself, or one nested deeper than
    ``MAX_JSON_DEPTH``.
    """
    active: set[int] = set()

    def convert(item: Any, depth: int) -> Any:
        if depth > MAX_JSON_DEPTH:
            raise TypeError(_TOO_DEEP)
        form = next((convert_form for test, convert_form in _FORMS if test(item)), None)
        if form is None:
            raise TypeError(f"{type(item).__name__} has no JSON form")
        if id(item) in active:
            raise TypeError(f"a {type(item).__name__} that contains itself has no JSON form")
        active.add(id(item))
        try:
            return form(item, lambda inside: convert(inside, depth + 1))
        finally:
            active.discard(id(item))

    return convert(value, 0)


# --- values as text ------------------------------------------------------------------------------------


def _described(exc: BaseException) -> str:
    try:
        message = clip(str(exc), 200)
    except Exception:  # an exception whose str raises in turn
        message = ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class _SafeRepr(reprlib.Repr):
    """``reprlib``'s shortened repr, with cycles cut (``...``) and a failing ``__repr__`` described."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxlevel = 12
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = self.maxarray = 100
        self.maxdict = 100
        self.maxstring = self.maxother = self.maxlong = max(limit, 40)
        self._active: set[int] = set()

    def repr1(self, x: Any, level: int) -> str:
        if id(x) in self._active:
            return "..."
        self._active.add(id(x))
        try:
            return super().repr1(x, level)
        finally:
            self._active.discard(id(x))

    def repr_instance(self, x: Any, level: int) -> str:
        try:
            text = builtins.repr(x)
        except Exception as exc:
            return f"<a {type(x).__name__} whose repr failed: {_described(exc)}>"
        return clip(text, self.maxother)


def safe_repr(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """A repr of any value that never raises: cycles cut, long parts shortened, a failing ``__repr__`` described.

    Containers show at most 100 items and 12 levels (``...`` marks what was left out); a generator is
    described, never consumed.
    """
    try:
        return _SafeRepr(limit).repr(value)
    except Exception as exc:  # reprlib's own shortcuts call repr too (a 5,000-digit int raises ValueError)
        return f"<a {type(value).__name__} whose repr failed: {_described(exc)}>"


def value_text(value: Any, limit: int) -> str:
    """``value`` as at most ``limit`` characters (and the note of what was cut): text as it is, else its JSON,
    else its ``safe_repr``.  Never raises."""
    if isinstance(value, str):
        return clip(value, limit)
    try:
        text = json.dumps(to_json(value), ensure_ascii=False, allow_nan=False)
    except Exception:  # no JSON form (TypeError), NaN (ValueError), or a property that raises on the way
        text = safe_repr(value, limit)
    return clip(text, limit)


def saved(value: Any, limit: int = PREVIEW_CHARS) -> Any:
    """What a notebook keeps of a value: its JSON form when that is at most ``limit`` characters of JSON,
    else ``value_text(value, limit)`` (a string that says how much was cut).  Never raises."""
    if isinstance(value, str):
        return clip(value, limit)
    try:
        converted = to_json(value)
        text = json.dumps(converted, ensure_ascii=False, allow_nan=False)
    except Exception:
        return clip(safe_repr(value, limit), limit)
    return converted if len(text) <= limit else clip(text, limit)
