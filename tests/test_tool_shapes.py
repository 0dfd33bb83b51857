"""Tool calls on the wire, in the three API shapes: the bodies (tools offered, calls and results sent back),
the decoding of each shape's tool-call stream, and the fake server playing a model that calls tools."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from granite_magic import BadRequestError, GraniteClient, InvalidParameterError, ProtocolError, Sampling
from granite_magic._events import Accumulator, Event, Finish, ParsedCall, TextDelta, ToolCallAssembler, ToolCallDelta
from granite_magic._granite_tools import ToolCallScanner, prompted_assistant, prompted_results, prompted_system
from granite_magic._result import Result
from granite_magic._shapes import MESSAGES_DEFAULT_MAX_TOKENS, Request, shape, tools_for
from granite_magic._tools import CallRecord, Tool, result_text, run_requested, tool_from_function, tool_from_spec
from granite_magic.testing import GRANITE_ID, FakeOpenRouter, Scenario

from .conftest import FAST_RETRY, TEST_KEY, sse
from .json_fuzz import paths as _paths
from .json_fuzz import replaced as _replaced

APIS = ["chat", "responses", "messages"]
PROMPT = "How much is 120 dollars in yen?"


def convert(amount: float, currency: str = "EUR") -> float:
    """Convert an amount of US dollars into another currency."""
    return round(amount * {"EUR": 0.9, "JPY": 150.0}[currency], 2)


def rate(currency: Literal["JPY", "EUR"]) -> float:
    """Today's rate of a currency against the US dollar."""
    return {"JPY": 150.0, "EUR": 0.9}[currency]


CONVERT, RATE = tool_from_function(convert), tool_from_function(rate)
TOOLS = (CONVERT, RATE)


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# A conversation in the chat-completions form, as the tool loop keeps it: text before two calls, two results
# (the first an error), the answer, and a follow-up question.
CONVERSATION: tuple[dict[str, Any], ...] = (
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": PROMPT},
    {"role": "assistant", "content": "Let me look.", "tool_calls": [call("c1", "convert", '{"amount": 120, "currency": "JPY"}'),
                                                                     call("c2", "rate", '{"currency": "JPY"}')]},
    {"role": "tool", "tool_call_id": "c1", "content": "ValueError: no rates today", "is_error": True},
    {"role": "tool", "tool_call_id": "c2", "content": "150.0"},
    {"role": "assistant", "content": "About 18000 yen."},
    {"role": "user", "content": "And 5?"},
    {"role": "assistant", "content": None, "tool_calls": [call("c3", "convert", '{"amount": 5}')]},
    {"role": "tool", "tool_call_id": "c3", "content": "4.5"},
)


def request(messages: Sequence[Mapping[str, Any]] = CONVERSATION, tools: tuple[Tool, ...] = TOOLS, **params: Any) -> Request:
    return Request(GRANITE_ID, tuple(messages), Sampling(params), tools=tools)


# --- bodies --------------------------------------------------------------------------------------------


def test_chat_sends_the_conversation_as_it_is_and_the_tools() -> None:
    body = shape("chat").body(request(tool_choice="auto"))
    assert body["messages"][:3] == list(CONVERSATION[:3])
    # Chat has no is_error: the error is the content (and strict servers refuse fields they do not know).
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "ValueError: no rates today"}
    assert body["messages"][4:] == list(CONVERSATION[4:])
    assert body["tools"] == tools_for("chat", TOOLS) and body["tool_choice"] == "auto"


def test_responses_turns_calls_and_results_into_items() -> None:
    body = shape("responses").body(request(tool_choice="rate"))
    assert body == {
        "model": GRANITE_ID,
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": "Let me look."},
            {"type": "function_call", "call_id": "c1", "name": "convert", "arguments": '{"amount": 120, "currency": "JPY"}'},
            {"type": "function_call", "call_id": "c2", "name": "rate", "arguments": '{"currency": "JPY"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "ValueError: no rates today"},
            {"type": "function_call_output", "call_id": "c2", "output": "150.0"},
            {"role": "assistant", "content": "About 18000 yen."},
            {"role": "user", "content": "And 5?"},
            {"type": "function_call", "call_id": "c3", "name": "convert", "arguments": '{"amount": 5}'},  # no text: no message
            {"type": "function_call_output", "call_id": "c3", "output": "4.5"},
        ],
        "stream": True,
        "tools": tools_for("responses", TOOLS),
        "tool_choice": {"type": "function", "name": "rate"},
    }


