"""Tools: schemas from signatures and docstrings, each shape's definitions, running calls, prompted mode, streaming."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import itertools
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypedDict

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from granite_magic._docstrings import parse_docstring
from granite_magic._errors import InvalidParameterError
from granite_magic._events import ParsedCall, ToolCallAssembler
from granite_magic._granite_tools import ToolCallScanner, prompted_assistant, prompted_results, prompted_system
from granite_magic._schema import schema_errors
from granite_magic._shapes import chat_tools, messages_tools, responses_tools, tool_choice_for, tools_for
from granite_magic._tools import (
    DECLINED,
    MAX_RESULT_CHARS,
    CallRecord,
    Tool,
    describe_call,
    resolve_tools,
    result_text,
    run_call,
    run_requested,
    tool_from_function,
    tool_from_spec,
)

# --- type hints → JSON Schema -------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Point:
    x: float
    y: float = 0.0
    label: Annotated[str, "what the point marks"] = ""


@dataclasses.dataclass
class Segment:
    start: Point
    end: Point


@dataclasses.dataclass
class Node:
    value: int
    children: list[Node] = dataclasses.field(default_factory=list)


class Titled(TypedDict):
    title: str


class Movie(Titled, total=False):
    year: int


class Opaque:
    """A class with no JSON form."""


POINT = {
    "type": "object",
    "properties": {"x": {"type": "number"}, "y": {"type": "number"}, "label": {"type": "string", "description": "what the point marks"}},
    "required": ["x"],
    "additionalProperties": False,
}

# One row per supported hint: the hint, and the exact schema its parameter gets.
HINT_SCHEMAS: list[tuple[Any, dict[str, Any]]] = [
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (str, {"type": "string"}),
    (bool, {"type": "boolean"}),
    (list, {"type": "array"}),
    (list[int], {"type": "array", "items": {"type": "integer"}}),
    (list[Any], {"type": "array"}),
    (Sequence[str], {"type": "array", "items": {"type": "string"}}),
    (dict, {"type": "object"}),
    (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
    (Mapping[str, list[str]], {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}),
    (tuple, {"type": "array"}),
    (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
    (tuple[int, str], {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2, "maxItems": 2}),
    (Optional[int], {"anyOf": [{"type": "integer"}, {"type": "null"}]}),  # noqa: UP045 - the spelling under test
    (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
    (int | str, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
    (Any | None, {}),
    (Literal["metric", "imperial"], {"type": "string", "enum": ["metric", "imperial"]}),
    (Literal[1, "one"], {"enum": [1, "one"]}),
    (Literal[Color.RED], {"type": "string", "enum": ["red"]}),
    (Color, {"type": "string", "enum": ["red", "blue"]}),
    (Level, {"type": "integer", "enum": [1, 2]}),
    (Point, POINT),
    (Segment, {"type": "object", "properties": {"start": POINT, "end": POINT}, "required": ["start", "end"], "additionalProperties": False}),
    (Movie, {"type": "object", "properties": {"title": {"type": "string"}, "year": {"type": "integer"}}, "required": ["title"], "additionalProperties": False}),
    (Annotated[int, "how many"], {"type": "integer", "description": "how many"}),
    (Annotated[list[Color], "colours", {"unhashable": "metadata"}], {"type": "array", "items": {"type": "string", "enum": ["red", "blue"]}, "description": "colours"}),
    (Path, {"type": "string"}),
    (dt.date, {"type": "string", "format": "date"}),
    (dt.datetime, {"type": "string", "format": "date-time"}),
    (Any, {}),
]


def function_with(hint: Any) -> Callable[..., Any]:
    def probe(x):  # type: ignore[no-untyped-def]
        return x

    probe.__annotations__ = {"x": hint}
    return probe


@pytest.mark.parametrize(("hint", "schema"), HINT_SCHEMAS, ids=[repr(h) for h, _ in HINT_SCHEMAS])
def test_each_supported_hint_has_its_schema(hint: Any, schema: dict[str, Any]) -> None:
    tool = tool_from_function(function_with(hint))
    assert tool.parameters["properties"]["x"] == schema
    assert tool.notes == ()


if sys.version_info >= (3, 11):  # typing.NotRequired
    from typing import NotRequired

    class Film(TypedDict):
        title: str
        year: NotRequired[int]  # a string here (future annotations): __required_keys__ cannot see the mark

    def test_a_not_required_mark_in_a_string_annotation_is_seen() -> None:
        assert tool_from_function(function_with(Film)).parameters["properties"]["x"]["required"] == ["title"]


@pytest.mark.parametrize(
    ("hint", "note"),
    [(Opaque, "Opaque has no JSON Schema"), ("NotDefinedAnywhere", "NotDefinedAnywhere has no JSON Schema"), (Node, "Node refers to itself")],
)
def test_unknown_types_become_anything_with_a_note(hint: Any, note: str) -> None:
    tool = tool_from_function(function_with(hint))
    assert note in " ".join(tool.notes)
    assert tool.notes[0].startswith("probe(x")


def test_a_recursive_dataclass_is_described_down_to_its_recursion() -> None:
    node = tool_from_function(function_with(Node)).parameters["properties"]["x"]
    assert node["properties"]["children"] == {"type": "array"}  # list[Node] inside Node: anything, noted
    assert node["required"] == ["value"]


def test_dict_with_non_string_keys_is_an_object_with_a_note() -> None:
    tool = tool_from_function(function_with(dict[int, str]))
    assert tool.parameters["properties"]["x"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert "keys are strings" in tool.notes[0]


def test_a_parameter_without_a_hint_takes_anything() -> None:
    def anything(x, y=3):  # type: ignore[no-untyped-def]
        return x

    assert tool_from_function(anything).parameters == {
        "type": "object",
        "properties": {"x": {}, "y": {"default": 3}},
        "required": ["x"],
        "additionalProperties": False,
    }


def test_string_annotations_resolve_and_defaults_are_optional() -> None:
    # This module has `from __future__ import annotations`: every hint below is a string until resolved.
    def convert(amount: float, currency: str = "EUR", color: Color = Color.RED, when: dt.date | None = None, where: Opaque | None = None) -> float:
        """Convert an amount of US dollars into another currency."""
        return amount

    tool = tool_from_function(convert)
    assert tool.name == "convert"
    assert tool.description == "Convert an amount of US dollars into another currency."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "amount": {"type": "number"},
            "currency": {"type": "string", "default": "EUR"},
            "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
            "when": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}], "default": None},
            "where": {"default": None},  # Opaque | None: anything, and a note says so
        },
        "required": ["amount"],
        "additionalProperties": False,
    }
    assert tool.notes == ("convert(where): Opaque has no JSON Schema, so the model is told nothing about its form",)


def test_a_default_with_no_json_form_is_left_out_but_still_optional() -> None:
    def f(x: float = math.nan, y: object = Opaque) -> None: ...

    tool = tool_from_function(f)
    assert tool.parameters["properties"] == {"x": {"type": "number"}, "y": {}}
    assert tool.parameters["required"] == []


# --- docstrings ---------------------------------------------------------------------------------------


def google(amount: float, currency: str = "EUR") -> float:
    """Convert dollars
    into another currency.

    Uses today's rates.

    Args:
        amount (float): How many dollars,
            never negative.
        currency: The ISO 4217 code.

    Returns:
        The converted amount.
    """
    return amount


def numpy_style(amount: float, low: int, high: int) -> float:
    """Convert dollars.

    Parameters
    ----------
    amount : float
        How many dollars,
        never negative.
    low, high : int
        The bounds.

    Returns
    -------
    float
    """
    return amount


def sphinx(amount: float, currency: str) -> float:
    """Convert dollars.

    :param float amount: How many dollars,
        never negative.
    :param currency: The ISO code.
    :type currency: str
    :returns: the amount.
    """
    return amount


@pytest.mark.parametrize(
    ("fn", "summary", "described"),
    [
        (google, "Convert dollars into another currency.", {"amount": "How many dollars, never negative.", "currency": "The ISO 4217 code."}),
        (numpy_style, "Convert dollars.", {"amount": "How many dollars, never negative.", "low": "The bounds.", "high": "The bounds."}),
        (sphinx, "Convert dollars.", {"amount": "How many dollars, never negative.", "currency": "The ISO code."}),
    ],
    ids=["google", "numpy", "sphinx"],
)
def test_docstring_styles(fn: Callable[..., Any], summary: str, described: dict[str, str]) -> None:
    tool = tool_from_function(fn)
    assert tool.description == summary
    assert {name: schema.get("description") for name, schema in tool.parameters["properties"].items()} == described


def test_a_docstring_that_starts_with_its_sections_has_no_summary() -> None:
    assert parse_docstring("\n    Args:\n        x: the x.\n    ") == ("", {"x": "the x."})
    assert parse_docstring(":param x: the x.") == ("", {"x": "the x."})
    assert parse_docstring(None) == ("", {})


def test_an_annotated_description_wins_over_the_docstring() -> None:
    def f(x: Annotated[int, "from the hint"]) -> None:
        """Do it.

        Args:
            x: from the docstring.
        """

    assert tool_from_function(f).parameters["properties"]["x"] == {"type": "integer", "description": "from the hint"}


# --- refusals and other ways in -----------------------------------------------------------------------


def test_star_args_and_star_kwargs_are_refused() -> None:
    def spread(*values: int) -> None: ...

    def options(**extra: int) -> None: ...

    with pytest.raises(InvalidParameterError, match=r"spread takes \*values"):
        tool_from_function(spread)
    with pytest.raises(InvalidParameterError, match=r"options takes \*\*extra"):
        tool_from_function(options)


def test_not_a_callable_and_bad_names_are_refused() -> None:
    with pytest.raises(InvalidParameterError, match="not callable"):
        tool_from_function(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="cannot be a tool name"):
        tool_from_function(lambda: None)
    assert tool_from_function(lambda: None, name="noop").name == "noop"


def test_a_partial_keeps_its_function_name_and_docs() -> None:
    tool = tool_from_function(functools.partial(google, currency="JPY"))
    assert (tool.name, tool.description) == ("google", "Convert dollars into another currency.")
    assert tool.parameters["properties"]["currency"]["default"] == "JPY"


def test_resolve_tools_names_functions_in_the_namespace() -> None:
    ready = tool_from_spec({"name": "lookup", "parameters": {"type": "object"}}, print)
    namespace = {"convert": google, "f": lambda x: x, "t": ready}
    tools = resolve_tools(["convert", "f", "t"], namespace)
    assert [t.name for t in tools] == ["convert", "f", "lookup"]  # a lambda is named as the cell names it
    assert [t.name for t in resolve_tools(" convert , f ", namespace)] == ["convert", "f"]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["convert", "nowhere", "rate"], r"^--tools: nowhere is not defined; rate is a float, not a function \(only callables"),
        (["convert", "convert"], "names convert more than once"),
    ],
)
def test_resolve_tools_refuses_before_sending(names: list[str], message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message) as caught:
        resolve_tools(names, {"convert": google, "rate": 1.5})
    assert "\n" not in str(caught.value)


def test_tool_from_spec_accepts_both_forms() -> None:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    bare = {"name": "weather", "description": "The weather now.", "parameters": parameters}
    for spec in (bare, {"type": "function", "function": bare}):
        tool = tool_from_spec(spec, print)
        assert (tool.name, tool.description, tool.parameters, tool.function) == ("weather", "The weather now.", parameters, print)
        assert tool.parameters is not parameters


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"description": "no name"}, "cannot be a tool name"),
        ({"name": "x", "parameters": {"type": "array"}}, "JSON Schema of type object"),
        ({"name": "x", "parameters": {"type": "object", "default": Opaque()}}, "not JSON"),
    ],
)
def test_tool_from_spec_refuses_what_cannot_be_sent(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        tool_from_spec(spec, print)
    with pytest.raises(InvalidParameterError, match="not callable"):
        tool_from_spec({"name": "x"}, "print")  # type: ignore[arg-type]


# --- each API shape -----------------------------------------------------------------------------------

WEATHER = tool_from_spec(
    {"name": "weather", "description": "The weather now.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    lambda city: f"sunny in {city}",
)
SCHEMA = WEATHER.parameters


def test_each_shape_lists_tools_in_its_own_form() -> None:
    assert chat_tools([WEATHER]) == [{"type": "function", "function": {"name": "weather", "description": "The weather now.", "parameters": SCHEMA}}]
    assert responses_tools([WEATHER]) == [{"type": "function", "name": "weather", "description": "The weather now.", "parameters": SCHEMA}]
    assert messages_tools([WEATHER]) == [{"name": "weather", "description": "The weather now.", "input_schema": SCHEMA}]
    assert tools_for("messages", [WEATHER]) == messages_tools([WEATHER])


def test_a_request_body_does_not_alias_the_tool() -> None:
    chat_tools([WEATHER])[0]["function"]["parameters"]["properties"].clear()
    assert WEATHER.parameters["properties"] == {"city": {"type": "string"}}


@pytest.mark.parametrize(
    ("shape", "choice", "wire"),
    [
        ("chat", "auto", "auto"),
        ("chat", "none", "none"),
        ("chat", "required", "required"),
        ("chat", "weather", {"type": "function", "function": {"name": "weather"}}),
        ("responses", "auto", "auto"),
        ("responses", "none", "none"),
        ("responses", "required", "required"),
        ("responses", "weather", {"type": "function", "name": "weather"}),
        ("messages", "auto", {"type": "auto"}),
        ("messages", "none", {"type": "none"}),
        ("messages", "required", {"type": "any"}),
        ("messages", "weather", {"type": "tool", "name": "weather"}),
    ],
)
def test_tool_choice_in_each_shape(shape: Any, choice: str, wire: Any) -> None:
    assert tool_choice_for(shape, choice, [WEATHER]) == wire


def test_tool_choice_refuses_unknown_names_and_shapes() -> None:
    with pytest.raises(InvalidParameterError, match=r"tool_choice 'convert'.*\(weather\)"):
        tool_choice_for("chat", "convert", [WEATHER])
    with pytest.raises(InvalidParameterError, match="auto, none, required"):
        tool_choice_for("chat", "any thing")
    with pytest.raises(InvalidParameterError, match="unknown API shape"):
        tool_choice_for("completions", "auto")  # type: ignore[arg-type]


# --- running calls ------------------------------------------------------------------------------------


class Counted:
    """A tool function that counts its calls, to prove when it did not run."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls: list[dict[str, Any]] = []
        functools.update_wrapper(self, fn)

    def __call__(self, **arguments: Any) -> Any:
        self.calls.append(arguments)
        return self.fn(**arguments)


