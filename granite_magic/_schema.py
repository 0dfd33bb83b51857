"""JSON Schema, both ways: a schema from Python type hints, and a check of a JSON value against a schema.

Pure (no I/O).  Tools describe a function's parameters with it and check the model's arguments before
the function runs; anything else that asks a model for JSON of a given form can do the same:

* ``SchemaBuilder().codec(hint, where)`` → ``Codec``: the hint's JSON Schema, and ``decode``, which turns
  a JSON value that fits it into the Python value the hint asks for (an Enum member, a dataclass, a
  tuple, a ``Path``, a date).  What has no JSON form becomes ``{}`` (anything) and a line in ``notes``.
* ``schema_errors(value, schema)``: what is wrong with a value decoded by ``json.loads``; empty when it fits
  (``constraints=True``, for structured output: bounds, lengths, patterns and unique items too).
* ``schema_problems(schema)``: what ``schema_errors`` could not check as written (a keyword it does not know, a
  checked keyword of the wrong form), so that a schema given by a person is refused before it is used.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard, Union, get_args, get_origin

from ._values import clip

__all__ = ["Codec", "JsonSchema", "SchemaBuilder", "clip", "json_kind", "object_schema", "schema_errors", "schema_problems",
           "type_hints"]

JsonSchema = dict[str, Any]


def _same(value: Any) -> Any:
    return value


# --- type hints → JSON Schema ------------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """A type's JSON Schema, and how a JSON value that fits it becomes the Python value the function expects."""

    schema: JsonSchema
    decode: Callable[[Any], Any] = _same


# Python types that need no parameters → their JSON Schema (and the way back).
_LEAVES: dict[Any, Codec] = {
    str: Codec({"type": "string"}),
    int: Codec({"type": "integer"}, int),  # JSON Schema counts 2.0 as an integer; the function still gets 2
    float: Codec({"type": "number"}, float),
    bool: Codec({"type": "boolean"}),
    type(None): Codec({"type": "null"}),
    list: Codec({"type": "array"}),
    tuple: Codec({"type": "array"}, tuple),
    dict: Codec({"type": "object"}),
    Path: Codec({"type": "string"}, Path),
    dt.datetime: Codec({"type": "string", "format": "date-time"}, dt.datetime.fromisoformat),
    dt.date: Codec({"type": "string", "format": "date"}, dt.date.fromisoformat),
    Any: Codec({}),
    object: Codec({}),
}

# Python scalar → JSON type name; bool before int, since a bool is an int in Python.
_SCALARS: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (type(None), "null"),
)

# A TypedDict key's typing.Required / NotRequired mark (Python 3.11+) → whether the key is required.
_REQUIRED_MARKS: dict[Any, bool] = {
    getattr(typing, mark): required for mark, required in (("Required", True), ("NotRequired", False)) if hasattr(typing, mark)
}


def _scalar_type(value: Any) -> str | None:
    return next((name for kind, name in _SCALARS if isinstance(value, kind)), None)


def _common_type(values: Sequence[Any]) -> JsonSchema:
    """``{"type": T}`` when every value has the same JSON type, else nothing (an ``enum`` alone still says it all)."""
    kinds = {_scalar_type(value) for value in values}
    return {"type": kinds.pop()} if len(kinds) == 1 and None not in kinds else {}


def type_hints(obj: Any) -> dict[str, Any]:
    """Resolved hints, keeping ``Annotated``; unresolvable string annotations stay strings (described as unknown)."""
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except Exception:  # a forward reference to a name that is not defined: fall back, never crash
        return dict(getattr(obj, "__annotations__", {}))


def object_schema(properties: Mapping[str, JsonSchema], required: Sequence[str]) -> JsonSchema:
    # additionalProperties false: a name the function does not take would fail the call anyway, so say so first.
    return {"type": "object", "properties": dict(properties), "required": list(required), "additionalProperties": False}


