"""Tools on a base model: in the plain framing the tools are described and a worked call of each is shown before the
question (arguments made from the schema), then the calls are read as in prompted mode."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import inspect
import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from IPython.core.interactiveshell import InteractiveShell

from granite_magic._client import BaseClient, GraniteClient
from granite_magic._events import ParsedCall
from granite_magic._granite_tools import (
    CALL_CLOSE,
    PLAIN,
    ToolCallScanner,
    example_arguments,
    plain_tools_system,
    prompted_system,
    worked_examples,
)
from granite_magic._schema import schema_errors
from granite_magic._shapes import Request
from granite_magic._toolrun import ToolLoop, plan_tools
from granite_magic._tools import Tool, run_requested, tool_from_function, tool_from_spec

from .conftest import magics_of, run, shown

RATES = {"EUR": 0.92, "JPY": 150.3, "GBP": 0.79}
CALLS: list[tuple[str, dict[str, Any]]] = []


# Notebook 06's three tools, as the notebook writes them (their parameters and docstrings are all the model sees).

def convert(amount: float, currency: str) -> float:
    """Convert an amount of US dollars into another currency.

    Args:
        amount: how many US dollars.
        currency: the ISO code to convert into: EUR, JPY or GBP.
    """
    CALLS.append(("convert", {"amount": amount, "currency": currency}))
    return round(amount * RATES[currency.upper()], 2)


def square(n: int) -> int:
    """The square of a whole number."""
    return n * n


def lookup(station: str) -> dict[str, Any]:
    """The yearly rainfall (mm) and elevation (m) of a weather station.

    Args:
        station: the station's city name, e.g. Oslo.
    """
    return {"station": station, "rain_mm": 2250}


NOTEBOOK = tuple(tool_from_function(f) for f in (convert, square, lookup))
CONVERT_PROMPT = "How much is 120 dollars in yen (JPY)?"

# What the stand-in reads before the question for `--tools convert`: pinned, since its wording was measured.
CONVERT_SYSTEM = """\
You can call these tools:
convert: Convert an amount of US dollars into another currency.
  amount (number): how many US dollars.
  currency (string): the ISO code to convert into: EUR, JPY or GBP.

To call a tool, answer with a <tool_call> block: the tool's name and its arguments as JSON, as in these examples.

Question: Convert an amount of US dollars into another currency, for amount 2.5 and currency EUR?
Answer: <tool_call>
{"name": "convert", "arguments": {"amount": 2.5, "currency": "EUR"}}
</tool_call>"""


def test_the_notebooks_convert_tool_is_described_and_shown_once() -> None:
    assert plain_tools_system(NOTEBOOK[:1]) == CONVERT_SYSTEM
    assert plain_tools_system(NOTEBOOK[:1], "Be brief.") == "Be brief.\n\n" + CONVERT_SYSTEM


def called(example: str) -> list[ParsedCall]:
    scanner = ToolCallScanner()
    _, calls = scanner.feed(example)
    return calls + scanner.close()[1]


def test_each_tool_gets_one_worked_call_that_the_scanner_reads_and_that_runs() -> None:
    examples = worked_examples(NOTEBOOK)
    assert len(examples) == len(NOTEBOOK)
    system = plain_tools_system(NOTEBOOK)
    for tool, example in zip(NOTEBOOK, examples, strict=True):
        assert example.startswith("Question: ") and "\nAnswer: <tool_call>\n" in example and example.endswith(CALL_CLOSE)
        assert system.count(example) == 1 and system.count(f'"name": "{tool.name}"') == 1
        (call,) = called(example)
        assert call.name == tool.name and call.problem is None and json.loads(call.arguments) == example_arguments(tool)
        assert schema_errors(example_arguments(tool), tool.parameters) == []
        record = run_requested(NOTEBOOK, call)
        assert record.ran and record.error is None  # a call the model copies as it is would run
    assert [example_arguments(t) for t in NOTEBOOK] == [{"amount": 2.5, "currency": "EUR"}, {"n": 3}, {"station": "Oslo"}]


def test_the_examples_are_the_turns_the_plain_framing_continues() -> None:
    """Rendered as the local backend renders a base model's prompt, the examples are earlier questions and answers of
    the same text: the real question follows them, and the reply stops at the call's end."""
    from granite_magic._local.template import ANSWER, QUESTION, PlainFraming

    messages = [{"role": "system", "content": plain_tools_system(NOTEBOOK[:1])}, {"role": "user", "content": CONVERT_PROMPT}]
    response = PlainFraming()._format(messages, None, None)
    assert response.prompt == f"{CONVERT_SYSTEM}\n\n{QUESTION} {CONVERT_PROMPT}\n{ANSWER}"
    assert CALL_CLOSE in response.stop and "\nQuestion:" in response.stop


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Point:
    x: float
    y: float = 0.0
    label: Annotated[str, "what the point marks"] = ""