def divide(a: float, b: float = 1.0) -> float:
    """Divide a by b."""
    return a / b


@pytest.fixture
def counted() -> tuple[Tool, Counted]:
    fn = Counted(divide)
    tool = tool_from_function(divide)
    return dataclasses.replace(tool, function=fn), fn


def ticking() -> Callable[[], float]:
    ticks = iter([10.0, 10.25])
    return lambda: next(ticks)


def test_a_good_call_runs_once(counted: tuple[Tool, Counted]) -> None:
    tool, fn = counted
    record = run_call(tool, "call_1", '{"a": 6, "b": 3}', clock=ticking())
    assert record == CallRecord("call_1", "divide", {"a": 6, "b": 3}, '{"a": 6, "b": 3}', 2.0, None, 0.25, True)
    assert fn.calls == [{"a": 6.0, "b": 3.0}]


@pytest.mark.parametrize(
    ("raw", "arguments", "error"),
    [
        ('{"a": 6, ', None, "the arguments are not valid JSON: Expecting"),
        ("[6, 3]", None, "the arguments are not valid JSON for a call: expected an object, got array"),
        ('{"a": "6"}', {"a": "6"}, 'the arguments do not match the parameters of divide: a: expected number, got string "6"'),
        ('{"b": 2}', {"b": 2}, "a: missing (it is required)"),
        ('{"a": 1, "c": 2}', {"a": 1, "c": 2}, "c: unexpected (expected only a, b)"),
        ('{"a": true}', {"a": True}, "a: expected number, got boolean true"),
    ],
)
def test_bad_arguments_are_reported_and_the_function_is_not_called(
    counted: tuple[Tool, Counted], raw: str, arguments: Any, error: str
) -> None:
    tool, fn = counted
    record = run_call(tool, "c", raw, approve=lambda _: pytest.fail("asked about a call that cannot run"))
    assert (record.arguments, record.ran, record.duration_s) == (arguments, False, 0.0)
    assert record.error is not None and error in record.error
    assert result_text(record) == record.error
    assert fn.calls == []


