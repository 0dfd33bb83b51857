"""The tool loop: ask, run the calls the model makes, send their results back, until it answers.

Shape-neutral: the conversation is kept in the chat-completions form (an assistant message with
``tool_calls``, then ``role: "tool"`` results) and each API shape converts it on the wire.  In
prompted mode (for providers that do not honour ``tools``) the tools are described in the system
message in Granite's own convention, calls are read from the reply's ``<tool_call>`` blocks, and
results go back as a user turn of ``<tool_response>`` blocks.

Tool functions run in the caller's thread (the kernel's, for a cell), between two requests: the
user's code runs where it would in a cell, and Ctrl-C interrupts it as usual.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ._errors import InvalidParameterError
from ._events import Accumulator, ParsedCall
from ._granite_tools import PLAIN, ToolCallScanner, plain_tools_system, prompted_assistant, prompted_results, prompted_system
from ._params import Sampling
from ._result import Result, ToolCall, Usage
from ._shapes import Request
from ._tokens import spelled
from ._tools import Approve, CallRecord, Tool, calls_summary, describe_call, result_text, run_requested
from ._values import loads
from ._vocab import MAX_STEPS, TOOL_MODES, ToolMode

__all__ = ["LOGGED_CALLS", "MAX_STEPS", "ToolLoop", "ToolMode", "ToolPlan", "check_max_steps", "check_mode", "plan_tools"]

# A turn logs this many calls one by one ("calling f(x=1)", "  → 2"); past them each step's calls are counted in
# one line (a model can ask for hundreds of calls, and each would be two lines in the cell).
LOGGED_CALLS = 10
MOST_STEPS = 50


def check_max_steps(value: int) -> int:
    """``max_steps`` (requests in a tool-using turn) from 1 to 50; 1 offers the tools once and runs none of the calls."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MOST_STEPS:
        raise InvalidParameterError(f"max_steps={value!r} is out of range: must be an integer from 1 to {MOST_STEPS} (1: offer the "
                                    "tools once and run none of the calls)", names=("max_steps",))
    return value


def check_mode(value: str) -> ToolMode:
    for mode in TOOL_MODES:
        if value == mode:
            return mode
    raise InvalidParameterError(f"tool_mode={value!r} is invalid: must be one of {', '.join(TOOL_MODES)}", names=("tool_mode",))


class ToolHost(Protocol):
    """What planning a tool turn asks of a client."""

    @property
    def framing(self) -> str: ...
    async def supported_parameters(self, model: str) -> tuple[str, ...] | None: ...
    def default_tool_mode(self, supported: Sequence[str] | None) -> Literal["native", "prompted"]: ...


async def plan_tools(client: ToolHost, model: str, tools: Sequence[Tool], mode: str, *, approve: Approve | None = None,
                     max_steps: int = MAX_STEPS) -> ToolPlan:
    """How a tool-using turn offers ``tools`` to ``client``: in ``mode``, or under ``auto`` as the client prefers for
    what the model's listing says (natively when it names ``tools``; the local model reads Granite's convention).
    A base model (the client's ``framing`` is ``plain``) is shown a worked call of each tool as well."""
    chosen = check_mode(mode)
    if chosen == "auto":
        chosen = client.default_tool_mode(await client.supported_parameters(model))
    return ToolPlan(tuple(tools), chosen, approve, max_steps, framing=client.framing)


@dataclass(frozen=True)
class ToolPlan:
    """What a tool-using turn offers and how."""

    tools: tuple[Tool, ...]
    mode: Literal["native", "prompted"]
    approve: Approve | None = None
    max_steps: int = MAX_STEPS
    framing: str = "template"  # the client's: ``plain`` for a base model, which is taught the calls by example

    def __post_init__(self) -> None:
        check_max_steps(self.max_steps)

    def first_request(self, request: Request) -> Request:
        """The request of the first step: tools offered natively, or described in the system message (Granite's own
        tool block; for a base model, which never learnt it, a short description and a worked call of each tool)."""
        if self.mode == "native":
            return dataclasses.replace(request, tools=self.tools)
        system = plain_tools_system(self.tools) if self.framing == PLAIN else prompted_system(self.tools)
        return dataclasses.replace(request, messages=_with_system(request.messages, system))