class SchemaBuilder:
    """Walks type hints into codecs, and notes what it could not describe."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self._open: set[type] = set()  # classes being described now, to stop a recursive type

    def codec(self, hint: Any, where: str) -> Codec:
        origin = get_origin(hint)
        if origin is not None and origin in _GENERICS:
            return _GENERICS[origin](self, hint, where)
        leaf = _leaf(hint)
        if leaf is not None:
            return leaf
        if isinstance(hint, type):
            build = next((build for test, build in _CLASSES if test(hint)), None)
            if build is not None:
                return build(self, hint, where)
        return self.unknown(hint, where)

    def unknown(self, hint: Any, where: str, why: str = "has no JSON Schema") -> Codec:
        name = hint if isinstance(hint, str) else getattr(hint, "__qualname__", None) or repr(hint)
        self.notes.append(f"{where}: {name} {why}, so the model is told nothing about its form")
        return Codec({})

    def enter(self, cls: type) -> bool:
        if cls in self._open:
            return False
        self._open.add(cls)
        return True

    def leave(self, cls: type) -> None:
        self._open.discard(cls)


def _leaf(hint: Any) -> Codec | None:
    try:
        return _LEAVES.get(hint)
    except TypeError:  # an Annotated hint with unhashable metadata
        return None


def _annotated(builder: SchemaBuilder, hint: Any, where: str) -> Codec:
    base, *metadata = get_args(hint)
    inner = builder.codec(base, where)
    description = next((m for m in metadata if isinstance(m, str)), None)
    return inner if description is None else Codec({**inner.schema, "description": description}, inner.decode)


def _literal(builder: SchemaBuilder, hint: Any, where: str) -> Codec:
    choices = get_args(hint)
    values = [c.value if isinstance(c, enum.Enum) else c for c in choices]
    if any(_scalar_type(v) is None for v in values):
        return builder.unknown(hint, where, "has values that are not JSON scalars")

    def decode(value: Any) -> Any:  # Literal[Color.RED] is sent as "red" and comes back as the member
        return next((c for c, v in zip(choices, values, strict=True) if _json_equal(v, value)), value)

    return Codec({**_common_type(values), "enum": values}, decode)


def _union(builder: SchemaBuilder, hint: Any, where: str) -> Codec:
    codecs = [builder.codec(arg, where) for arg in get_args(hint)]
    if any(not c.schema for c in codecs):  # Any | None is anything
        return Codec({})

    def decode(value: Any) -> Any:  # the first branch the value fits decides its Python form
        return next((c.decode(value) for c in codecs if not schema_errors(value, c.schema)), value)

    return Codec({"anyOf": [c.schema for c in codecs]}, decode)


def _items(builder: SchemaBuilder, item: Any, where: str, container: Callable[[Any], Any]) -> Codec:
    inner = builder.codec(item, f"{where}[]")
    schema: JsonSchema = {"type": "array", "items": inner.schema} if inner.schema else {"type": "array"}
    return Codec(schema, lambda value: container(inner.decode(v) for v in value))


def _array(builder: SchemaBuilder, hint: Any, where: str) -> Codec:
    (item,) = get_args(hint) or (Any,)
    return _items(builder, item, where, list)


def _tuple(builder: SchemaBuilder, hint: Any, where: str) -> Codec:
    args = get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]: any length
        return _items(builder, args[0], where, tuple)
    codecs = [builder.codec(arg, f"{where}[{i}]") for i, arg in enumerate(args)]
    schema = {"type": "array", "prefixItems": [c.schema for c in codecs], "minItems": len(codecs), "maxItems": len(codecs)}
    return Codec(schema, lambda value: tuple(c.decode(v) for c, v in zip(codecs, value, strict=True)))


def _mapping(builder: SchemaBuilder, hint: Any, where: str) -> Codec:
    key, value = get_args(hint) or (str, Any)
    if key is not str:
        builder.notes.append(f"{where}: JSON object keys are strings, so the function gets string keys, not {key!r}")
    inner = builder.codec(value, f"{where}{{}}")
    schema: JsonSchema = {"type": "object", "additionalProperties": inner.schema} if inner.schema else {"type": "object"}
    return Codec(schema, lambda found: {k: inner.decode(v) for k, v in found.items()})


def _enum(builder: SchemaBuilder, cls: type[enum.Enum], where: str) -> Codec:
    values = [member.value for member in cls]
    if any(_scalar_type(v) is None for v in values):  # tuple or object values: offer the names instead
        return Codec({"type": "string", "enum": [member.name for member in cls]}, lambda name: cls[name])
    return Codec({**_common_type(values), "enum": values}, cls)


def _fields(builder: SchemaBuilder, cls: type, names: Sequence[str], required: Sequence[str], where: str) -> Codec:
    """An object schema for a dataclass or a TypedDict; ``cls`` builds the value (a TypedDict is a dict)."""
    if not builder.enter(cls):
        return builder.unknown(cls, where, "refers to itself")
    try:
        hints = type_hints(cls)
        codecs = {name: builder.codec(_unrequired(hints.get(name, Any)), f"{where}.{name}") for name in names}
    finally:
        builder.leave(cls)
    return Codec(
        object_schema({name: c.schema for name, c in codecs.items()}, required),
        lambda value: cls(**{k: codecs[k].decode(v) for k, v in value.items()}),
    )


def _dataclass(builder: SchemaBuilder, cls: type, where: str) -> Codec:
    fields = [f for f in dataclasses.fields(cls) if f.init]
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    return _fields(builder, cls, [f.name for f in fields], required, where)


def _typeddict(builder: SchemaBuilder, cls: type, where: str) -> Codec:
    hints = type_hints(cls)
    # __required_keys__ cannot see a NotRequired written as a string (from __future__ import annotations): the mark wins.
    keys: frozenset[str] = getattr(cls, "__required_keys__", frozenset(hints))
    required = [name for name, hint in hints.items() if _REQUIRED_MARKS.get(get_origin(hint), name in keys)]
    return _fields(builder, cls, list(hints), required, where)


def _unrequired(hint: Any) -> Any:
    return get_args(hint)[0] if get_origin(hint) in _REQUIRED_MARKS else hint


# Generic forms (the origin of list[int], int | None, Literal["a"], ...) → how to describe them.
_GENERICS: dict[Any, Callable[[SchemaBuilder, Any, str], Codec]] = {
    typing.Annotated: _annotated,
    Literal: _literal,
    Union: _union,
    types.UnionType: _union,
    list: _array,
    Sequence: _array,
    tuple: _tuple,
    dict: _mapping,
    Mapping: _mapping,
}

# Classes described by what they are (tested in this order).
_CLASSES: tuple[tuple[Callable[[type], bool], Callable[[SchemaBuilder, Any, str], Codec]], ...] = (
    (lambda cls: issubclass(cls, enum.Enum), _enum),
    (dataclasses.is_dataclass, _dataclass),
    (typing.is_typeddict, _typeddict),
)

# --- checking a value against a schema ----------------------------------------------------------------

# A check's way down into the schemas it holds, and a check: (value, schema, where, recurse) → errors.
_Recurse = Callable[[Any, Any, str], list[str]]
_Check = Callable[[Any, Mapping[str, Any], str, _Recurse], list[str]]

# JSON Schema type name → does a value decoded by json.loads have it?
_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def schema_errors(value: Any, schema: Any, where: str = "", *, constraints: bool = False) -> list[str]:
    """What is wrong with ``value`` against ``schema``: empty when it fits.

    A small validator of our own for what ``SchemaBuilder`` writes and tool definitions use: ``type``,
    ``enum``, ``const``, ``properties``, ``required``, ``additionalProperties`` (false, or a schema),
    ``items``, ``prefixItems``, ``minItems``/``maxItems``, ``anyOf``, ``oneOf`` and ``allOf``.  With
    ``constraints`` (structured output) also the value constraints: ``minimum``/``maximum``,
    ``exclusiveMinimum``/``exclusiveMaximum`` (numbers, as since draft 6), ``minLength``/``maxLength``,
    ``pattern`` (``re.search``) and ``uniqueItems``; ``schema_problems`` names every other keyword.
    Tools' arguments are checked without them, as they always were.  ``where`` names the value in messages
    (nothing: "the arguments").
    """
    return _validate(value, schema, where, _CONSTRAINED if constraints else _CHECKS)


def _validate(value: Any, schema: Any, where: str, checks: tuple[_Check, ...]) -> list[str]:
    if schema is False:
        return [f"{_label(where)}: not allowed here"]
    if not isinstance(schema, Mapping):
        return []
    wrong_type = _check_type(value, schema, where)
    if wrong_type:  # the other checks would only repeat it
        return wrong_type

    def recurse(item: Any, sub: Any, place: str) -> list[str]:  # the same checks all the way down
        return _validate(item, sub, place, checks)

    return [error for check in checks for error in check(value, schema, where, recurse)]


def _label(where: str) -> str:
    return where or "the arguments"


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def json_kind(value: Any) -> str:
    """The JSON name of ``value``'s type ("object", "array", "string", ...; a Python name when it has none)."""
    if isinstance(value, (list, dict)):
        return "array" if isinstance(value, list) else "object"
    return _scalar_type(value) or type(value).__name__