def test_an_exception_in_the_function_goes_back_as_text(counted: tuple[Tool, Counted]) -> None:
    tool, fn = counted
    record = run_call(tool, "c", '{"a": 1, "b": 0}')
    assert record.ran and len(fn.calls) == 1
    line = divide.__code__.co_firstlineno + 2
    assert record.error == f"ZeroDivisionError: float division by zero [test_tools.py, line {line}, in divide: return a / b]"


def test_an_exception_from_a_builtin_names_no_frame_of_ours() -> None:
    # math.sqrt(x, /) takes x by position only: it still gets it, and its failure points at no frame of ours.
    record = run_call(tool_from_spec({"name": "root", "parameters": {"type": "object"}}, math.sqrt), "c", '{"x": -1}')
    assert (record.ran, record.error) == (True, "ValueError: math domain error")


@pytest.mark.parametrize(("answer", "ran"), [(False, False), (True, True)])
def test_approve_is_asked_before_the_call(counted: tuple[Tool, Counted], answer: bool, ran: bool) -> None:
    tool, fn = counted
    asked: list[CallRecord] = []

    def approve(record: CallRecord) -> bool:
        asked.append(dataclasses.replace(record))
        assert fn.calls == []  # nothing has run yet
        return answer

    record = run_call(tool, "c", '{"a": 4, "b": 2}', approve=approve)
    assert [(r.name, r.arguments) for r in asked] == [("divide", {"a": 4, "b": 2})]
    assert (record.ran, len(fn.calls)) == (ran, int(ran))
    assert (record.error, record.result) == ((None, 2.0) if answer else (DECLINED, None))
    assert result_text(record) == ("2.0" if answer else "the user declined to run this call")


