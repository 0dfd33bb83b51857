"""Tools: the notebook's own functions offered to the model, and the calls the model makes to them.

Everything here is pure (no I/O, no IPython, no HTTP), so the tool loop in the session, the three API
shapes, the fake server and the magic all share one description of a tool and one way to run a call:

* **describing** a tool: ``tool_from_function`` (JSON Schema from the signature, the type hints and the
  docstring), ``tool_from_spec`` (a ready JSON-Schema definition with a callable), ``resolve_tools``
  (the magic's ``--tools NAME[,NAME]``, refused before anything is sent);
* **offering** tools in each API shape: ``chat_tools``, ``responses_tools``, ``messages_tools`` and
  ``tool_choice_for``;
* **running** a call: ``run_call`` / ``run_requested`` → ``CallRecord`` (arguments parsed and checked
  against the schema before the function runs, an optional approval, the function's own failure
  kept as text), and ``result_text`` (what goes back to the model);
* **prompted mode**, Granite's own convention for providers that ignore ``tools``: ``prompted_system``,
  ``ToolCallScanner`` (hides ``<tool_call>`` blocks from streamed text), ``prompted_results`` and
  ``prompted_assistant``;
* **streaming**: ``ToolCallAssembler`` folds native tool-call deltas into whole calls.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import enum
import functools
import inspect
import json
import re
import time
import traceback
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal, Union, get_args, get_origin

from ._errors import InvalidParameterError

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "DECLINED",
    "MAX_RESULT_CHARS",
    "TOOL_CHOICES",
    "ApiShape",
    "Approve",
    "CallRecord",
    "ParsedCall",
    "Tool",
    "ToolCallAssembler",
    "ToolCallScanner",
    "chat_tools",
    "describe_call",
    "describe_exception",
    "messages_tools",
    "parse_docstring",
    "prompted_assistant",
    "prompted_results",
    "prompted_system",
    "resolve_tools",
    "responses_tools",
    "result_text",
    "run_call",
    "run_requested",
    "schema_errors",
    "to_json",
    "tool_choice_for",
    "tool_from_function",
    "tool_from_spec",
    "tools_for",
]

JsonSchema = dict[str, Any]
ApiShape = Literal["chat", "responses", "messages"]  # the same names as ``_shapes.Api`` (not imported: shapes import us)
Approve = Callable[["CallRecord"], bool]

TOOL_CHOICES = ("auto", "none", "required")  # or the name of one of the offered functions
DECLINED = "the user declined to run this call"
MAX_RESULT_CHARS = 6_000  # a tool returning a whole table would otherwise flood the context (and the bill)
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"

# OpenAI's and Anthropic's rule for tool names (both ^[a-zA-Z0-9_-]{1,64}$).
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# --- the tool ----------------------------------------------------------------------------------------


def _same(value: Any) -> Any:
    return value


def _same_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    return arguments


@dataclass(frozen=True)
class Tool:
    """A function the model may call, and the JSON Schema of its arguments (an ``object`` schema)."""

    name: str
    description: str
    parameters: JsonSchema = field(hash=False)  # a dict: the tool still hashes, by its other fields
    function: Callable[..., Any]
    notes: tuple[str, ...] = ()  # what the schema could not say (a type with no JSON form), for the front end to show
    # JSON values → the Python values the function's hints ask for (an Enum member, a dataclass, a tuple);
    # tools made from a ready spec take the JSON values as they are.
    decode: Callable[[dict[str, Any]], dict[str, Any]] = field(default=_same_arguments, repr=False, compare=False)


# --- type hints → JSON Schema ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Codec:
    """A type's JSON Schema, and how a JSON value that fits it becomes the Python value the function expects."""

    schema: JsonSchema
    decode: Callable[[Any], Any] = _same


