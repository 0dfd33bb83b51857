"""Prompted tools: Granite's own ``<tool_call>`` convention, for providers that ignore ``tools``.

The tools are described in the system message, the model writes its calls as ``<tool_call>`` blocks
in its text, and the results go back as a user turn of ``<tool_response>`` blocks:

* ``prompted_system``: the system turn with the tool block;
* ``ToolCallScanner``: hides ``<tool_call>`` blocks from streamed text and reads each as a ``ParsedCall``;
* ``prompted_results`` and ``prompted_assistant``: the turns that carry results and calls in history.

A base model (prompted in the plain framing, ``Question:`` / ``Answer:`` text) never learnt that convention:
``plain_tools_system`` describes the tools briefly and shows one worked call of each (``worked_examples``, its
arguments made from the schema) as earlier questions and answers of the same text, so that the model continues the
pattern; its calls are read by the same scanner.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ._events import ParsedCall
from ._schema import schema_errors
from ._shapes import chat_tools
from ._tools import CallRecord, Tool, result_text
from ._values import raw_decode

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "PLAIN",
    "ToolCallScanner",
    "describe_tool",
    "example_arguments",
    "plain_tools_system",
    "prompted_assistant",
    "prompted_results",
    "prompted_system",
    "worked_examples",
]

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"

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


# --- a base model: the tools taught by worked examples ---------------------------------------------------------

PLAIN = "plain"  # a client's ``framing`` when it prompts a base model as Question:/Answer: text (``BaseClient.framing``)

# The plain framing's turn markers: the examples are earlier turns of the same text the real question continues
# (the local backend's ``PlainFraming`` writes the question as "Question: ...\nAnswer:" after the system text).
_QUESTION, _ANSWER = "Question:", "Answer:"
_PLAIN_INTRO = "You can call these tools:"
_PLAIN_INSTRUCTION = ("To call a tool, answer with a <tool_call> block: the tool's name and its arguments as JSON, as in "
                      "these examples.")
_NUMBERS = {"integer": 3, "number": 2.5}
_DEPTH = 32  # a guard, far past any real schema: a definition that contains itself must not recurse for ever
_DATES = {"date": "2024-05-17", "date-time": "2024-05-17T09:30:00", "time": "09:30:00", "email": "ada@example.com",
          "uri": "https://example.com"}
# Words of a description that give an example value: "e.g. Oslo", a quoted value, a choice "into: EUR, JPY or GBP".
_WORD = r"\w[\w/+-]*(?:\.\w+)*"
_GIVEN_EXAMPLE = re.compile(rf"(?:\be\.g\.|\bfor example|\bsuch as)[,:]?\s+[\"`]?({_WORD}(?: [A-Z]\w*)*)")
_QUOTED = re.compile(r'["`]([^"`\n]{1,40})["`]')
_CHOICES = re.compile(rf":\s*({_WORD})(?:\s*,\s*{_WORD})*,?\s+or\s+\w")
# A value for a string parameter known by its name alone, when its description gives none.
_NAMED = {"city": "Paris", "location": "Paris", "place": "Paris", "country": "France", "name": "Ada", "query": "weather",
          "language": "English", "url": "https://example.com", "email": "ada@example.com", "path": "notes.txt",
          "file": "notes.txt", "filename": "notes.txt", "text": "hello"}


def plain_tools_system(tools: Sequence[Tool], system: str | None = None) -> str:
    """The system text of prompted tools for a base model: the user's system prompt (if any), each tool in a few
    lines, then one worked example of a call to each, written as the question-and-answer turns that follow."""
    described = "\n".join(describe_tool(tool) for tool in tools)
    block = "\n\n".join([f"{_PLAIN_INTRO}\n{described}", _PLAIN_INSTRUCTION, *worked_examples(tools)])
    return f"{system}\n\n{block}" if system else block


def describe_tool(tool: Tool) -> str:
    """``name: description`` and a line per parameter (its type, choices, whether it may be left out)."""
    properties = _properties(tool.parameters)
    required = set(tool.parameters.get("required") or ())
    lines = [f"{tool.name}: {_one_line(tool.description) or 'no description'}"]
    for name, schema in properties.items():
        kind = _kind_words(schema) + ("" if name in required else ", optional")
        about = _one_line(schema.get("description", "")) if isinstance(schema, Mapping) else ""
        lines.append(f"  {name} ({kind})" + (f": {about}" if about else ""))
    return "\n".join(lines)


def worked_examples(tools: Sequence[Tool]) -> tuple[str, ...]:
    """One worked call per tool: a question it answers and the ``<tool_call>`` block of the answer, as turns of the
    plain framing.  Pure and deterministic: the same tools always give the same text (a cached reply stays valid)."""
    return tuple(_worked_example(tool) for tool in tools)


def _worked_example(tool: Tool) -> str:
    arguments = example_arguments(tool)
    call = ParsedCall(0, tool.name, json.dumps(arguments, ensure_ascii=False))
    return f"{_QUESTION} {_example_question(tool, arguments)}\n{_ANSWER} {prompted_assistant('', [call])}"


def _example_question(tool: Tool, arguments: Mapping[str, Any]) -> str:
    """What the example asks: the tool's description (its first sentence) and the values of its arguments in words."""
    subject = re.split(r"(?<=[.!?])\s", _one_line(tool.description), maxsplit=1)[0].rstrip(".!?") or tool.name
    values = [f"{name.replace('_', ' ')} {_words(value)}" for name, value in arguments.items()]
    given = ", ".join(values[:-1]) + (" and " if len(values) > 1 else "") + (values[-1] if values else "")
    return f"{subject}, for {given}?" if given else f"{subject}?"