def test_arguments_arrive_as_the_hints_ask() -> None:
    seen: dict[str, Any] = {}

    def plot(color: Color, where: Point, span: tuple[int, int], at: Segment | None = None, level: Literal[Level.LOW] | None = None) -> None:
        seen.update(color=color, where=where, span=span, at=at, level=level)

    arguments = {"color": "blue", "where": {"x": 1}, "span": [1, 2], "at": {"start": {"x": 0}, "end": {"x": 2.5, "y": 1}}, "level": 1}
    record = run_call(tool_from_function(plot), "c", json.dumps(arguments))
    assert record.error is None
    assert seen == {"color": Color.BLUE, "where": Point(1.0), "span": (1, 2), "at": Segment(Point(0.0), Point(2.5, 1.0)), "level": Level.LOW}
    assert record.arguments == arguments  # the record keeps what the model sent


def test_positional_only_parameters_are_passed_by_position() -> None:
    def scale(value: float, factor: float = 2.0, /, *, offset: float = 0.0) -> float:
        return value * factor + offset

    tool = tool_from_function(scale)
    assert run_call(tool, "c", '{"value": 3, "offset": 1}').result == 7.0
    assert run_call(tool, "c", '{"value": 3, "factor": 3}').result == 9.0


def test_no_arguments_may_arrive_as_nothing_at_all() -> None:
    def now() -> str:
        return "noon"

    assert run_call(tool_from_function(now), "c", "").result == "noon"
    assert run_call(tool_from_function(now), "c", '"{}"').result == "noon"  # the object encoded once more