@dataclasses.dataclass
class Node:
    value: int
    children: list[Node] = dataclasses.field(default_factory=list)


class Movie(TypedDict, total=False):
    title: str
    year: int


def test_examples_take_the_first_choice_the_descriptions_example_or_a_value_from_the_name() -> None:
    def forecast(city: str, unit: Unit, days: int, mode: Literal["brief", "full"], when: dt.date, code: str,
                 station: str, wind: bool = False) -> str:
        """The weather forecast.

        Args:
            code: the region's code, for example NO-03.
            station: one of "Blindern" or "Flesland".
        """
        return ""

    tool = tool_from_function(forecast)
    arguments = example_arguments(tool)
    assert arguments == {"city": "Paris", "unit": "celsius", "days": 3, "mode": "brief", "when": "2024-05-17", "code": "NO-03",
                         "station": "Blindern"}  # required ones only: `wind` may be left out
    assert "  unit (string, one of \"celsius\", \"fahrenheit\")" in plain_tools_system([tool])
    assert "  wind (boolean, optional)" in plain_tools_system([tool])
    assert run_requested([tool], ParsedCall(0, tool.name, json.dumps(arguments))).error is None


def spec_tool(parameters: dict[str, Any], name: str = "f") -> Tool:
    return tool_from_spec({"type": "function", "function": {"name": name, "description": "A tool.", "parameters": parameters}},
                          lambda **kwargs: None)


@pytest.mark.parametrize(("parameters", "arguments"), [
    ({"type": "object", "properties": {"city": {"type": "string"}, "n": {"type": "integer"}}}, {"city": "Paris", "n": 3}),  # none required: all
    ({"type": "object", "properties": {}}, {}),
    ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 10, "maximum": 20}}, "required": ["n"]}, {"n": 10}),
    ({"type": "object", "properties": {"x": {"anyOf": [{"type": "null"}, {"type": "number"}]}}, "required": ["x"]}, {"x": 2.5}),
    ({"type": "object", "properties": {"x": {"oneOf": [{"type": "integer"}, {"type": "number"}]}}, "required": ["x"]}, {"x": 2.5}),
    ({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 2}}, "required": ["tags"]},
     {"tags": ["Tags", "Tags"]}),
    ({"type": "object", "properties": {"p": {"type": "object", "properties": {"lat": {"type": "number"}, "tz": {"const": "UTC"}},
                                             "required": ["lat", "tz"]}}, "required": ["p"]}, {"p": {"lat": 2.5, "tz": "UTC"}}),
    ({"type": "object", "properties": {"level": {"enum": [1, 2]}, "on": {"type": ["boolean", "null"]}}, "required": ["level", "on"]},
     {"level": 1, "on": True}),
], ids=["none-required", "no-parameters", "bounds", "nullable", "one-of", "min-items", "nested", "enum-and-type-list"])
def test_a_ready_definitions_example_fits_its_schema(parameters: dict[str, Any], arguments: dict[str, Any]) -> None:
    tool = spec_tool(parameters)
    assert example_arguments(tool) == arguments and schema_errors(arguments, tool.parameters) == []
    (call,) = called(worked_examples([tool])[0])
    assert json.loads(call.arguments) == arguments


LEAVES = st.sampled_from([int, float, str, bool, Unit, Level, Literal["low", "high"], Literal[1, 2], dt.date, dt.datetime, Path,
                          Point, Node, Movie, Any])
HINTS = st.recursive(LEAVES, lambda inner: st.one_of(
    inner.map(lambda h: list[h]),  # type: ignore[valid-type]
    inner.map(lambda h: h | None),
    inner.map(lambda h: dict[str, h]),  # type: ignore[valid-type]
    inner.map(lambda h: tuple[h, ...]),  # type: ignore[valid-type]
    st.tuples(inner, inner).map(lambda p: tuple[p[0], p[1]]),  # type: ignore[valid-type]
), max_leaves=4)


@settings(max_examples=200, deadline=None)
@given(hints=st.lists(HINTS, min_size=1, max_size=3))
def test_any_functions_example_fits_its_schema_and_runs(hints: list[Any]) -> None:
    """Whatever the parameters' types, the worked call fits the schema and the function runs on it (its arguments
    decoded into the Python values the hints ask for)."""
    names = [f"p{i}" for i in range(len(hints))]
    seen: list[dict[str, Any]] = []

    def f(**kwargs: Any) -> None:
        seen.append(kwargs)

    # a function of named parameters with these hints, as if written by hand
    f.__signature__ = inspect.Signature([inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in names])  # type: ignore[attr-defined]
    f.__annotations__ = dict(zip(names, hints, strict=True))
    tool = tool_from_function(f)
    arguments = example_arguments(tool)
    assert schema_errors(arguments, tool.parameters) == [] and set(arguments) == set(names)
    (call,) = called(worked_examples([tool])[0])
    record = run_requested([tool], call)
    assert record.ran and record.error is None and seen == [tool.decode(arguments)]