def test_messages_turns_calls_into_tool_use_blocks_and_merges_consecutive_results() -> None:
    body = shape("messages").body(request(tool_choice="required"))
    assert body == {
        "model": GRANITE_ID,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "c1", "name": "convert", "input": {"amount": 120, "currency": "JPY"}},
                {"type": "tool_use", "id": "c2", "name": "rate", "input": {"currency": "JPY"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "ValueError: no rates today", "is_error": True},
                {"type": "tool_result", "tool_use_id": "c2", "content": "150.0", "is_error": False},
            ]},
            {"role": "assistant", "content": "About 18000 yen."},
            {"role": "user", "content": "And 5?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "c3", "name": "convert", "input": {"amount": 5}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c3", "content": "4.5", "is_error": False}]},
        ],
        "max_tokens": MESSAGES_DEFAULT_MAX_TOKENS,
        "stream": True,
        "tools": tools_for("messages", TOOLS),
        "tool_choice": {"type": "any"},
    }


@pytest.mark.parametrize(("arguments", "sent"), [
    ("{not json", {}),  # a malformed call (answered with an error result) still makes a valid request
    ('"{\\"amount\\": 3}"', {"amount": 3}),  # encoded once more as a JSON string, as the tool loop accepts them
    ("[1, 2]", {}),
    ("", {}),
])
def test_messages_sends_arguments_as_an_object_whatever_the_model_wrote(arguments: str, sent: dict[str, Any]) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "", "tool_calls": [call("c", "convert", arguments)]},
        {"role": "tool", "tool_call_id": "c", "content": "bad"},
    ]
    (_, assistant, _) = shape("messages").body(request(messages))["messages"]
    assert assistant == {"role": "assistant", "content": [{"type": "tool_use", "id": "c", "name": "convert", "input": sent}]}


@pytest.mark.parametrize("api", APIS)
def test_without_tools_nothing_about_tools_is_sent(api: str) -> None:
    plain = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    body = shape(api).body(request(plain, tools=(), tool_choice="none"))
    assert "tools" not in body and "tool_choice" not in body
    turns = body["messages"] if api != "responses" else body["input"]
    assert turns == (plain if api == "chat" else plain[1:])


@pytest.mark.parametrize("api", APIS)
def test_a_tool_choice_naming_a_function_not_offered_is_refused_before_sending(api: str) -> None:
    with pytest.raises(InvalidParameterError, match=r"tool_choice 'nope'.*convert, rate"):
        shape(api).body(request(tool_choice="nope"))


@pytest.mark.parametrize("api", APIS)
def test_extra_top_level_fields_are_sent_and_never_replace_the_request(api: str) -> None:
    extra = {"provider": {"require_parameters": True}, "model": "someone/else", "stream": False}
    body = shape(api).body(Request(GRANITE_ID, ({"role": "user", "content": "Hi"},), extra=extra))
    assert body["provider"] == {"require_parameters": True}
    assert (body["model"], body["stream"]) == (GRANITE_ID, True)


# --- decoding: a hand-written stream, split anywhere -------------------------------------------------