def test_run_requested_reports_unknown_tools_and_malformed_calls(counted: tuple[Tool, Counted]) -> None:
    tool, fn = counted
    unknown = run_requested([tool], ParsedCall(0, "delete_everything", '{"really": true}', "call_x"))
    assert unknown == CallRecord("call_x", "delete_everything", {"really": True}, '{"really": true}',
                                 error="there is no tool named 'delete_everything'; the tools are: divide")
    malformed = run_requested([tool], ParsedCall(3, "divide", '{"name": "divide", "argu', problem="the tool call is not valid JSON"))
    assert (malformed.id, malformed.error, malformed.arguments) == ("call_3", "the tool call is not valid JSON", None)
    assert run_requested([tool], ParsedCall(1, "divide", '{"a": 1}', "call_y")).result == 1.0
    assert fn.calls == [{"a": 1.0}]


def test_describe_call() -> None:
    assert describe_call("convert", '{"amount": 120, "currency": "JPY"}') == "convert(amount=120, currency='JPY')"
    assert describe_call("convert", '{"amount": 12') == 'convert({"amount": 12)'


# --- results ------------------------------------------------------------------------------------------


class NoRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no")


class ArrayLike:
    def tolist(self) -> list[int]:
        return [1, 2]


@pytest.mark.parametrize(
    ("result", "text"),
    [
        ("12.5 JPY", "12.5 JPY"),
        (None, "null"),
        (2.5, "2.5"),
        ({"rate": 1.5, "to": "¥"}, '{"rate": 1.5, "to": "¥"}'),
        ((1, "a"), '[1, "a"]'),
        ({3, 1, 2}, "[1, 2, 3]"),
        (Point(1.0, 2.0, "home"), '{"x": 1.0, "y": 2.0, "label": "home"}'),
        (Color.BLUE, '"blue"'),
        ({Color.RED: Path("/tmp/a")}, '{"red": "/tmp/a"}'),
        (dt.datetime(2025, 10, 2, 9, 30), '"2025-10-02T09:30:00"'),
        (dt.timedelta(minutes=1), "60.0"),
        (ArrayLike(), "[1, 2]"),
        (Opaque, "<class 'tests.test_tools.Opaque'>"),
        ([math.nan], "[nan]"),
    ],
)
def test_result_text(result: Any, text: str) -> None:
    assert result_text(CallRecord("c", "f", {}, "{}", result)) == text