def example_arguments(tool: Tool) -> dict[str, Any]:
    """Arguments that fit ``tool``'s schema, for its worked example: the required parameters (all of them when none
    is marked required), each from its schema: the first of an ``enum``, a value its description gives, 3 or 2.5 for
    numbers, a word made from the parameter's name for text."""
    return _example_object(tool.parameters, 0)


def _example_object(schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
    properties = _properties(schema)
    required = [name for name in schema.get("required") or () if name in properties]
    return {name: _example_value(properties[name], name, depth + 1) for name in required or properties}


def _example_value(schema: Any, name: str, depth: int) -> Any:
    if not isinstance(schema, Mapping) or depth > _DEPTH:
        return _example_text(name, {})
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]  # the first choice: a value the schema names is always right
    branches = [b for key in ("anyOf", "oneOf", "allOf") for b in schema.get(key) or () if isinstance(b, Mapping)]
    if branches and "type" not in schema:
        # a branch that is not null, and whose value fits the whole schema (a oneOf may take it twice)
        values = [_example_value(b, name, depth) for b in branches if b.get("type") != "null"]
        return next((v for v in values if not schema_errors(v, schema)), values[0] if values else None)
    return _typed_example(schema, _first_type(schema), name, depth)


def _typed_example(schema: Mapping[str, Any], kind: str, name: str, depth: int) -> Any:
    if kind in _NUMBERS:
        return _within(_NUMBERS[kind], schema)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        return _example_array(schema, name, depth)
    if kind == "object":
        return _example_object(schema, depth)
    return _example_text(name, schema)


def _example_array(schema: Mapping[str, Any], name: str, depth: int) -> list[Any]:
    prefix = [item for item in schema.get("prefixItems") or () if isinstance(item, Mapping)]
    if prefix:
        return [_example_value(item, name, depth + 1) for item in prefix]
    wanted = max(1, _size(schema, "minItems", 0))  # one item shows what an item is
    wanted = min(wanted, _size(schema, "maxItems", wanted))
    return [_example_value(schema.get("items", {}), name, depth + 1) for _ in range(wanted)]


def _example_text(name: str, schema: Mapping[str, Any]) -> str:
    """A string for a parameter: one of its format, one its description gives, or one its name suggests."""
    if schema.get("format") in _DATES:
        return _DATES[schema["format"]]
    about = str(schema.get("description") or "")
    for pattern in (_GIVEN_EXAMPLE, _QUOTED, _CHOICES):
        if found := pattern.search(about):
            return found[1]
    words = name.replace("_", " ").strip()
    return _NAMED.get(name.lower(), words.title() or "text")