@dataclass
class ToolLoop:
    """One tool-using turn, stepped by a driver that streams each request (``step`` / ``record``)."""

    plan: ToolPlan
    request: Request
    on_call: Callable[[str], None] = lambda line: None  # "calling convert(amount=120)" / "→ 14400.0" for the live view
    records: list[CallRecord] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    steps: int = 0
    stopped: str | None = None  # why the loop ended before the model answered (max steps)
    logged: int = 0  # calls logged one by one so far (at most LOGGED_CALLS)

    def __post_init__(self) -> None:
        self.request = self.plan.first_request(self.request)
        self._forced = self.request.sampling.get("tool_choice")  # what the first step was told to call (if anything)
        self._asked = len(self.request.messages)  # the messages before this turn's calls and results
        self._prefix = self._forced_prefix()
        if self._prefix:
            self.request = dataclasses.replace(self.request, messages=(*self.request.messages, {"role": "assistant", "content": self._prefix}))

    def _forced_prefix(self) -> str:
        """In prompted mode, a ``tool_choice`` that forces a call is kept by starting the reply with the call
        (the model only writes the arguments); natively, the API's own ``tool_choice`` does it."""
        choice = self.request.sampling.get("tool_choice")
        if self.plan.mode != "prompted" or choice in (None, "auto", "none"):
            return ""
        name = self.plan.tools[0].name if choice == "required" else choice
        # A base model read the worked examples' `"arguments": {"`, which its tokenizer splits as `":` + ` {"` (Gemma's
        # does): a prefix ending in the space leaves it a split it never saw, and the stand-in then skipped the brace
        # (`120, "currency": ...`).  Ending at the colon lets it write ` {"` as in the examples.
        after = "" if self.plan.framing == PLAIN else " "
        return f'<tool_call>\n{{"name": {json.dumps(name)}, "arguments":{after}'

    def visible(self, acc: Accumulator) -> Any:
        """What the live view should show of a step: the text without ``<tool_call>`` blocks in prompted mode (a
        reply that continues a forced call starts inside one: what it writes up to ``</tool_call>`` is hidden)."""
        return acc if self.plan.mode == "native" else _Visible(acc, self._prefix)

    def after(self, result: Result) -> Request | None:
        """Run the calls ``result`` asked for (in this thread) and return the next request; None when done."""
        self.steps += 1
        self.results.append(result)
        text, calls = self._calls(result)
        if not calls or result.partial:
            return None
        if self.steps >= self.plan.max_steps:
            self.stopped = self._stop_line()
            return None
        logged = self.logged
        records = [self._run(call) for call in calls]
        if len(records) > (shown := self.logged - logged):  # the first ones were logged one by one
            self.on_call(f"… {calls_summary(records[shown:])}, not listed one by one")
        self.records += records
        asked = self.request.messages[:-1] if self._prefix else self.request.messages
        self._prefix = ""  # the call was forced once; after it the model chooses
        sampling = self.request.sampling
        if sampling.get("tool_choice") not in (None, "auto", "none"):
            sampling = sampling | Sampling._trusted({"tool_choice": "auto"})  # a forced call every step would never end
        self.request = dataclasses.replace(self.request, messages=(*asked, *self._history(text, calls, records)), sampling=sampling)
        return self.request

    def _stop_line(self) -> str:
        """Why the turn stopped with calls still asked for, and whose calls they were: a forced ``tool_choice`` holds
        for the first step only (natively the choice goes back to ``auto``, prompted the reply is no longer begun with
        a call), so after it the model called tools on its own."""
        steps = f"stopped after {self.steps} step{'s' if self.steps != 1 else ''} (max_steps={self.plan.max_steps})"
        choice = self.request.sampling.get("tool_choice") if self.steps == 1 else self._forced
        forced = f"tool_choice='{choice}'" if isinstance(choice, str) and choice not in ("auto", "none") else None
        if self.steps == 1:
            return f"{steps}: " + (f"that call was forced by {forced}, and was not run" if forced else
                                   "the model asked for tools, and its calls were not run")
        own = f" ({forced} forced only the first call)" if forced else ""
        return f"{steps}: the model kept calling tools on its own{own}; its last calls were not run"

    def stop_at(self, result: Result) -> None:
        """The turn ended at this step without asking for more (a failure or an interrupt)."""
        self.steps += 1
        self.results.append(result)

    def _calls(self, result: Result) -> tuple[str, list[ParsedCall]]:
        if self.plan.mode == "native":
            calls = [ParsedCall(i, c.name, c.raw_arguments, c.id) for i, c in enumerate(result.tool_calls)]
            return result.text, calls
        scanner = ToolCallScanner()
        shown, calls = scanner.feed(self._prefix + result.text)
        rest, more = scanner.close()
        return shown + rest, calls + more

    def _run(self, call: ParsedCall) -> CallRecord:
        call = self._lenient(call)
        logging = self.logged < LOGGED_CALLS
        if logging:
            self.on_call(f"calling {describe_call(call.name, call.arguments)}")
        record = run_requested(self.plan.tools, call, approve=self.plan.approve)
        if logging:
            self.logged += 1
            self.on_call(f"  → {_short(record.error, 300)}" if record.error else f"  → {_short(result_text(record))}")
        return record

    def _lenient(self, call: ParsedCall) -> ParsedCall:
        """A bare value for a tool of one parameter (``"arguments": 12`` for ``square(n)``) is read as that
        parameter: small models write it, and its meaning is not in doubt.  Anything else is left as sent."""
        tool = next((t for t in self.plan.tools if t.name == call.name), None)
        properties = tool.parameters.get("properties", {}) if tool is not None else {}
        if call.problem or len(properties) != 1:
            return call
        try:
            value = loads(call.arguments)
        except ValueError:
            return call
        if isinstance(value, dict):
            return call
        return dataclasses.replace(call, arguments=json.dumps({next(iter(properties)): value}))

    def _history(self, text: str, calls: Sequence[ParsedCall], records: Sequence[CallRecord]) -> list[dict[str, Any]]:
        """The assistant's calls and the results, in the chat-completions form (or Granite's, prompted)."""
        if self.plan.mode == "prompted":
            return [{"role": "assistant", "content": prompted_assistant(text.strip(), calls)},
                    {"role": "user", "content": prompted_results(records)}]
        assistant = {"role": "assistant", "content": text or None, "tool_calls": [
            {"id": r.id, "type": "function", "function": {"name": r.name, "arguments": r.raw_arguments or "{}"}} for r in records]}
        results = [{"role": "tool", "tool_call_id": r.id, "content": result_text(r), **({"is_error": True} if r.error else {})}
                   for r in records]
        return [assistant, *results]

    def final(self) -> Result:
        """The last step's reply, with every call of every step and the usage and cost of all of them."""
        last = self.results[-1]
        text, _ = self._calls(last) if self.plan.mode == "prompted" else (last.text, [])
        calls = [ToolCall(r.name, r.arguments, r.id, r.raw_arguments, r.result, r.error, r.duration_s, r.ran) for r in self.records]
        text = text.strip() if self.plan.mode == "prompted" else text
        # prompted, the text lost its <tool_call> blocks and its ends' white space: so do the tokens (those that
        # spelled only what was taken out go; the ones left still spell the text exactly)
        tokens = last.tokens if text == last.text else [t for t in spelled(last.tokens, text) if t.text]
        return dataclasses.replace(last, text=text, tool_calls=calls, tokens=tokens, usage=_total_usage(self.results),
                                   duration_s=sum(r.duration_s or 0 for r in self.results))

    def history(self) -> list[dict[str, Any]]:
        """What a ``--chat`` conversation keeps of this turn after the user's message: calls, results, answer."""
        added = [dict(m) for m in self.request.messages[self._asked :]]
        return [*added, {"role": "assistant", "content": self.final().text}]