def test_result_text_is_capped_and_survives_a_broken_repr() -> None:
    long = result_text(CallRecord("c", "f", {}, "{}", "x" * (MAX_RESULT_CHARS + 10)))
    assert long == "x" * MAX_RESULT_CHARS + "… [10 more characters cut]"
    assert result_text(CallRecord("c", "f", {}, "{}", NoRepr())).startswith("<a NoRepr whose repr failed: RuntimeError: no")


# --- the validator ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "schema", "errors"),
    [
        (2.0, {"type": "integer"}, []),
        (2.5, {"type": "integer"}, ["the arguments: expected integer, got number 2.5"]),
        (True, {"enum": [1]}, ["the arguments: true is not one of [1]"]),
        (None, {"type": ["string", "null"]}, []),
        ([1, "a", 3], {"type": "array", "items": {"type": "integer"}}, ['[1]: expected integer, got string "a"']),
        ({"a": {"b": 1}}, {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}}}, ["a.b: expected string, got integer 1"]),
        ({"extra": 1}, {"type": "object"}, []),
        (1, {"oneOf": [{"type": "integer"}, {"type": "number"}]}, ["the arguments: 1 fits not exactly one of the allowed forms (it fits more than one)"]),
        ("x", {"allOf": [{"type": "string"}, {"const": "y"}]}, ['the arguments: must be "y"']),
        ([1], {"type": "array", "minItems": 2}, ["the arguments: expected at least 2 items, got 1"]),
        ({"k": 1}, {"type": "object", "additionalProperties": {"type": "string"}}, ["k: expected string, got integer 1"]),
        (1, {"format": "date", "minimum": 5}, []),  # keywords beyond the small set are not checked
    ],
)
def test_schema_errors(value: Any, schema: dict[str, Any], errors: list[str]) -> None:
    assert schema_errors(value, schema) == errors


# --- prompted mode ------------------------------------------------------------------------------------

# The system turn of ibm-granite/granite-4.0-h-* for this tool, from the model card's tool-calling example.
MODEL_CARD_SYSTEM = (
    "You are a helpful assistant with access to the following tools. You may call one or more tools to assist with the user query."
    "\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_current_weather", "description": "Get the current weather for a specified city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "Name of the city"}}, "required": ["city"]}}}'
    "\n</tools>\n\nFor each tool call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:"
    '\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>. If a tool does not exist in the provided '
    "list of tools, notify the user that you do not have the ability to fulfill the request."
)
CARD_TOOL = tool_from_spec(
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather for a specified city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "Name of the city"}}, "required": ["city"]},
        },
    },
    lambda city: "sunny",
)


def test_prompted_system_is_granites_own_tool_block() -> None:
    assert prompted_system([CARD_TOOL]) == MODEL_CARD_SYSTEM
    assert prompted_system([CARD_TOOL], "Be brief.") == "Be brief.\n\n" + MODEL_CARD_SYSTEM


def test_prompted_turns_are_rendered_as_the_template_does() -> None:
    records = [CallRecord("a", "f", {}, "{}", {"t": 20}), CallRecord("b", "f", {}, "{}", error="ValueError: no")]
    assert prompted_results(records) == '\n<tool_response>\n{"t": 20}\n</tool_response>\n<tool_response>\nValueError: no\n</tool_response>'
    calls = [ParsedCall(0, "get_current_weather", '{"city": "Boston"}'), ParsedCall(1, "now", "")]
    assert prompted_assistant("", calls[:1]) == '<tool_call>\n{"name": "get_current_weather", "arguments": {"city": "Boston"}}\n</tool_call>'
    assert prompted_assistant("Let me check.", calls).splitlines()[:2] == ["Let me check.", "<tool_call>"]
    assert prompted_assistant("Let me check.", calls).endswith('</tool_call>\n<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>')


