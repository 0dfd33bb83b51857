"""Tools: the notebook's own functions offered to the model, and the calls the model makes to them.

Everything here is pure (no I/O, no IPython, no HTTP), so the tool loop, the three API shapes, the fake
server and the magic all share one description of a tool and one way to run a call:

* **describing** a tool: ``tool_from_function`` (JSON Schema from the signature and type hints, through
  ``_schema``, and descriptions from the docstring, through ``_docstrings``), ``tool_from_spec`` (a ready
  JSON-Schema definition with a callable), ``resolve_tools`` (the magic's ``--tools NAME[,NAME]``,
  refused before anything is sent) and ``as_tools`` (``chat(tools=...)``'s items);
* **running** a call: ``run_call`` / ``run_requested`` → ``CallRecord`` (arguments parsed and checked
  against the schema before the function runs, an optional approval, the function's own failure
  kept as text), and ``result_text`` (what goes back to the model).

Elsewhere: each API shape's spelling of the tools (``chat_tools``, ``tools_for``, ``tool_choice_for``) is
in ``_shapes``; streamed tool-call deltas become ``ParsedCall``s in ``_events`` (``ToolCallAssembler``);
Granite's prompted ``<tool_call>`` convention is ``_granite_tools``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._docstrings import parse_docstring
from ._errors import InvalidParameterError
from ._events import ParsedCall
from ._schema import Codec, JsonSchema, SchemaBuilder, clip, json_kind, object_schema, schema_errors, type_hints
from ._values import loads, to_json, value_text

__all__ = [
    "DECLINED",
    "MAX_RESULT_CHARS",
    "TOOL_NAME",
    "Approve",
    "CallRecord",
    "Tool",
    "as_tools",
    "calls_summary",
    "describe_call",
    "describe_exception",
    "resolve_tools",
    "result_text",
    "run_call",
    "run_requested",
    "to_json",
    "tool_from_function",
    "tool_from_spec",
]

Approve = Callable[["CallRecord"], bool]

DECLINED = "the user declined to run this call"
MAX_RESULT_CHARS = 6_000  # a tool returning a whole table would otherwise flood the context (and the bill)

# OpenAI's and Anthropic's rule for tool names (both ^[a-zA-Z0-9_-]{1,64}$).
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# --- the tool ----------------------------------------------------------------------------------------


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
    hints = type_hints(target)
    builder = SchemaBuilder()
    codecs = {p.name: builder.codec(hints.get(p.name, Any), f"{name}({p.name})") for p in parameters}
    properties = {p.name: _parameter_schema(codecs[p.name], documented.get(p.name), p.default) for p in parameters}
    required = [p.name for p in parameters if p.default is inspect.Parameter.empty]

    def decode(arguments: dict[str, Any]) -> dict[str, Any]:
        return {key: codecs[key].decode(value) if key in codecs else value for key, value in arguments.items()}

    return Tool(name, summary, object_schema(properties, required), fn, tuple(builder.notes), decode)


def _checked_name(name: str, fn: Any) -> str:
    if not TOOL_NAME.match(name):
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


def _parameter_schema(codec: Codec, description: str | None, default: Any) -> JsonSchema:
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
        value = loads(raw)  # nesting bounded: 100,000 levels deep is malformed, not a RecursionError
        if isinstance(value, str):  # some models send the arguments object encoded once more, as a JSON string
            value = loads(value)
    except ValueError as exc:
        raise _Refused(f"the arguments are not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _Refused(f"the arguments are not valid JSON for a call: expected an object, got {json_kind(value)}")
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


# This module's frames and the schema's decoders (they build a dataclass from its arguments) are not the tool's.
_OWN_FILES = frozenset({__file__, inspect.getfile(SchemaBuilder)})


def describe_exception(exc: BaseException) -> str:
    """``TypeName: message [file, line N, in function: source]``, short: the last frame outside this module."""
    message = _cap(str(exc), 500)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename not in _OWN_FILES]
    if not frames:
        return text
    last = frames[-1]
    source = f": {_cap(last.line.strip(), 120)}" if last.line else ""
    return f"{text} [{Path(last.filename).name}, line {last.lineno}, in {last.name}{source}]"


def calls_summary(calls: Sequence[CallRecord] | Sequence[Any]) -> str:
    """``412 more calls: 400 to nope not run (there is no tool named 'nope'; …), 12 to convert ran``.

    Calls (``CallRecord`` or ``ToolCall``) counted by name and outcome, each kind once with the first reason
    it did not run or failed; at most five kinds are named.  For a model that asks for hundreds of calls."""
    kinds: dict[tuple[str, str], list[Any]] = {}
    for call in calls:
        outcome = ("failed" if call.error else "ran") if call.ran else "not run"
        kinds.setdefault((call.name, outcome), []).append(call)
    named = [f"{len(group)} to {name or '(no name)'} {outcome}" + (f" ({_one_line(group[0].error)})" if group[0].error else "")
             for (name, outcome), group in list(kinds.items())[:5]]
    others = f", and {len(kinds) - 5} other kinds" if len(kinds) > 5 else ""
    return f"{len(calls)} more call{'s' if len(calls) != 1 else ''}: {', '.join(named)}{others}"


def _one_line(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_call(name: str, raw_arguments: str) -> str:
    """``convert(amount=120, currency='JPY')``: the call as a person reads it in the live view."""
    arguments = _parsed_or_none(raw_arguments)
    inner = ", ".join(f"{key}={value!r}" for key, value in arguments.items()) if arguments is not None else raw_arguments.strip()
    return f"{_cap(name, 100)}({_cap(inner, 200)})"


# --- results -----------------------------------------------------------------------------------------


def result_text(record: CallRecord) -> str:
    """What goes back to the model: the error text, else the result (text as is, JSON, or a safe repr), capped."""
    if record.error is not None:
        return record.error
    return value_text(record.result, MAX_RESULT_CHARS)


def _cap(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    return clip(text, limit)