class _Visible:
    """A step's progress as the live view shows it in prompted mode: ``<tool_call>`` blocks hidden."""

    def __init__(self, acc: Accumulator, begun: str = "") -> None:
        self.acc = acc
        self._scanner = ToolCallScanner()
        self._seen = 0
        self._shown, _ = self._scanner.feed(begun)  # what the reply continues (a forced call's start) is not shown

    def __getattr__(self, name: str) -> Any:
        return getattr(self.acc, name)

    @property
    def text(self) -> str:
        text = self.acc.text
        if len(text) > self._seen:
            shown, _ = self._scanner.feed(text[self._seen :])
            self._shown += shown
            self._seen = len(text)
        return self._shown


def _with_system(messages: Sequence[Mapping[str, Any]], addition: str) -> tuple[Mapping[str, Any], ...]:
    if messages and messages[0].get("role") == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{addition}"}
        return (first, *messages[1:])
    return ({"role": "system", "content": addition}, *messages)


def _total_usage(results: Sequence[Result]) -> Usage:
    def total(name: str) -> Any:
        values = [getattr(r.usage, name) for r in results]
        return None if all(v is None for v in values) else sum(v or 0 for v in values)

    return Usage(**{f.name: total(f.name) for f in dataclasses.fields(Usage)})


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