def scan(pieces: Sequence[str]) -> tuple[str, list[ParsedCall]]:
    scanner = ToolCallScanner()
    visible: list[str] = []
    calls: list[ParsedCall] = []
    for piece in [*pieces, None]:
        shown, done = scanner.close() if piece is None else scanner.feed(piece)
        visible.append(shown)
        calls += done
    return "".join(visible), calls


def test_the_scanner_hides_calls_and_keeps_the_text_around_them() -> None:
    reply = 'Checking. <tool_call>\n{"name": "convert", "arguments": {"amount": 120}}\n</tool_call>\n<tool_call>{"name": "now"}</tool_call> Done <'
    visible, calls = scan(list(reply))  # one character at a time
    assert visible == "Checking. \n Done <"  # a lone "<" at the end is text
    assert calls == [ParsedCall(0, "convert", '{"amount": 120}'), ParsedCall(1, "now", "{}")]


@pytest.mark.parametrize(("reply", "visible"), [
    ("The answer is 42.\n<tool_call", "The answer is 42.\n"),  # a call the token limit cut off in its tag
    ("The answer is 42.</tool_call>\n</tool_call>", "The answer is 42.\n"),  # closing a call twice, or one never opened
    ('{"amount": 1}}\n</tool_call> and so on </tool_c', '{"amount": 1}}\n and so on '),
])
def test_the_protocols_fragments_never_show(reply: str, visible: str) -> None:
    assert scan(list(reply)) == scan([reply]) == (visible, [])


def test_the_scanner_shows_text_as_soon_as_it_cannot_be_a_tag() -> None:
    scanner = ToolCallScanner()
    assert scanner.feed("a <tool") == ("a ", [])
    assert scanner.feed("box>") == ("<toolbox>", [])
    assert scanner.feed("<tool_call>{") == ("", [])
    assert scanner.close() == ("", [ParsedCall(0, "", "{", problem="the tool call is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)")])


@pytest.mark.parametrize(
    ("block", "calls"),
    [
        ('{"name": "f", "arguments": {"x": 1}', [ParsedCall(0, "f", '{"name": "f", "arguments": {"x": 1}', problem="the tool call is not valid JSON: Expecting ',' delimiter: line 1 column 36 (char 35)")]),
        ('{"tool": "f"}', [ParsedCall(0, "", '{"tool": "f"}', problem='the tool call is not of the form {"name": ..., "arguments": {...}}')]),
        ('[{"name": "f", "arguments": {}}, {"name": "g", "arguments": "{\\"y\\": 2}"}]', [ParsedCall(0, "f", "{}"), ParsedCall(1, "g", '{"y": 2}')]),
        ('{"type": "function", "function": {"name": "f", "arguments": {"x": "é"}}}', [ParsedCall(0, "f", '{"x": "é"}')]),
    ],
    ids=["unbalanced", "wrong-shape", "a-list", "openai-nesting"],
)
def test_the_scanner_reads_blocks_leniently_and_loses_none(block: str, calls: list[ParsedCall]) -> None:
    assert scan([f"<tool_call>{block}</tool_call>"]) == ("", calls)


def test_an_unclosed_call_is_still_a_call() -> None:
    assert scan(['<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n']) == ("", [ParsedCall(0, "f", '{"x": 1}')])


class Growing:
    """A step's progress as the live view reads it: only its text, grown by the test."""

    text = ""


def test_the_live_view_of_a_forced_prompted_call_shows_none_of_it() -> None:
    """Prompted, a forced call begins the reply: the model writes only the arguments and ``</tool_call>``, then maybe
    an answer.  Read after every character, the live text never shows a piece of the call or of its tags."""
    from granite_magic._params import Sampling
    from granite_magic._shapes import Request
    from granite_magic._toolrun import ToolLoop, ToolPlan
    from granite_magic._tools import tool_from_function

    def convert(amount: float, currency: str) -> float:
        """Convert dollars."""
        return amount

    loop = ToolLoop(ToolPlan((tool_from_function(convert),), "prompted"),
                    Request("m", ({"role": "user", "content": "120 dollars in yen?"},), Sampling({"tool_choice": "convert"})))
    assert loop.request.messages[-1]["content"].endswith('"arguments": ')  # the reply is begun with the call
    step = Growing()
    live = loop.visible(step)  # type: ignore[arg-type]
    reply = '{"amount": 120, "currency": "yen"}}\n</tool_call>\nLet me check.</tool_call>'
    for i in range(1, len(reply) + 1):
        step.text = reply[:i]
        assert "{" not in live.text and "<" not in live.text and live.text in ("", "\n", "\nLet me check."[: len(live.text)])
    assert live.text == "\nLet me check."