def _shown(value: Any) -> str:
    return clip(json.dumps(value, ensure_ascii=False, default=repr), 60)


def _json_equal(a: Any, b: Any) -> bool:
    # In Python True == 1; in JSON they are different values.
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _check_type(value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    expected = schema.get("type")
    if expected is None:
        return []
    names = [expected] if isinstance(expected, str) else list(expected)
    if any(_JSON_TYPES.get(name, lambda _: True)(value) for name in names):
        return []
    return [f"{_label(where)}: expected {' or '.join(names)}, got {json_kind(value)} {_shown(value)}"]


def _check_enum(value: Any, schema: Mapping[str, Any], where: str, recurse: _Recurse) -> list[str]:
    if "enum" in schema and not any(_json_equal(value, choice) for choice in schema["enum"]):
        return [f"{_label(where)}: {_shown(value)} is not one of {_shown(schema['enum'])}"]
    if "const" in schema and not _json_equal(value, schema["const"]):
        return [f"{_label(where)}: must be {_shown(schema['const'])}"]
    return []


def _check_object(value: Any, schema: Mapping[str, Any], where: str, recurse: _Recurse) -> list[str]:
    if not isinstance(value, dict):
        return []
    properties = schema.get("properties") or {}
    errors = [f"{_at(where, key)}: missing (it is required)" for key in schema.get("required", ()) if key not in value]
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            errors += recurse(item, properties[key], _at(where, key))
        elif extra is False:
            errors.append(f"{_at(where, key)}: unexpected (expected only {', '.join(properties) or 'no arguments'})")
        else:
            errors += recurse(item, extra, _at(where, key))
    return errors


def _check_array(value: Any, schema: Mapping[str, Any], where: str, recurse: _Recurse) -> list[str]:
    if not isinstance(value, list):
        return []
    prefix = schema.get("prefixItems") or []
    errors = []
    if len(value) < schema.get("minItems", 0):
        errors.append(f"{_label(where)}: expected at least {schema['minItems']} items, got {len(value)}")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{_label(where)}: expected at most {schema['maxItems']} items, got {len(value)}")
    for i, item in enumerate(value):
        errors += recurse(item, prefix[i] if i < len(prefix) else schema.get("items", True), f"{where}[{i}]")
    return errors


def _check_unique(value: Any, schema: Mapping[str, Any], where: str, recurse: _Recurse) -> list[str]:
    if not isinstance(value, list) or schema.get("uniqueItems") is not True:
        return []
    first: dict[str, int] = {}  # each item's canonical JSON -> its first index (1 and true differ, as in JSON)
    for i, item in enumerate(value):
        key = json.dumps(item, sort_keys=True, default=repr)
        if key in first:
            return [f"{_label(where)}: items {first[key]} and {i} are equal (the items must be unique)"]
        first[key] = i
    return []


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Numeric bound keyword -> (does a value break it, how the rule reads).
_BOUNDS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "minimum": (lambda value, bound: value < bound, "at least"),
    "maximum": (lambda value, bound: value > bound, "at most"),
    "exclusiveMinimum": (lambda value, bound: value <= bound, "more than"),
    "exclusiveMaximum": (lambda value, bound: value >= bound, "less than"),
}