def _within(value: int | float, schema: Mapping[str, Any]) -> int | float:
    """``value`` moved into the schema's ``minimum``/``maximum`` when it lies outside."""
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(low, (int, float)) and value < low:
        value = low
    if isinstance(high, (int, float)) and value > high:
        value = high
    return value


def _size(schema: Mapping[str, Any], key: str, default: int) -> int:
    value = schema.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _properties(schema: Mapping[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties")
    return dict(properties) if isinstance(properties, Mapping) else {}


def _first_type(schema: Mapping[str, Any]) -> str:
    """The schema's type (the first that is not null, when it allows several); ``string`` when it names none."""
    kinds = schema.get("type")
    names = [kinds] if isinstance(kinds, str) else [k for k in kinds or () if isinstance(k, str)]
    return next((k for k in names if k != "null"), names[0] if names else "string")


def _kind_words(schema: Any) -> str:
    """A parameter's type as the description says it: ``string``, ``integer or null``, ``string, one of "a", "b"``."""
    if not isinstance(schema, Mapping):
        return "any"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return f"{_first_type(schema)}, one of " + ", ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    kinds = schema.get("type")
    if isinstance(kinds, list):
        return " or ".join(str(k) for k in kinds) or "any"
    if isinstance(kinds, str):
        return kinds
    branches = [b for key in ("anyOf", "oneOf") for b in schema.get(key) or ()]
    return " or ".join(_kind_words(b) for b in branches) or "any"


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())


def _words(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class ToolCallScanner:
    """Hides ``<tool_call>...</tool_call>`` blocks from streamed text and yields each call as it closes.

    ``feed`` returns the text that can be shown now and the calls completed by this delta; a possible
    start of a tag at the end of a delta is held back until the next one says what it is.  ``close``
    flushes: held-back text is shown, an unclosed block is read as a call (a model stopped right before
    ``</tool_call>`` still asked for it).  A block that is not ``{"name": ..., "arguments": {...}}`` (or a
    list of those) becomes a call with ``problem`` set, its text kept in ``arguments``: reported, not lost.

    The protocol's own fragments never show: a ``</tool_call>`` outside a block (a small model closes a call
    twice, or one it never opened) is dropped, and so is a tag the reply ends in the middle of (``<tool_call``
    cut off by the token limit): the calls are shown as blocks of their own.
    """

    def __init__(self) -> None:
        self._pending = ""
        self._inside = False
        self._count = 0

    def feed(self, text: str) -> tuple[str, list[ParsedCall]]:
        self._pending += text
        visible: list[str] = []
        calls: list[ParsedCall] = []
        while True:
            if self._inside:
                at = self._pending.find(CALL_CLOSE)
                if at < 0:
                    break
                calls += self._read(self._pending[:at])
                self._pending = self._pending[at + len(CALL_CLOSE) :]
                self._inside = False
                continue
            at, tag = _first_tag(self._pending)
            if at < 0:
                break
            visible.append(self._pending[:at])
            self._pending = self._pending[at + len(tag) :]
            self._inside = tag == CALL_OPEN  # a stray closing tag is dropped, and the text goes on
        if not self._inside:
            keep = max(_partial_tag(self._pending, CALL_OPEN), _partial_tag(self._pending, CALL_CLOSE))
            visible.append(self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]
        return "".join(visible), calls

    def close(self) -> tuple[str, list[ParsedCall]]:
        pending, inside = self._pending, self._inside
        self._pending, self._inside = "", False
        if inside:
            return "", self._read(pending)
        return ("" if len(pending) > 1 else pending), []  # "<tool_c" cut off is a fragment; a lone "<" is text

    def _read(self, block: str) -> list[ParsedCall]:
        try:
            value, _ = raw_decode(block.strip())  # nesting bounded: too deep is malformed
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


def _first_tag(text: str) -> tuple[int, str]:
    """Where the first opening or closing tag in ``text`` starts, and which it is (-1 when there is none)."""
    found = [(at, tag) for tag in (CALL_OPEN, CALL_CLOSE) if (at := text.find(tag)) >= 0]
    return min(found) if found else (-1, "")


def _partial_tag(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that could be the start of ``tag``."""
    return next((n for n in range(min(len(text), len(tag) - 1), 0, -1) if text.endswith(tag[:n])), 0)