# Text made of pieces that look like parts of tags, so splits fall inside and around near-misses.
TEXT = st.lists(st.sampled_from([*"ab <>/_\n", "<tool", "<tool_call", "</tool_call>", "_call>"]), max_size=8).map("".join)
ARGUMENTS = st.dictionaries(st.sampled_from(["x", "y", "city"]), st.one_of(st.integers(-5, 5), st.text(alphabet="a<>é ", max_size=4)), max_size=3)


def cuts(text_size: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, text_size), max_size=20).map(sorted)


def split_at(text: str, points: Sequence[int]) -> list[str]:
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def replies(draw: st.DrawFn) -> tuple[str, str, list[ParsedCall]]:
    """A reply mixing text and calls, with the visible text and the calls it should give."""
    stream: list[str] = []
    visible: list[str] = []
    calls: list[ParsedCall] = []
    for _ in range(draw(st.integers(0, 4))):
        text = draw(TEXT)
        name, arguments = draw(st.sampled_from(["convert", "now"])), draw(ARGUMENTS)
        raw = json.dumps(arguments, ensure_ascii=False)
        stream += [text, f'<tool_call>\n{{"name": "{name}", "arguments": {raw}}}\n</tool_call>']
        visible.append(text.replace("</tool_call>", ""))  # a closing tag outside a call is dropped
        calls.append(ParsedCall(len(calls), name, raw))
    tail = draw(TEXT)
    stream.append(tail)
    *before, last = tail.split("</tool_call>")
    cut = max((n for tag in ("<tool_call>", "</tool_call>") for n in range(2, len(tag)) if last.endswith(tag[:n])), default=0)
    visible.append("".join(before) + last[: len(last) - cut])  # and so is a tag the reply ends in the middle of
    shown = "".join(visible)
    return "".join(stream), shown, calls


@settings(max_examples=300, deadline=None)
@given(reply=replies(), data=st.data())
def test_the_scanner_gives_the_same_answer_under_any_split(reply: tuple[str, str, list[ParsedCall]], data: st.DataObject) -> None:
    stream, visible, calls = reply
    assume("<tool_call>" not in visible)  # text that spells an opening tag starts a call by the convention
    pieces = split_at(stream, data.draw(cuts(len(stream))))
    assert scan(pieces) == scan([stream]) == (visible, calls)


# --- native deltas ------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(arguments=st.lists(ARGUMENTS, min_size=1, max_size=3), data=st.data())
def test_the_assembler_is_split_invariant(arguments: list[dict[str, Any]], data: st.DataObject) -> None:
    raws = [json.dumps(a, ensure_ascii=False) for a in arguments]
    deltas: list[tuple[int, str | None, str | None, str | None]] = []
    for index, raw in enumerate(raws):
        pieces = split_at(raw, data.draw(cuts(len(raw))))
        # The first delta carries the id and the name (some providers repeat the name on every chunk).
        repeat = data.draw(st.booleans())
        deltas += [(index, f"call_{index}" if i == 0 else None, "convert" if i == 0 or repeat else None, piece or None) for i, piece in enumerate(pieces)]
    # Parallel calls may interleave; each call's own fragments keep their order.
    queues = {i: [d for d in deltas if d[0] == i] for i in range(len(raws))}
    assembler = ToolCallAssembler()
    for index in data.draw(st.permutations([d[0] for d in deltas])):
        assembler.add(*queues[index].pop(0))
    assert assembler.calls() == [ParsedCall(i, "convert", raw, f"call_{i}") for i, raw in enumerate(raws)]
    assert [json.loads(c.arguments) for c in assembler.calls()] == arguments


def test_the_assembler_orders_calls_by_index() -> None:
    assembler = ToolCallAssembler()
    assembler.add(2, "b", "second", '{"y"')
    assembler.add(1, "a", "first", None)
    assembler.add(2, None, None, ": 2}")
    assert assembler.calls() == [ParsedCall(1, "first", "", "a"), ParsedCall(2, "second", '{"y": 2}', "b")]
    assert len(assembler) == 2