def _check_bounds(value: Any, schema: Mapping[str, Any], where: str, recurse: _Recurse) -> list[str]:
    if not _is_number(value):
        return []
    # A bound that is not a number (draft 4's boolean exclusiveMinimum among them) is not checked: schema_problems names it.
    return [f"{_label(where)}: must be {rule} {bound}, got {_shown(value)}"
            for keyword, (breaks, rule) in _BOUNDS.items()
            if _is_number(bound := schema.get(keyword)) and breaks(value, bound)]


def _check_string(value: Any, schema: Mapping[str, Any], where: str, recurse: _Recurse) -> list[str]:
    if not isinstance(value, str):
        return []
    errors = []
    # JSON Schema counts characters (code points), as len() does.
    if _is_number(least := schema.get("minLength")) and len(value) < least:
        errors.append(f"{_label(where)}: must be at least {least} characters long, got {len(value)}: {_shown(value)}")
    if _is_number(most := schema.get("maxLength")) and len(value) > most:
        errors.append(f"{_label(where)}: must be at most {most} characters long, got {len(value)}: {_shown(value)}")
    pattern = schema.get("pattern")
    compiled = _pattern(pattern) if isinstance(pattern, str) else None
    if compiled is not None and not compiled.search(value):
        errors.append(f"{_label(where)}: {_shown(value)} does not match the pattern {_shown(pattern)}")
    return errors