# --- the plan: a base model is shown the examples, a chat model Granite's own block -------------------------------


def first_request(client: BaseClient, tool_choice: str | None = None, system: str | None = None) -> Request:
    choice: dict[str, Any] = {"tool_choice": tool_choice} if tool_choice else {}
    request = client.request(CONVERT_PROMPT, system=system, **choice)
    plan = client.loop.run(plan_tools(client, request.model, NOTEBOOK[:1], "prompted"))
    return ToolLoop(plan, request).request


def test_a_plain_framing_client_is_shown_the_examples_and_a_template_client_granites_block(client: GraniteClient) -> None:
    from granite_magic._local import LocalClient

    base = LocalClient("gemma-3-270m-q4_k_m.gguf", template="plain")  # known to be plain without loading anything
    try:
        assert base.framing == PLAIN and client.framing == "template"  # an HTTP backend's: BaseClient's
        plain, chat = first_request(base), first_request(client)
        assert plain.messages[0] == {"role": "system", "content": plain_tools_system(NOTEBOOK[:1])}
        assert chat.messages[0] == {"role": "system", "content": prompted_system(NOTEBOOK[:1])}
        assert "Question:" not in chat.messages[0]["content"] and "<tools>" not in plain.messages[0]["content"]
        # the user's own system prompt comes first, the tools and their examples right before the question
        assert first_request(base, system="Be brief.").messages[0]["content"] == "Be brief.\n\n" + plain_tools_system(NOTEBOOK[:1])
        # a forced call is begun for the model; for a base model up to the colon, so that it writes ` {"` as in the examples
        assert first_request(base, "convert").messages[-1]["content"] == '<tool_call>\n{"name": "convert", "arguments":'
        assert first_request(client, "convert").messages[-1]["content"] == '<tool_call>\n{"name": "convert", "arguments": '
    finally:
        base.close()


# --- the stand-in, a real base model ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("tool_choice", ["convert", "auto"])
def test_the_stand_in_calls_the_tool_with_the_questions_values(local: Any, tool_choice: str) -> None:
    """Notebook 06's cell on the stand-in (a GGUF without a chat template): forced as in the notebook, or left to the
    model, which then writes the whole ``<tool_call>`` block itself.  The function runs on the question's values."""
    assert local.framing == PLAIN
    CALLS.clear()
    result = local.chat(CONVERT_PROMPT, tools=[convert], tool_choice=tool_choice, temperature=0, max_tokens=80, max_steps=2)
    first = result.tool_calls[0]
    assert first.name == "convert" and first.ran and first.error is None and first.result == 18036.0
    assert schema_errors(first.arguments, NOTEBOOK[0].parameters) == []
    assert CALLS[0] == ("convert", {"amount": 120, "currency": "JPY"})


@pytest.mark.slow
def test_a_dry_run_shows_the_worked_call_the_base_model_reads(ip: InteractiveShell, model_path: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANITE_LOCAL_MODEL", model_path)
    magics_of(ip).session.clients.clear()
    ip.user_ns["convert"] = convert
    out = shown(run(ip, "--backend local --tools convert --tool-choice convert --dry-run", CONVERT_PROMPT))
    assert CONVERT_SYSTEM in out and f"Question: {CONVERT_PROMPT}\nAnswer:<tool_call>" in out


def test_a_replay_without_the_model_file_frames_prompts_as_the_recordings_were(tmp_path: Path) -> None:
    """A classroom replays a teacher's recordings without the GGUF: the framing it was prompted in is remembered with its
    fingerprint, so a base model's tool turn builds the same example-taught request, and so the same cache key."""
    from granite_magic._cache import RunCache
    from granite_magic._cache_use import local_fingerprint, remembered_framing
    from granite_magic._local import LocalClient

    cache = RunCache(tmp_path / "cache")
    model = tmp_path / "base.gguf"
    model.write_bytes(b"GGUF" + bytes(64))
    fingerprint = local_fingerprint("base.gguf", model, cache, framing="plain")
    assert remembered_framing("base.gguf", cache) == "plain"
    assert local_fingerprint("base.gguf", None, cache) == fingerprint  # the file gone: both still known
    absent = LocalClient(str(tmp_path / "elsewhere" / "base.gguf"), remembered=lambda name: remembered_framing(name, cache))
    try:
        assert absent.framing == "plain"
    finally:
        absent.close()
    # models.json as first written (a bare fingerprint per name) is still read; its framing is unknown
    (cache.directory / "models.json").write_text('{"old.gguf": "1:abc"}')
    assert local_fingerprint("old.gguf", None, cache) == "1:abc" and remembered_framing("old.gguf", cache) is None
