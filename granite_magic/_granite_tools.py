"""Prompted tools: Granite's own ``<tool_call>`` convention, for providers that ignore ``tools``.

The tools are described in the system message, the model writes its calls as ``<tool_call>`` blocks
in its text, and the results go back as a user turn of ``<tool_response>`` blocks:

* ``prompted_system``: the system turn with the tool block;
* ``ToolCallScanner``: hides ``<tool_call>`` blocks from streamed text and reads each as a ``ParsedCall``;
* ``prompted_results`` and ``prompted_assistant``: the turns that carry results and calls in history.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from ._events import ParsedCall
from ._shapes import chat_tools
from ._tools import CallRecord, Tool, result_text
from ._values import raw_decode

__all__ = ["CALL_CLOSE", "CALL_OPEN", "ToolCallScanner", "prompted_assistant", "prompted_results", "prompted_system"]

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