def _pattern(pattern: str) -> re.Pattern[str] | None:
    """The compiled pattern (re caches it), or None when Python cannot read it: schema_problems names that."""
    try:
        return re.compile(pattern)
    except (re.error, RecursionError, OverflowError):
        return None


def _check_branches(value: Any, schema: Mapping[str, Any], where: str, recurse: _Recurse) -> list[str]:
    errors = [error for branch in schema.get("allOf", ()) for error in recurse(value, branch, where)]
    for keyword, (fits, fail) in _BRANCH_RULES.items():
        if keyword in schema:
            verdicts = [recurse(value, branch, where) for branch in schema[keyword]]
            if not fits(sum(not v for v in verdicts)):
                reasons = "; ".join(v[0] for v in verdicts if v) or "it fits more than one"
                errors.append(f"{_label(where)}: {_shown(value)} fits {fail} of the allowed forms ({reasons})")
    return errors


# anyOf / oneOf → how many branches must fit, and how a failure reads.
_BRANCH_RULES: dict[str, tuple[Callable[[int], bool], str]] = {
    "anyOf": (lambda fitting: fitting >= 1, "none"),
    "oneOf": (lambda fitting: fitting == 1, "not exactly one"),
}


# The checks after the type check, each returning its errors: those tools' arguments always had ...
_CHECKS: tuple[_Check, ...] = (_check_enum, _check_object, _check_array, _check_branches)
# ... and with the value constraints, for structured output.
_CONSTRAINED: tuple[_Check, ...] = (*_CHECKS, _check_unique, _check_bounds, _check_string)


# --- what a schema asks that schema_errors cannot check -------------------------------------------------

# Keywords that only describe (JSON Schema's annotations, and OpenAPI's discriminator, which sits beside a oneOf
# that is checked): nothing to check, nothing to refuse.  "format" is an annotation unless a validator opts in.
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment", "format", "readOnly",
                         "writeOnly", "deprecated", "contentEncoding", "contentMediaType", "discriminator"})


def schema_problems(schema: Any, where: str = "") -> list[str]:
    """What ``schema_errors`` could not check in ``schema`` as written: empty when it checks every keyword.

    The checker of a schema a person gives for ``schema_errors(..., constraints=True)``.  One line each, naming
    the keyword and where it is ("field address.city", "field tags[]", "the top level"): a keyword the validator
    does not know (``if``, ``$ref``, ``multipleOf``...), or a known keyword whose value has the wrong form
    (``type: "str"``, a draft-4 boolean ``exclusiveMinimum``, a pattern Python cannot compile, a required name
    that additionalProperties false makes impossible).  Annotations (``ANNOTATIONS``) pass.
    """
    if isinstance(schema, bool):
        return []
    if not isinstance(schema, Mapping):
        return [f"{_place(where)} is {json_kind(schema)} {_shown(schema)}: a schema is a JSON object (or true/false)"]
    problems: list[str] = []
    for keyword, value in schema.items():
        if keyword in ANNOTATIONS:
            continue
        check = _KEYWORD_FORMS.get(keyword)
        if check is None:
            problems.append(f"unsupported keyword {keyword!r} at {_place(where)}")
        else:
            problems += check(keyword, value, schema, where)
    return problems