def chat_call_stream(fragments: Sequence[str]) -> bytes:
    """OpenAI's form: id, type and name once with empty arguments, then fragments, then ``tool_calls``."""
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "convert", "arguments": ""}}
    chunks: list[tuple[str | None, object]] = [(None, {"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [first]}}]})]
    chunks += [(None, {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": f}}]}}]}) for f in fragments]
    chunks += [(None, {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}), (None, "[DONE]")]
    return sse(*chunks)


def decode(api: str, stream: bytes, cuts: Sequence[int] = ()) -> list[Event]:
    points = [0, *sorted(set(cuts)), len(stream)]
    decoder = shape(api).decoder()
    return [e for a, b in itertools.pairwise(points) for e in decoder.feed(stream[a:b])] + decoder.close()


def assembled(events: Sequence[Event]) -> list[ParsedCall]:
    assembler = ToolCallAssembler()
    for event in events:
        if isinstance(event, ToolCallDelta):
            assembler.add(event.index, event.id, event.name, event.arguments)
    return assembler.calls()


@given(st.text(max_size=60), st.data())
def test_chat_arguments_survive_any_split_of_fragments_and_bytes(arguments: str, data: st.DataObject) -> None:
    """Any arguments text, cut into any fragments, the stream's bytes cut anywhere: the same call comes out."""
    fragment_cuts = data.draw(st.lists(st.integers(0, len(arguments)), max_size=8))
    bounds = [0, *sorted(fragment_cuts), len(arguments)]
    fragments = [arguments[a:b] for a, b in itertools.pairwise(bounds)]
    stream = chat_call_stream(fragments)
    events = decode("chat", stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    assert assembled(events) == [ParsedCall(0, "convert", arguments, "call_1")]
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [(d.id, d.name) for d in deltas if d.id or d.name] == [("call_1", "convert")]  # once, whatever the split
    assert Finish("tool_calls") in events


def test_chat_calls_sent_whole_without_an_index_stay_apart() -> None:
    whole = [call("a", "convert", '{"amount": 1}'), call("b", "rate", '{"currency": "EUR"}')]
    events = decode("chat", sse((None, {"choices": [{"delta": {"tool_calls": whole}, "finish_reason": "tool_calls"}]})))
    assert assembled(events) == [ParsedCall(0, "convert", '{"amount": 1}', "a"), ParsedCall(1, "rate", '{"currency": "EUR"}', "b")]


RESPONSES_CALLS = sse(
    (None, {"type": "response.created", "response": {"id": "r1", "model": "m", "status": "in_progress"}}),
    (None, {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "delta": "Let me look."}),
    (None, {"type": "response.output_item.added", "output_index": 1, "item": {
        "type": "function_call", "id": "fc_1", "call_id": "call_A", "name": "convert", "arguments": "", "status": "in_progress"}}),
    (None, {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 1, "delta": '{"amo'}),
    (None, {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 1, "delta": 'unt": 120}'}),
    (None, {"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 1, "arguments": '{"amount": 120}'}),
    (None, {"type": "response.output_item.done", "output_index": 1, "item": {
        "type": "function_call", "id": "fc_1", "call_id": "call_A", "name": "convert", "arguments": '{"amount": 120}'}}),
    (None, {"type": "response.output_item.added", "output_index": 2, "item": {
        "type": "function_call", "id": "fc_2", "call_id": "call_B", "name": "rate", "arguments": ""}}),
    (None, {"type": "response.function_call_arguments.delta", "item_id": "fc_2", "output_index": 2, "delta": '{"currency": "JPY"}'}),
    (None, {"type": "response.completed", "response": {"status": "completed", "output": [
        {"type": "message", "content": [{"type": "output_text", "text": "Let me look."}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_A", "name": "convert", "arguments": '{"amount": 120}'},
        {"type": "function_call", "id": "fc_2", "call_id": "call_B", "name": "rate", "arguments": '{"currency": "JPY"}'}]}}),
)


def test_responses_function_calls_decode_by_output_index_with_the_call_id() -> None:
    events = decode("responses", RESPONSES_CALLS)
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas == [ToolCallDelta(1, "call_A", "convert", None), ToolCallDelta(1, None, None, '{"amo'),
                      ToolCallDelta(1, None, None, 'unt": 120}'), ToolCallDelta(2, "call_B", "rate", None),
                      ToolCallDelta(2, None, None, '{"currency": "JPY"}')]  # the done events and the output repeat nothing
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Let me look."]
    assert events[-1] == Finish("tool_calls", "completed")


@given(st.lists(st.integers(0, len(RESPONSES_CALLS)), max_size=15))
def test_responses_calls_split_anywhere(cuts: list[int]) -> None:
    assert decode("responses", RESPONSES_CALLS, cuts) == decode("responses", RESPONSES_CALLS)


def test_responses_calls_sent_only_whole_are_read_once() -> None:
    """A server that streams no arguments: the call comes from output_item.done, or else from the completed output."""
    item = {"type": "function_call", "id": "fc_1", "call_id": "call_A", "name": "convert", "arguments": '{"amount": 1}'}
    done = decode("responses", sse((None, {"type": "response.output_item.added", "output_index": 0, "item": {**item, "arguments": ""}}),
                                   (None, {"type": "response.output_item.done", "output_index": 0, "item": item}),
                                   (None, {"type": "response.completed", "response": {"status": "completed", "output": [item]}})))
    assert assembled(done) == [ParsedCall(0, "convert", '{"amount": 1}', "call_A")]
    only_completed = decode("responses", sse((None, {"type": "response.completed", "response": {"status": "completed", "output": [item]}})))
    assert assembled(only_completed) == [ParsedCall(0, "convert", '{"amount": 1}', "call_A")]
    assert only_completed[-1] == Finish("tool_calls", "completed")


def test_responses_without_calls_still_finishes_with_stop() -> None:
    events = decode("responses", sse((None, {"type": "response.completed", "response": {"status": "completed", "output": [
        {"type": "message", "content": [{"type": "output_text", "text": "Hi"}]}]}})))
    assert events == [Finish("stop", "completed")]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)

_CALL_ITEM = {"type": "function_call", "id": "fc", "call_id": "c", "name": "f", "arguments": "{}"}
NEW_EVENTS: list[dict[str, Any]] = [
    {"type": "response.output_item.added", "output_index": 1, "item": _CALL_ITEM},
    {"type": "response.output_item.done", "output_index": 1, "item": _CALL_ITEM},
    {"type": "response.function_call_arguments.delta", "output_index": 1, "item_id": "fc", "delta": "{"},
    {"type": "response.completed", "response": {"status": "completed", "output": [_CALL_ITEM, {"type": "message"}]}},
]




@given(st.sampled_from([(event, path) for event in NEW_EVENTS for path in _paths(event)]), JSON)
def test_decoding_the_new_responses_events_is_total(case: tuple[dict[str, Any], tuple[object, ...]], value: object) -> None:
    """Every field of the function-call events replaced by any JSON value: events or ProtocolError, nothing else."""
    event, path = case
    decoder = shape("responses").decoder()
    try:
        events = decoder.feed(sse((None, event), (None, _replaced(event, path, value)))) + decoder.close()
    except ProtocolError:
        return
    acc = Accumulator()
    for each in events:
        acc.feed(each)
    acc.result().to_dict()


# --- against the fake server -------------------------------------------------------------------------


class Recording(Accumulator):
    """An accumulator that also keeps every event it was fed, to see the deltas as they came."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []

    def feed(self, event: Event) -> None:
        self.events.append(event)
        super().feed(event)

    @property
    def deltas(self) -> list[ToolCallDelta]:
        return [e for e in self.events if isinstance(e, ToolCallDelta)]


@pytest.fixture
def clients(server: FakeOpenRouter) -> Iterator[dict[str, GraniteClient]]:
    made = {api: GraniteClient(base_url=server.base_url, api_key=TEST_KEY, api=api, retry=FAST_RETRY, read_timeout_s=5) for api in APIS}
    yield made
    for client in made.values():
        client.close()


def ask(client: GraniteClient, req: Request) -> tuple[Result, Recording]:
    acc = Recording()
    return client.loop.run(client.stream(req, acc)), acc


def first_step(tools: tuple[Tool, ...] = TOOLS, prompt: str = PROMPT, **params: Any) -> Request:
    return request(({"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}), tools, **params)


@pytest.mark.parametrize("api", APIS)
def test_each_shape_streams_a_call_in_fragments_and_finishes_with_tool_calls(server: FakeOpenRouter, clients: dict[str, GraniteClient],
                                                                             api: str) -> None:
    server.push(Scenario(tool_split=3))
    result, acc = ask(clients[api], first_step())
    assert result.finish_reason == "tool_calls" and result.text == ""
    (first, *rest) = acc.deltas
    assert (first.name, first.arguments) == ("convert", None) and first.id
    assert all(d.id is None and d.name is None for d in rest)  # the id and the name come once
    assert [d.arguments for d in rest] == ['{"a', 'mou', 'nt"', ': 1', '20}']
    assert [(c.name, c.arguments, c.id) for c in assembled(acc.events)] == [("convert", '{"amount": 120}', first.id)]


@pytest.mark.parametrize("api", APIS)
def test_one_character_fragments_in_seven_byte_chunks_assemble(server: FakeOpenRouter, clients: dict[str, GraniteClient], api: str) -> None:
    server.push(Scenario(tool_calls=2, tool_split=1, split=7, crlf=True))
    result, acc = ask(clients[api], first_step())
    assert [c.raw_arguments for c in result.tool_calls] == ['{"amount": 120}', '{"currency": "JPY"}']
    assert len([d for d in acc.deltas if d.arguments]) == len('{"amount": 120}{"currency": "JPY"}')


@pytest.mark.parametrize("api", APIS)
def test_parallel_calls_offer_the_tools_in_turn_after_the_text(server: FakeOpenRouter, clients: dict[str, GraniteClient], api: str) -> None:
    server.push(Scenario(tool_calls=2, text="Let me look."))
    result, acc = ask(clients[api], first_step())
    assert result.text == "Let me look." and result.finish_reason == "tool_calls"
    calls = assembled(acc.events)
    assert [(c.name, c.arguments) for c in calls] == [("convert", '{"amount": 120}'), ("rate", '{"currency": "JPY"}')]
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize("api", APIS)
def test_parallel_calls_of_one_tool_get_different_arguments(server: FakeOpenRouter, clients: dict[str, GraniteClient], api: str) -> None:
    server.push(Scenario(tool_calls=3, tool_split=0))
    result, _ = ask(clients[api], first_step((CONVERT,), "Convert 120 and 75 dollars"))
    assert [c.raw_arguments for c in result.tool_calls] == ['{"amount": 120}', '{"amount": 75}', '{"amount": 76}']


@pytest.mark.parametrize("api", APIS)
def test_an_unknown_tool_and_malformed_arguments_arrive_as_sent(server: FakeOpenRouter, clients: dict[str, GraniteClient], api: str) -> None:
    server.push(Scenario(tool_calls=2, tool_name="nope", tool_arguments="{not json"))
    result, acc = ask(clients[api], first_step())
    (bad, good) = assembled(acc.events)
    assert (bad.name, bad.arguments) == ("nope", "{not json") and (good.name, good.arguments) == ("rate", '{"currency": "JPY"}')
    assert result.tool_calls[0].arguments is None and result.finish_reason == "tool_calls"
    assert "there is no tool named 'nope'" in (run_requested(TOOLS, bad).error or "")


@pytest.mark.parametrize("api", APIS)
def test_tool_choice_none_answers_in_text_and_a_name_picks_the_tool(server: FakeOpenRouter, clients: dict[str, GraniteClient],
                                                                    api: str) -> None:
    result, acc = ask(clients[api], first_step(tool_choice="none", seed=1))
    assert result.text and result.finish_reason == "stop" and acc.deltas == []
    result, _ = ask(clients[api], first_step(tool_choice="rate"))
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("rate", {"currency": "JPY"})]


@pytest.mark.parametrize("api", APIS)
def test_round_trip_sends_the_results_back_in_the_shape_and_the_answer_quotes_them(
        server: FakeOpenRouter, clients: dict[str, GraniteClient], api: str) -> None:
    """The first call names an unknown tool (its error goes back flagged), the second runs."""
    server.push(Scenario(tool_calls=2, tool_name="nope"))
    first, _ = ask(clients[api], first_step(tool_choice="auto"))
    records = [run_requested(TOOLS, ParsedCall(i, c.name, c.raw_arguments, c.id)) for i, c in enumerate(first.tool_calls)]
    assert [r.error is None for r in records] == [False, True]
    answer, _ = ask(clients[api], second_step(first, records))
    assert answer.text == "The tools said: there is no tool named 'nope'; the tools are: convert, rate; 150.0"
    assert answer.finish_reason == "stop"
    assert server.chat_requests[-1].body == expected_second_body(api, [c.id or "" for c in first.tool_calls])


def second_step(first: Result, records: Sequence[CallRecord]) -> Request:
    """The messages the tool loop adds after a step, in the chat-completions form."""
    assistant = {"role": "assistant", "content": first.text or None,
                 "tool_calls": [call(r.id, r.name, r.raw_arguments) for r in records]}
    results = [{"role": "tool", "tool_call_id": r.id, "content": result_text(r), **({"is_error": True} if r.error else {})}
               for r in records]
    return Request(GRANITE_ID, (*first_step().messages, assistant, *results), Sampling({"tool_choice": "auto"}), tools=TOOLS)


ERROR = "there is no tool named 'nope'; the tools are: convert, rate"


def expected_second_body(api: str, ids: Sequence[str]) -> dict[str, Any]:
    """The exact second-step body of each API shape."""
    first, second = ids
    if api == "chat":
        return {"model": GRANITE_ID, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": None, "tool_calls": [call(first, "nope", '{"amount": 120}'),
                                                                  call(second, "rate", '{"currency": "JPY"}')]},
            {"role": "tool", "tool_call_id": first, "content": ERROR},
            {"role": "tool", "tool_call_id": second, "content": "150.0"},
        ], "stream": True, "stream_options": {"include_usage": True}, "tools": tools_for("chat", TOOLS), "tool_choice": "auto"}
    if api == "responses":
        return {"model": GRANITE_ID, "instructions": "Be brief.", "input": [
            {"role": "user", "content": PROMPT},
            {"type": "function_call", "call_id": first, "name": "nope", "arguments": '{"amount": 120}'},
            {"type": "function_call", "call_id": second, "name": "rate", "arguments": '{"currency": "JPY"}'},
            {"type": "function_call_output", "call_id": first, "output": ERROR},
            {"type": "function_call_output", "call_id": second, "output": "150.0"},
        ], "stream": True, "tools": tools_for("responses", TOOLS), "tool_choice": "auto"}
    return {"model": GRANITE_ID, "system": "Be brief.", "messages": [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": [{"type": "tool_use", "id": first, "name": "nope", "input": {"amount": 120}},
                                          {"type": "tool_use", "id": second, "name": "rate", "input": {"currency": "JPY"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first, "content": ERROR, "is_error": True},
                                     {"type": "tool_result", "tool_use_id": second, "content": "150.0", "is_error": False}]},
    ], "max_tokens": MESSAGES_DEFAULT_MAX_TOKENS, "stream": True, "tools": tools_for("messages", TOOLS), "tool_choice": {"type": "auto"}}


@pytest.mark.parametrize("api", APIS)
def test_the_fake_refuses_results_that_do_not_answer_the_calls(clients: dict[str, GraniteClient], api: str) -> None:
    """As the real APIs do: a result must answer, by id, a call of the assistant message just before it."""
    wrong: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None, "tool_calls": [call("c1", "rate", "{}")]},
        {"role": "tool", "tool_call_id": "c2", "content": "x"},
    ]
    with pytest.raises(BadRequestError, match="tool_call_id 'c2'"):
        ask(clients[api], request(wrong))
    with pytest.raises(BadRequestError, match=r"missing: \['c1'\]"):
        ask(clients[api], request([*wrong[:2], {"role": "user", "content": "Well?"}]))


def test_the_three_shapes_make_the_same_calls(server: FakeOpenRouter, clients: dict[str, GraniteClient]) -> None:
    firsts = [ask(clients[api], first_step())[0] for api in APIS]
    assert len({json.dumps([(c.name, c.raw_arguments) for c in r.tool_calls]) for r in firsts}) == 1
    assert [r.tool_calls[0].id.split("_")[0] for r in firsts if r.tool_calls[0].id] == ["call", "call", "toolu"]


def test_more_steps_and_forced_choices_keep_calling(server: FakeOpenRouter, clients: dict[str, GraniteClient]) -> None:
    server.default = Scenario(tool_steps=2)
    first, _ = ask(clients["chat"], first_step())
    records = [run_requested(TOOLS, ParsedCall(0, c.name, c.raw_arguments, c.id)) for c in first.tool_calls]
    again, _ = ask(clients["chat"], second_step(first, records))
    assert again.finish_reason == "tool_calls"  # a second step that calls, then answers
    server.default = Scenario()
    forced, _ = ask(clients["chat"], Request(GRANITE_ID, second_step(first, records).messages, Sampling({"tool_choice": "required"}),
                                             tools=TOOLS))
    assert forced.finish_reason == "tool_calls"  # "required" always calls, as real models do: the loop must stop asking


def test_no_calls_when_the_model_answers_directly_or_the_provider_ignores_tools(server: FakeOpenRouter,
                                                                                clients: dict[str, GraniteClient]) -> None:
    server.push(Scenario(tool_calls=0))
    assert ask(clients["chat"], first_step(seed=3))[0].finish_reason == "stop"
    ignoring = Request("fake/ignores-tools", first_step().messages, Sampling({"seed": 3}), tools=TOOLS)
    result, acc = ask(clients["chat"], ignoring)
    assert result.text and acc.deltas == []


@pytest.mark.parametrize(("schema", "prompt", "arguments"), [
    ({"n": {"type": "integer"}}, "About 2.5 or 7 things", {"n": 2}),
    ({"x": {"type": "number"}, "y": {"type": "number"}}, "Add 2 and 3.5", {"x": 2, "y": 3.5}),
    ({"x": {"type": "number"}}, "No digits here", {"x": 1}),
    ({"city": {"type": "string"}}, "What is the weather in Paris?", {"city": "Paris"}),
    ({"unit": {"enum": ["celsius", "fahrenheit"]}, "flag": {"type": "boolean"}}, "Hi", {"unit": "celsius", "flag": True}),
    ({"maybe": {"anyOf": [{"type": "null"}, {"type": "integer"}]}, "fixed": {"const": "k"}}, "Take 4", {"maybe": 4, "fixed": "k"}),
    ({"tags": {"type": "array", "items": {"type": "string"}}}, "red green", {"tags": ["green"]}),
    ({"point": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}, "At 9", {"point": {"x": 9}}),
])
def test_arguments_come_from_the_schema_and_the_prompt(server: FakeOpenRouter, clients: dict[str, GraniteClient],
                                                       schema: dict[str, Any], prompt: str, arguments: dict[str, Any]) -> None:
    spec = {"name": "f", "description": "", "parameters": {"type": "object", "properties": {**schema, "optional": {"type": "string"}},
                                                           "required": list(schema)}}
    result, _ = ask(clients["chat"], first_step((tool_from_spec(spec, lambda **kw: kw),), prompt))
    assert result.tool_calls[0].arguments == arguments  # optional properties are left to the function's defaults


def test_prompted_mode_is_played_in_granite_convention(server: FakeOpenRouter, clients: dict[str, GraniteClient]) -> None:
    """No native tools, Granite's <tools> block in the system message: the calls come as <tool_call> text."""
    server.push(Scenario(tool_calls=2, tool_split=5))
    messages = ({"role": "system", "content": prompted_system(TOOLS, "Be brief.")}, {"role": "user", "content": PROMPT})
    first, _ = ask(clients["chat"], Request(GRANITE_ID, messages))
    scanner = ToolCallScanner()
    shown, calls = scanner.feed(first.text)
    assert shown.strip() == "" and first.finish_reason == "stop" and first.chunks > 10  # the blocks are joined by a newline
    assert [(c.name, c.arguments) for c in calls] == [("convert", '{"amount": 120}'), ("rate", '{"currency": "JPY"}')]
    records = [run_requested(TOOLS, c) for c in calls]
    follow = (*messages, {"role": "assistant", "content": prompted_assistant("", calls)}, {"role": "user", "content": prompted_results(records)})
    answer, _ = ask(clients["chat"], Request(GRANITE_ID, follow))
    assert answer.text == "The tools said: 108.0; 150.0"