# Python types that need no parameters → their JSON Schema (and the way back).
_LEAVES: dict[Any, _Codec] = {
    str: _Codec({"type": "string"}),
    int: _Codec({"type": "integer"}, int),  # JSON Schema counts 2.0 as an integer; the function still gets 2
    float: _Codec({"type": "number"}, float),
    bool: _Codec({"type": "boolean"}),
    type(None): _Codec({"type": "null"}),
    list: _Codec({"type": "array"}),
    tuple: _Codec({"type": "array"}, tuple),
    dict: _Codec({"type": "object"}),
    Path: _Codec({"type": "string"}, Path),
    dt.datetime: _Codec({"type": "string", "format": "date-time"}, dt.datetime.fromisoformat),
    dt.date: _Codec({"type": "string", "format": "date"}, dt.date.fromisoformat),
    Any: _Codec({}),
    object: _Codec({}),
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


def _hints(obj: Any) -> dict[str, Any]:
    """Resolved hints, keeping ``Annotated``; unresolvable string annotations stay strings (described as unknown)."""
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except Exception:  # a forward reference to a name that is not defined: fall back, never crash
        return dict(getattr(obj, "__annotations__", {}))


def _object_schema(properties: Mapping[str, JsonSchema], required: Sequence[str]) -> JsonSchema:
    # additionalProperties false: a name the function does not take would fail the call anyway, so say so first.
    return {"type": "object", "properties": dict(properties), "required": list(required), "additionalProperties": False}


class _Builder:
    """Walks type hints into codecs, and notes what it could not describe."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self._open: set[type] = set()  # classes being described now, to stop a recursive type

    def codec(self, hint: Any, where: str) -> _Codec:
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

    def unknown(self, hint: Any, where: str, why: str = "has no JSON Schema") -> _Codec:
        name = hint if isinstance(hint, str) else getattr(hint, "__qualname__", None) or repr(hint)
        self.notes.append(f"{where}: {name} {why}, so the model is told nothing about its form")
        return _Codec({})

    def enter(self, cls: type) -> bool:
        if cls in self._open:
            return False
        self._open.add(cls)
        return True

    def leave(self, cls: type) -> None:
        self._open.discard(cls)


def _leaf(hint: Any) -> _Codec | None:
    try:
        return _LEAVES.get(hint)
    except TypeError:  # an Annotated hint with unhashable metadata
        return None


def _annotated(builder: _Builder, hint: Any, where: str) -> _Codec:
    base, *metadata = get_args(hint)
    inner = builder.codec(base, where)
    description = next((m for m in metadata if isinstance(m, str)), None)
    return inner if description is None else _Codec({**inner.schema, "description": description}, inner.decode)


def _literal(builder: _Builder, hint: Any, where: str) -> _Codec:
    choices = get_args(hint)
    values = [c.value if isinstance(c, enum.Enum) else c for c in choices]
    if any(_scalar_type(v) is None for v in values):
        return builder.unknown(hint, where, "has values that are not JSON scalars")

    def decode(value: Any) -> Any:  # Literal[Color.RED] is sent as "red" and comes back as the member
        return next((c for c, v in zip(choices, values, strict=True) if _json_equal(v, value)), value)

    return _Codec({**_common_type(values), "enum": values}, decode)


def _union(builder: _Builder, hint: Any, where: str) -> _Codec:
    codecs = [builder.codec(arg, where) for arg in get_args(hint)]
    if any(not c.schema for c in codecs):  # Any | None is anything
        return _Codec({})

    def decode(value: Any) -> Any:  # the first branch the value fits decides its Python form
        return next((c.decode(value) for c in codecs if not schema_errors(value, c.schema)), value)

    return _Codec({"anyOf": [c.schema for c in codecs]}, decode)


def _items(builder: _Builder, item: Any, where: str, container: Callable[[Any], Any]) -> _Codec:
    inner = builder.codec(item, f"{where}[]")
    schema: JsonSchema = {"type": "array", "items": inner.schema} if inner.schema else {"type": "array"}
    return _Codec(schema, lambda value: container(inner.decode(v) for v in value))


def _array(builder: _Builder, hint: Any, where: str) -> _Codec:
    (item,) = get_args(hint) or (Any,)
    return _items(builder, item, where, list)


def _tuple(builder: _Builder, hint: Any, where: str) -> _Codec:
    args = get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]: any length
        return _items(builder, args[0], where, tuple)
    codecs = [builder.codec(arg, f"{where}[{i}]") for i, arg in enumerate(args)]
    schema = {"type": "array", "prefixItems": [c.schema for c in codecs], "minItems": len(codecs), "maxItems": len(codecs)}
    return _Codec(schema, lambda value: tuple(c.decode(v) for c, v in zip(codecs, value, strict=True)))


def _mapping(builder: _Builder, hint: Any, where: str) -> _Codec:
    key, value = get_args(hint) or (str, Any)
    if key is not str:
        builder.notes.append(f"{where}: JSON object keys are strings, so the function gets string keys, not {key!r}")
    inner = builder.codec(value, f"{where}{{}}")
    schema: JsonSchema = {"type": "object", "additionalProperties": inner.schema} if inner.schema else {"type": "object"}
    return _Codec(schema, lambda found: {k: inner.decode(v) for k, v in found.items()})


def _enum(builder: _Builder, cls: type[enum.Enum], where: str) -> _Codec:
    values = [member.value for member in cls]
    if any(_scalar_type(v) is None for v in values):  # tuple or object values: offer the names instead
        return _Codec({"type": "string", "enum": [member.name for member in cls]}, lambda name: cls[name])
    return _Codec({**_common_type(values), "enum": values}, cls)


def _fields(builder: _Builder, cls: type, names: Sequence[str], required: Sequence[str], where: str) -> _Codec:
    """An object schema for a dataclass or a TypedDict; ``cls`` builds the value (a TypedDict is a dict)."""
    if not builder.enter(cls):
        return builder.unknown(cls, where, "refers to itself")
    try:
        hints = _hints(cls)
        codecs = {name: builder.codec(_unrequired(hints.get(name, Any)), f"{where}.{name}") for name in names}
    finally:
        builder.leave(cls)
    return _Codec(
        _object_schema({name: c.schema for name, c in codecs.items()}, required),
        lambda value: cls(**{k: codecs[k].decode(v) for k, v in value.items()}),
    )


def _dataclass(builder: _Builder, cls: type, where: str) -> _Codec:
    fields = [f for f in dataclasses.fields(cls) if f.init]
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    return _fields(builder, cls, [f.name for f in fields], required, where)


def _typeddict(builder: _Builder, cls: type, where: str) -> _Codec:
    hints = _hints(cls)
    # __required_keys__ cannot see a NotRequired written as a string (from __future__ import annotations): the mark wins.
    keys: frozenset[str] = getattr(cls, "__required_keys__", frozenset(hints))
    required = [name for name, hint in hints.items() if _REQUIRED_MARKS.get(get_origin(hint), name in keys)]
    return _fields(builder, cls, list(hints), required, where)


def _unrequired(hint: Any) -> Any:
    return get_args(hint)[0] if get_origin(hint) in _REQUIRED_MARKS else hint


# Generic forms (the origin of list[int], int | None, Literal["a"], ...) → how to describe them.
_GENERICS: dict[Any, Callable[[_Builder, Any, str], _Codec]] = {
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
_CLASSES: tuple[tuple[Callable[[type], bool], Callable[[_Builder, Any, str], _Codec]], ...] = (
    (lambda cls: issubclass(cls, enum.Enum), _enum),
    (dataclasses.is_dataclass, _dataclass),
    (typing.is_typeddict, _typeddict),
)


# --- docstrings --------------------------------------------------------------------------------------

_GOOGLE_ARGS = re.compile(r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters):\s*$")
_GOOGLE_HEADER = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")  # Returns:, Raises:, Example: ...
_GOOGLE_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")  # name (type): text
_NUMPY_ARGS = ("Parameters", "Other Parameters")
_NUMPY_RULE = re.compile(r"^\s*-{3,}\s*$")
_NUMPY_ENTRY = re.compile(r"^(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)\s*(?::.*)?$")  # name[, name] : type
_SPHINX_ENTRY = re.compile(r"^:(?:param|parameter|arg|argument|key|keyword)\s+(?:[^:]*?\s)?\*{0,2}(\w+)\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The first paragraph, and per-argument descriptions from Google, NumPy or Sphinx style sections."""
    lines = inspect.cleandoc(doc or "").splitlines()
    arguments: dict[str, str] = {}
    for style in (_sphinx_arguments, _numpy_arguments, _google_arguments):
        for name, text in style(lines).items():
            arguments.setdefault(name, text)
    return _summary(lines), arguments


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _starts_section(lines: Sequence[str], i: int) -> bool:
    text = lines[i].strip()
    underlined = i + 1 < len(lines) and bool(_NUMPY_RULE.match(lines[i + 1]))
    return bool(_GOOGLE_HEADER.match(text)) or text.startswith(":") or underlined


def _summary(lines: Sequence[str]) -> str:
    paragraph: list[str] = []
    for i, line in enumerate(lines):
        if not line.strip() and paragraph:
            break
        if line.strip() and _starts_section(lines, i):
            break
        if line.strip():
            paragraph.append(line.strip())
    return " ".join(paragraph)


def _append(found: dict[str, str], name: str, text: str) -> None:
    found[name] = f"{found[name]} {text}".strip()


def _google_arguments(lines: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    i = 0
    while i < len(lines):
        if _GOOGLE_ARGS.match(lines[i].strip()):
            i = _google_section(lines, i + 1, _indent(lines[i]), found)
        else:
            i += 1
    return found


def _google_section(lines: Sequence[str], start: int, header_indent: int, found: dict[str, str]) -> int:
    """Read entries from ``start``; return where the section ends."""
    entry_indent: int | None = None
    current: str | None = None
    for i in range(start, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        if _indent(line) <= header_indent:  # dedented back to the header: the section is over
            return i
        entry_indent = _indent(line) if entry_indent is None else entry_indent
        match = _GOOGLE_ENTRY.match(line.strip()) if _indent(line) == entry_indent else None
        if match:
            current = match[1]
            found[current] = match[2].strip()
        elif current is not None:
            _append(found, current, line.strip())
    return len(lines)


def _numpy_arguments(lines: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for i in range(len(lines) - 1):
        if lines[i].strip() in _NUMPY_ARGS and _NUMPY_RULE.match(lines[i + 1]):
            _numpy_section(lines, i + 2, _indent(lines[i]), found)
    return found


def _numpy_section(lines: Sequence[str], start: int, header_indent: int, found: dict[str, str]) -> None:
    current: list[str] = []
    for i in range(start, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        if i + 1 < len(lines) and _NUMPY_RULE.match(lines[i + 1]):  # the next underlined section begins
            return
        if _indent(line) <= header_indent:
            match = _NUMPY_ENTRY.match(line.strip())
            current = [n.strip().lstrip("*") for n in match[1].split(",")] if match else []
            found.update(dict.fromkeys(current, ""))
        else:
            for name in current:
                _append(found, name, line.strip())


def _sphinx_arguments(lines: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    current: str | None = None
    for line in lines:
        text = line.strip()
        match = _SPHINX_ENTRY.match(text)
        if match:
            current = match[1]
            found[current] = match[2].strip()
        elif not text or text.startswith(":") or _indent(line) == 0:
            current = None
        elif current is not None:
            _append(found, current, text)
    return found


# --- making tools ------------------------------------------------------------------------------------


def tool_from_function(fn: Callable[..., Any], *, name: str | None = None) -> Tool:
    """A tool from a function's signature, type hints and docstring.

    Parameters with defaults are optional; ``*args`` and ``**kwargs`` are refused (the model calls with
    named arguments only).  A hint with no JSON form becomes ``{}`` (anything) and a note in ``Tool.notes``.
    """
    if not callable(fn):
        raise InvalidParameterError(f"{fn!r} is not callable, so it cannot be a tool")
    target = fn.func if isinstance(fn, functools.partial) else fn  # a partial keeps its function's name and docs
    name = _checked_name(name or str(getattr(target, "__name__", "")), fn)
    parameters = _signature(fn, name).parameters.values()
    for parameter in parameters:
        _refuse_variadic(name, parameter)
    summary, documented = parse_docstring(inspect.getdoc(target))
    hints = _hints(target)
    builder = _Builder()
    codecs = {p.name: builder.codec(hints.get(p.name, Any), f"{name}({p.name})") for p in parameters}
    properties = {p.name: _parameter_schema(codecs[p.name], documented.get(p.name), p.default) for p in parameters}
    required = [p.name for p in parameters if p.default is inspect.Parameter.empty]

    def decode(arguments: dict[str, Any]) -> dict[str, Any]:
        return {key: codecs[key].decode(value) if key in codecs else value for key, value in arguments.items()}

    return Tool(name, summary, _object_schema(properties, required), fn, tuple(builder.notes), decode)


def _checked_name(name: str, fn: Any) -> str:
    if not _NAME.match(name):
        raise InvalidParameterError(
            f"{name or repr(fn)!r} cannot be a tool name: use 1 to 64 ASCII letters, digits, '_' or '-' (pass name=...)"
        )
    return name


def _signature(fn: Callable[..., Any], name: str) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError) as exc:  # some builtins have no readable signature
        raise InvalidParameterError(f"the signature of {name} cannot be read ({exc}); wrap it in a def") from None


_VARIADIC: dict[Any, str] = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}


def _refuse_variadic(name: str, parameter: inspect.Parameter) -> None:
    star = _VARIADIC.get(parameter.kind)
    if star:
        raise InvalidParameterError(
            f"{name} takes {star}{parameter.name}; a tool's parameters must each have a name the model can fill in, "
            "so write them out (or give a ready JSON Schema with tool_from_spec)"
        )


def _parameter_schema(codec: _Codec, description: str | None, default: Any) -> JsonSchema:
    schema = dict(codec.schema)
    if description and "description" not in schema:  # an Annotated description is closer to the parameter: it wins
        schema["description"] = description
    if default is not inspect.Parameter.empty:
        with contextlib.suppress(TypeError, ValueError):  # a default with no JSON form is still a default, just not shown
            schema["default"] = json.loads(json.dumps(to_json(default), allow_nan=False))
    return schema


def tool_from_spec(spec: Mapping[str, Any], fn: Callable[..., Any]) -> Tool:
    """A tool from a ready definition with the callable that answers it.

    ``spec`` is OpenAI chat's ``{"type": "function", "function": {...}}`` or a bare
    ``{"name", "description", "parameters"}`` (Responses' flat form and Anthropic's ``input_schema``
    are accepted too).  The arguments reach ``fn`` as JSON values, by keyword.
    """
    if not callable(fn):
        raise InvalidParameterError(f"{fn!r} is not callable, so it cannot answer the tool {spec.get('name')!r}")
    inner = spec.get("function")
    body: Mapping[str, Any] = inner if spec.get("type") == "function" and isinstance(inner, Mapping) else spec
    name = _checked_name(str(body.get("name") or ""), spec)
    description = body.get("description") or ""
    parameters = body.get("parameters", body.get("input_schema", {"type": "object", "properties": {}}))
    if not isinstance(description, str) or not isinstance(parameters, Mapping) or parameters.get("type", "object") != "object":
        raise InvalidParameterError(f"the tool {name}: description must be text and parameters a JSON Schema of type object")
    try:
        parameters = json.loads(json.dumps(parameters))  # a private copy, and proof it is JSON
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"the tool {name}: its parameters are not JSON ({exc})") from None
    return Tool(name, description, parameters, fn)


def resolve_tools(names: Sequence[str] | str, namespace: Mapping[str, Any]) -> list[Tool]:
    """The tools the magic's ``--tools NAME[,NAME]`` names, each a callable in the notebook's namespace.

    Everything wrong is refused at once, in one line, before anything is sent.  The tool is named as the
    cell names it (so ``f = lambda x: x`` is the tool ``f``); a ``Tool`` in the namespace is used as it is.
    """
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    twice = sorted({n for n in wanted if wanted.count(n) > 1})
    if twice:
        raise InvalidParameterError(f"--tools names {', '.join(twice)} more than once; name each function once")
    problems = [problem for n in wanted if (problem := _not_a_tool(n, namespace))]
    if problems:
        raise InvalidParameterError(f"--tools: {'; '.join(problems)} (only callables defined in the notebook can be tools)")
    return [_as_tool(n, namespace[n]) for n in wanted]


def _not_a_tool(name: str, namespace: Mapping[str, Any]) -> str | None:
    if name not in namespace:
        return f"{name} is not defined"
    value = namespace[name]
    if isinstance(value, Tool) or callable(value):
        return None
    return f"{name} is a {type(value).__name__}, not a function"


def _as_tool(name: str, value: Any) -> Tool:
    return value if isinstance(value, Tool) else tool_from_function(value, name=name)


# --- offering tools in each API shape ----------------------------------------------------------------


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


def tools_for(shape: ApiShape, tools: Sequence[Tool]) -> list[JsonSchema]:
    """The tool list in ``shape``'s form (one of ``chat_tools``, ``responses_tools``, ``messages_tools``)."""
    return _TOOL_LISTS[_known_shape(shape)](tools)


def tool_choice_for(shape: ApiShape, choice: str, tools: Sequence[Tool] | None = None) -> Any:
    """``choice`` ("auto", "none", "required" or a function's name) in ``shape``'s form.

    With ``tools``, a function's name must be one of them.
    """
    words = _CHOICES[_known_shape(shape)]
    if choice in words:
        return copy.deepcopy(words[choice])
    if not _NAME.match(choice) or (tools is not None and choice not in {t.name for t in tools}):
        offered = ", ".join(t.name for t in tools or ())
        raise InvalidParameterError(
            f"tool_choice {choice!r}: use auto, none, required or the name of an offered function"
            + (f" ({offered})" if offered else "")
        )
    return _NAMED_CHOICE[shape](choice)


def _known_shape(shape: str) -> str:
    if shape not in _TOOL_LISTS:
        raise InvalidParameterError(f"unknown API shape {shape!r}: use chat, responses or messages")
    return shape


# --- checking arguments against a schema -------------------------------------------------------------

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


def schema_errors(value: Any, schema: Any, where: str = "") -> list[str]:
    """What is wrong with ``value`` against ``schema``: empty when it fits.

    A small validator of our own for what tool schemas use: ``type``, ``enum``, ``const``, ``properties``,
    ``required``, ``additionalProperties`` (false, or a schema), ``items``, ``prefixItems``,
    ``minItems``/``maxItems``, ``anyOf``, ``oneOf`` and ``allOf``; other keywords are not checked.
    """
    if schema is False:
        return [f"{_label(where)}: not allowed here"]
    if not isinstance(schema, Mapping):
        return []
    wrong_type = _check_type(value, schema, where)
    if wrong_type:  # the other checks would only repeat it
        return wrong_type
    return [error for check in _CHECKS for error in check(value, schema, where)]


def _label(where: str) -> str:
    return where or "the arguments"


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return "array" if isinstance(value, list) else "object"
    return _scalar_type(value) or type(value).__name__


def _shown(value: Any) -> str:
    return _cap(json.dumps(value, ensure_ascii=False, default=repr), 60)


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
    return [f"{_label(where)}: expected {' or '.join(names)}, got {_kind(value)} {_shown(value)}"]


def _check_enum(value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    if "enum" in schema and not any(_json_equal(value, choice) for choice in schema["enum"]):
        return [f"{_label(where)}: {_shown(value)} is not one of {_shown(schema['enum'])}"]
    if "const" in schema and not _json_equal(value, schema["const"]):
        return [f"{_label(where)}: must be {_shown(schema['const'])}"]
    return []


def _check_object(value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    properties = schema.get("properties") or {}
    errors = [f"{_at(where, key)}: missing (it is required)" for key in schema.get("required", ()) if key not in value]
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            errors += schema_errors(item, properties[key], _at(where, key))
        elif extra is False:
            errors.append(f"{_at(where, key)}: unexpected (expected only {', '.join(properties) or 'no arguments'})")
        else:
            errors += schema_errors(item, extra, _at(where, key))
    return errors


def _check_array(value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    if not isinstance(value, list):
        return []
    prefix = schema.get("prefixItems") or []
    errors = []
    if len(value) < schema.get("minItems", 0):
        errors.append(f"{_label(where)}: expected at least {schema['minItems']} items, got {len(value)}")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{_label(where)}: expected at most {schema['maxItems']} items, got {len(value)}")
    for i, item in enumerate(value):
        errors += schema_errors(item, prefix[i] if i < len(prefix) else schema.get("items", True), f"{where}[{i}]")
    return errors


def _check_branches(value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    errors = [error for branch in schema.get("allOf", ()) for error in schema_errors(value, branch, where)]
    for keyword, (fits, fail) in _BRANCH_RULES.items():
        if keyword in schema:
            verdicts = [schema_errors(value, branch, where) for branch in schema[keyword]]
            if not fits(sum(not v for v in verdicts)):
                reasons = "; ".join(v[0] for v in verdicts if v) or "it fits more than one"
                errors.append(f"{_label(where)}: {_shown(value)} fits {fail} of the allowed forms ({reasons})")
    return errors


# anyOf / oneOf → how many branches must fit, and how a failure reads.
_BRANCH_RULES: dict[str, tuple[Callable[[int], bool], str]] = {
    "anyOf": (lambda fitting: fitting >= 1, "none"),
    "oneOf": (lambda fitting: fitting == 1, "not exactly one"),
}


# The checks after the type check, each returning its errors.
_CHECKS: tuple[Callable[[Any, Mapping[str, Any], str], list[str]], ...] = (
    _check_enum,
    _check_object,
    _check_array,
    _check_branches,
)


# --- running a call ----------------------------------------------------------------------------------


@dataclass
class CallRecord:
    """One call the model asked for, and what became of it."""

    id: str
    name: str
    arguments: dict[str, Any] | None  # as the model sent them (JSON values); None when they did not parse
    raw_arguments: str
    result: Any = None  # the function's own return value, unconverted
    error: str | None = None  # set when the call was refused, declined, or raised
    duration_s: float = 0.0  # the function's running time; 0 when it did not run
    ran: bool = False  # whether the function was called (it may still have raised)


class _Refused(Exception):
    """The call cannot be made as asked; the message goes back to the model."""


def run_call(
    tool: Tool,
    call_id: str,
    raw_arguments: str,
    *,
    approve: Approve | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> CallRecord:
    """Parse and check the arguments, ask ``approve`` (if given), then run the function.

    The function is not called when the arguments are not JSON, do not fit the schema, or are declined;
    ``error`` says why, in words the model can act on.  An exception from the function becomes ``error``
    (the function did run).  ``approve`` sees the record (name, parsed arguments) and is asked only about
    calls that would run; whatever it raises (a KeyboardInterrupt at an ``input()``) propagates.
    """
    record = CallRecord(call_id, tool.name, None, raw_arguments)
    try:
        record.arguments = _parse_arguments(raw_arguments)
        arguments = _fit(tool, record.arguments)
    except _Refused as refused:
        record.error = str(refused)
        return record
    if approve is not None and not approve(record):
        record.error = DECLINED
        return record
    started = clock()
    try:
        record.result = _invoke(tool.function, arguments)
    except Exception as exc:  # the tool's failure is news for the model (it can recover), not for the kernel
        record.error = describe_exception(exc)
    finally:  # a KeyboardInterrupt still leaves an honest record behind it
        record.ran = True
        record.duration_s = clock() - started
    return record


def run_requested(
    tools: Sequence[Tool],
    call: ParsedCall,
    *,
    approve: Approve | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> CallRecord:
    """Run a call as it came from the stream: a malformed call or an unknown name is reported, nothing run.

    A call without an id (prompted mode, or a provider that sends none) gets ``call_<index>``.
    """
    call_id = call.id or f"call_{call.index}"
    tool = next((t for t in tools if t.name == call.name), None)
    if call.problem is None and tool is not None:
        return run_call(tool, call_id, call.arguments, approve=approve, clock=clock)
    error = call.problem or f"there is no tool named {call.name!r}; the tools are: {', '.join(t.name for t in tools) or 'none'}"
    return CallRecord(call_id, call.name, _parsed_or_none(call.arguments), call.arguments, error=error)


def _parse_arguments(raw: str) -> dict[str, Any]:
    if not raw.strip():  # Messages sends no input_json_delta at all for a call without arguments
        return {}
    try:
        value = json.loads(raw)
        if isinstance(value, str):  # some models send the arguments object encoded once more, as a JSON string
            value = json.loads(value)
    except ValueError as exc:
        raise _Refused(f"the arguments are not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _Refused(f"the arguments are not valid JSON for a call: expected an object, got {_kind(value)}")
    return value


def _parsed_or_none(raw: str) -> dict[str, Any] | None:
    try:
        return _parse_arguments(raw)
    except _Refused:
        return None


def _fit(tool: Tool, arguments: dict[str, Any]) -> dict[str, Any]:
    errors = schema_errors(arguments, tool.parameters)
    if errors:
        raise _Refused(f"the arguments do not match the parameters of {tool.name}: {'; '.join(errors[:5])}")
    try:
        return tool.decode(arguments)
    except Exception as exc:  # e.g. a dataclass whose __post_init__ refuses the values
        raise _Refused(f"the arguments do not match the parameters of {tool.name}: {describe_exception(exc)}") from None


def _invoke(fn: Callable[..., Any], arguments: Mapping[str, Any]) -> Any:
    """Call with named arguments; positional-only parameters (``def f(x, /)``) are passed by position."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return fn(**arguments)
    only = [p for p in parameters if p.kind is inspect.Parameter.POSITIONAL_ONLY]
    last = max((i for i, p in enumerate(only) if p.name in arguments), default=-1)
    positional = [arguments.get(p.name, p.default) for p in only[: last + 1]]
    named = {key: value for key, value in arguments.items() if key not in {p.name for p in only}}
    return fn(*positional, **named)


def describe_exception(exc: BaseException) -> str:
    """``TypeName: message [file, line N, in function: source]``, short: the last frame outside this module."""
    message = _cap(str(exc), 500)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    if not frames:
        return text
    last = frames[-1]
    source = f": {_cap(last.line.strip(), 120)}" if last.line else ""
    return f"{text} [{Path(last.filename).name}, line {last.lineno}, in {last.name}{source}]"


def describe_call(name: str, raw_arguments: str) -> str:
    """``convert(amount=120, currency='JPY')``: the call as a person reads it in the live view."""
    arguments = _parsed_or_none(raw_arguments)
    inner = ", ".join(f"{key}={value!r}" for key, value in arguments.items()) if arguments is not None else raw_arguments.strip()
    return f"{name}({_cap(inner, 200)})"


# --- results -----------------------------------------------------------------------------------------


def _dataclass_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _ordered(values: Any) -> list[Any]:
    try:  # a set's order changes between runs: sort it so the model (and a replay) sees the same text
        return sorted(values)
    except TypeError:
        return sorted(values, key=repr)


# A result's kind → its JSON form (the first row that matches wins; Enum before str for str-mixin enums).
_RESULT_FORMS: tuple[tuple[Callable[[Any], bool], Callable[[Any], Any]], ...] = (
    (lambda v: isinstance(v, enum.Enum), lambda v: to_json(v.value)),
    (lambda v: isinstance(v, (str, int, float, bool, type(None))), _same),
    (_dataclass_instance, lambda v: {f.name: to_json(getattr(v, f.name)) for f in dataclasses.fields(v)}),
    (lambda v: isinstance(v, PurePath), str),
    (lambda v: isinstance(v, (dt.datetime, dt.date, dt.time)), lambda v: v.isoformat()),
    (lambda v: isinstance(v, dt.timedelta), lambda v: v.total_seconds()),
    (lambda v: isinstance(v, Mapping), lambda v: {_key(k): to_json(x) for k, x in v.items()}),
    (lambda v: isinstance(v, (list, tuple)), lambda v: [to_json(x) for x in v]),
    (lambda v: isinstance(v, (set, frozenset)), lambda v: [to_json(x) for x in _ordered(v)]),
    (lambda v: callable(getattr(v, "tolist", None)), lambda v: to_json(v.tolist())),  # NumPy scalars and arrays, pandas Series
)


def _key(key: Any) -> str:
    return key if isinstance(key, str) else str(to_json(key))


def to_json(value: Any) -> Any:
    """``value`` as JSON values (dataclass → object, Enum → its value, Path → text, date → ISO text, set → sorted list).

    Raises ``TypeError`` for a value with no JSON form.
    """
    form = next((convert for test, convert in _RESULT_FORMS if test(value)), None)
    if form is None:
        raise TypeError(f"{type(value).__name__} has no JSON form")
    return form(value)


def result_text(record: CallRecord) -> str:
    """What goes back to the model: the error text, else the result (text as is, JSON, or its repr), capped."""
    if record.error is not None:
        return record.error
    value = record.result
    if isinstance(value, str):  # JSON-quoting text would only add escapes for the model to read through
        return _cap(value)
    try:
        return _cap(json.dumps(to_json(value), ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return _cap(_repr(value))


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:
        return f"<a {type(value).__name__} whose repr failed: {describe_exception(exc)}>"


def _cap(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit} more characters cut]"


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


# --- prompted mode: Granite's own convention ---------------------------------------------------------
#
# The system text below is the tool block of IBM Granite 4.0's chat template (Apache-2.0; the template in
# ibm-granite/granite-4.0-h-micro's tokenizer config and GGUF), word for word: the model was tuned on
# exactly this, so a provider that ignores `tools` gets the same prompt the native template would build.
# Each tool is OpenAI chat's form as json.dumps writes it (the template's `tool | tojson`).

_TOOLS_PREAMBLE = (
    "You are a helpful assistant with access to the following tools. You may call one or more tools to assist with "
    "the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_INSTRUCTION = (
    "\n</tools>\n\nFor each tool call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>. If a tool does not exist in the provided list of tools, notify the user that you do not have the "
    "ability to fulfill the request."
)
_NAME_IN_TEXT = re.compile(r'"name"\s*:\s*"([^"\\]*)"')


def prompted_system(tools: Sequence[Tool], system: str | None = None) -> str:
    """The system turn for prompted mode: the user's system prompt (if any), a blank line, then the tool block."""
    listing = "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in chat_tools(tools))
    block = _TOOLS_PREAMBLE + listing + _TOOLS_INSTRUCTION
    return f"{system}\n\n{block}" if system else block


def prompted_results(records: Sequence[CallRecord]) -> str:
    """The user-side turn carrying each result, as the template renders consecutive ``tool`` messages."""
    return "".join(f"\n<tool_response>\n{result_text(record)}\n</tool_response>" for record in records)


def prompted_assistant(text: str, calls: Sequence[ParsedCall]) -> str:
    """An assistant turn with its calls, as the template renders ``tool_calls`` (for history and fakes)."""
    blocks = [
        f'<tool_call>\n{{"name": {json.dumps(c.name)}, "arguments": {c.arguments.strip() or "{}"}}}\n</tool_call>' for c in calls
    ]
    return "\n".join([text, *blocks] if text else blocks)


class ToolCallScanner:
    """Hides ``<tool_call>...</tool_call>`` blocks from streamed text and yields each call as it closes.

    ``feed`` returns the text that can be shown now and the calls completed by this delta; a possible
    start of a tag at the end of a delta is held back until the next one says what it is.  ``close``
    flushes: held-back text is shown, an unclosed block is read as a call (a model stopped right before
    ``</tool_call>`` still asked for it).  A block that is not ``{"name": ..., "arguments": {...}}`` (or a
    list of those) becomes a call with ``problem`` set, its text kept in ``arguments``: reported, not lost.
    """

    def __init__(self) -> None:
        self._pending = ""
        self._inside = False
        self._count = 0

    def feed(self, text: str) -> tuple[str, list[ParsedCall]]:
        self._pending += text
        visible: list[str] = []
        calls: list[ParsedCall] = []
        while (at := self._pending.find(CALL_CLOSE if self._inside else CALL_OPEN)) >= 0:
            before = self._pending[:at]
            self._pending = self._pending[at + len(CALL_CLOSE if self._inside else CALL_OPEN) :]
            if self._inside:
                calls += self._read(before)
            else:
                visible.append(before)
            self._inside = not self._inside
        if not self._inside:
            keep = _partial_tag(self._pending, CALL_OPEN)
            visible.append(self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]
        return "".join(visible), calls

    def close(self) -> tuple[str, list[ParsedCall]]:
        pending, inside = self._pending, self._inside
        self._pending, self._inside = "", False
        return ("", self._read(pending)) if inside else (pending, [])

    def _read(self, block: str) -> list[ParsedCall]:
        try:
            value, _ = json.JSONDecoder().raw_decode(block.strip())
        except ValueError as exc:
            return [self._malformed(block, f"the tool call is not valid JSON: {exc}")]
        # a whole call followed by stray characters (a small model's extra "}") is still that call
        items = value if isinstance(value, list) and value else [value]
        return [self._call(item, block) for item in items]

    def _call(self, item: Any, block: str) -> ParsedCall:
        if isinstance(item, dict) and isinstance(item.get("function"), dict):  # OpenAI's nesting, seen in the wild
            item = item["function"]
        if not (isinstance(item, dict) and isinstance(item.get("name"), str)):
            return self._malformed(block, 'the tool call is not of the form {"name": ..., "arguments": {...}}')
        arguments = item.get("arguments", item.get("parameters", {}))
        raw = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        return self._next(item["name"], raw, None)

    def _malformed(self, block: str, problem: str) -> ParsedCall:
        match = _NAME_IN_TEXT.search(block)
        return self._next(match[1] if match else "", block.strip(), problem)

    def _next(self, name: str, arguments: str, problem: str | None) -> ParsedCall:
        self._count += 1
        return ParsedCall(self._count - 1, name, arguments, None, problem)


def _partial_tag(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that could be the start of ``tag``."""
    return next((n for n in range(min(len(text), len(tag) - 1), 0, -1) if text.endswith(tag[:n])), 0)


def as_tools(items: Sequence[Any]) -> list[Tool]:
    """``chat(tools=...)``'s items as tools: a ``Tool``, a function, or a ``(json_schema_definition, function)`` pair."""
    tools: list[Tool] = []
    for item in items:
        if isinstance(item, Tool):
            tools.append(item)
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Mapping) and callable(item[1]):
            tools.append(tool_from_spec(item[0], item[1]))
        elif callable(item):
            tools.append(tool_from_function(item))
        else:
            raise InvalidParameterError(f"tools= takes functions, Tool objects or (definition, function) pairs, not {item!r}")
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise InvalidParameterError(f"tools= names a tool twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return tools