def _place(where: str) -> str:
    return f"field {where}" if where else "the top level"


def _wrong(keyword: str, where: str, value: Any, must: str) -> list[str]:
    return [f"{keyword!r} at {_place(where)} must be {must}, not {_shown(value)}"]


def _form_type(keyword: str, value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    if names and all(isinstance(name, str) and name in _JSON_TYPES for name in names):
        return []
    return _wrong(keyword, where, value, f"one of {', '.join(_JSON_TYPES)} (or a list of them)")


def _form_list(keyword: str, value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    return [] if isinstance(value, list) and value else _wrong(keyword, where, value, "a non-empty list")


def _form_anything(keyword: str, value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    return []


def _form_properties(keyword: str, value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    if not isinstance(value, Mapping):
        return _wrong(keyword, where, value, "an object of field schemas")
    return [problem for name, sub in value.items() for problem in schema_problems(sub, _at(where, name))]


def _form_required(keyword: str, value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        return _wrong(keyword, where, value, "a list of field names")
    properties = schema.get("properties")
    if schema.get("additionalProperties") is False and isinstance(properties, Mapping):
        # Required but not allowed: no value could ever fit, so it is a typo, not a wish.
        missing = [name for name in value if name not in properties]
        if missing:
            return [f"'required' at {_place(where)} names {', '.join(map(repr, missing))}, which is not among its properties "
                    f"(and additionalProperties is false)"]
    return []


def _form_subschema(suffix: str) -> Callable[[str, Any, Mapping[str, Any], str], list[str]]:
    def check(keyword: str, value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
        if keyword == "items" and isinstance(value, list):
            return [f"'items' at {_place(where)} is a list (draft 4's tuples): write prefixItems"]
        return schema_problems(value, f"{where}{suffix}")
    return check


def _form_branches(keyword: str, value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        return _wrong(keyword, where, value, "a non-empty list of schemas")
    suffix = "[{}]" if keyword == "prefixItems" else ""  # each tuple place is its own place; a branch is the same place
    return [problem for i, sub in enumerate(value) for problem in schema_problems(sub, where + suffix.format(i))]


def _form_count(keyword: str, value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return [] if ok else _wrong(keyword, where, value, "a whole number, 0 or more")


def _form_bound(keyword: str, value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    if isinstance(value, bool):  # draft 4 wrote exclusiveMinimum: true beside minimum
        return [f"{keyword!r} at {_place(where)} is {_shown(value)} (draft 4's form): write the bound itself, as in {keyword}: 0"]
    return [] if _is_number(value) else _wrong(keyword, where, value, "a number")


def _form_flag(keyword: str, value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    return [] if isinstance(value, bool) else _wrong(keyword, where, value, "true or false")


def _form_pattern(keyword: str, value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    if isinstance(value, str) and _pattern(value) is not None:
        return []
    return _wrong(keyword, where, value, "a regular expression Python can read")


# Each keyword schema_errors checks -> the check of its value's form (which walks into the schemas it holds).
_KEYWORD_FORMS: dict[str, Callable[[str, Any, Mapping[str, Any], str], list[str]]] = {
    "type": _form_type,
    "enum": _form_list,
    "const": _form_anything,
    "properties": _form_properties,
    "required": _form_required,
    "additionalProperties": _form_subschema("{}"),
    "items": _form_subschema("[]"),
    "prefixItems": _form_branches,
    "anyOf": _form_branches,
    "oneOf": _form_branches,
    "allOf": _form_branches,
    "minItems": _form_count,
    "maxItems": _form_count,
    "minLength": _form_count,
    "maxLength": _form_count,
    "uniqueItems": _form_flag,
    "minimum": _form_bound,
    "maximum": _form_bound,
    "exclusiveMinimum": _form_bound,
    "exclusiveMaximum": _form_bound,
    "pattern": _form_pattern,
}
