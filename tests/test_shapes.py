"""The Responses and Messages API shapes: request bodies, stream decoding, and the same results as chat."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from IPython.core.interactiveshell import InteractiveShell

from granite_magic import ConnectionDroppedError, GraniteClient, ProtocolError, Sampling, StreamError
from granite_magic._events import Accumulator, ChunkMeta, Done, ErrorEvent, Event, Finish, TextDelta, ToolCallDelta, UsageReport
from granite_magic._shapes import MESSAGES_DEFAULT_MAX_TOKENS, Request, shape
from granite_magic.testing import FakeOpenRouter, Scenario

from .conftest import FAST_RETRY, TEST_KEY, run, shown
from .json_fuzz import paths as _paths
from .json_fuzz import replaced as _replaced

MESSAGES = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
APIS = ["chat", "responses", "messages"]


def request(**params: object) -> Request:
    return Request("m", MESSAGES, Sampling(params))


def test_responses_body() -> None:
    body = shape("responses").body(request(temperature=0.5, max_tokens=20, seed=1))
    assert body == {"model": "m", "input": [{"role": "user", "content": "Hi"}], "instructions": "Be brief.", "stream": True,
                    "temperature": 0.5, "max_output_tokens": 20, "seed": 1}


def test_messages_body() -> None:
    body = shape("messages").body(request(stop=["END"], top_k=5))
    assert body == {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "system": "Be brief.",
                    "max_tokens": MESSAGES_DEFAULT_MAX_TOKENS, "stream": True, "stop_sequences": ["END"], "top_k": 5}
    assert shape("messages").body(request(max_tokens=7))["max_tokens"] == 7


def sse(*events: tuple[str | None, object]) -> bytes:
    out = []
    for name, payload in events:
        head = f"event: {name}\n" if name else ""
        out.append(f"{head}data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n")
    return "".join(out).encode()


RESPONSES_STREAM = sse(
    (None, {"type": "response.created", "response": {"id": "r1", "model": "m", "status": "in_progress"}}),
    (None, {"type": "response.output_text.delta", "delta": "Hel"}),
    (None, {"type": "response.output_text.delta", "delta": "lo"}),
    (None, {"type": "response.completed", "response": {"status": "completed", "usage": {
        "input_tokens": 3, "output_tokens": 2, "total_tokens": 5, "cost": 0.25}}}),
    (None, "[DONE]"),
)

MESSAGES_STREAM = sse(
    ("message_start", {"type": "message_start", "message": {"id": "msg1", "model": "m", "usage": {"input_tokens": 3, "output_tokens": 0}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
    ("message_stop", {"type": "message_stop"}),
)


@pytest.mark.parametrize(("api", "stream"), [("responses", RESPONSES_STREAM), ("messages", MESSAGES_STREAM)])
def test_streams_decode_to_the_common_events(api: str, stream: bytes) -> None:
    decoder = shape(api).decoder()
    events = decoder.feed(stream) + decoder.close()
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hel", "lo"]
    assert any(isinstance(e, ChunkMeta) and e.model == "m" for e in events)
    acc = Accumulator()
    for event in events:
        acc.feed(event)
    result = acc.result()
    assert (result.text, result.finish_reason, result.partial) == ("Hello", "stop", False)
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (3, 2, 5)
    assert isinstance(events[-1], Done)


@given(st.lists(st.integers(min_value=0, max_value=len(MESSAGES_STREAM)), max_size=20))
def test_messages_stream_splits_anywhere(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(MESSAGES_STREAM)]
    decoder = shape("messages").decoder()
    events = [e for a, b in itertools.pairwise(points) for e in decoder.feed(MESSAGES_STREAM[a:b])] + decoder.close()
    whole = shape("messages").decoder()
    assert events == whole.feed(MESSAGES_STREAM) + whole.close()


@pytest.mark.parametrize(("reason", "finish"), [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
                                                 ("tool_use", "tool_calls"), ("refusal", "content_filter"),
                                                 ("model_context_window_exceeded", "length")])
def test_messages_stop_reasons_map_onto_the_common_set(reason: str, finish: str) -> None:
    events = shape("messages").decoder().feed(sse(("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason}})))
    assert Finish(finish, reason) in events


def test_responses_incomplete_failed_and_error_events() -> None:
    decoder = shape("responses").decoder()
    incomplete = decoder.feed(sse((None, {"type": "response.incomplete", "response": {"incomplete_details": {"reason": "max_output_tokens"}}})))
    assert Finish("length", "max_output_tokens") in incomplete
    failed = decoder.feed(sse((None, {"type": "response.failed", "response": {"error": {"code": "server_error", "message": "boom"}}})))
    assert ErrorEvent("boom", "server_error", transient=True) in failed and Finish("error") in failed
    assert decoder.feed(sse((None, {"type": "error", "code": 429, "message": "slow down"}))) == [ErrorEvent("slow down", 429, transient=True)]


def test_messages_error_and_tool_use_events() -> None:
    decoder = shape("messages").decoder()
    assert decoder.feed(sse(("error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}))) == [
        ErrorEvent("busy", "overloaded_error", transient=True)]
    events = decoder.feed(sse(
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "f"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
    ))
    assert events == [ToolCallDelta(1, "t1", "f", None), ToolCallDelta(1, None, None, "{}")]


def test_usage_without_cost_and_messages_usage_merge() -> None:
    decoder = shape("messages").decoder()
    start = decoder.feed(sse(("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 4}}})))
    delta = decoder.feed(sse(("message_delta", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 9}})))
    (first,) = [e for e in start if isinstance(e, UsageReport)]
    (second,) = [e for e in delta if isinstance(e, UsageReport)]
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (4, None)
    assert (second.usage.prompt_tokens, second.usage.completion_tokens, second.usage.total_tokens) == (4, 9, 13)


def test_messages_usage_with_prompt_caching_counts_the_whole_prompt() -> None:
    # Anthropic's own SDK fixture: input_tokens is only the uncached part of the prompt
    usage = {"input_tokens": 6, "cache_creation_input_tokens": 3337, "cache_read_input_tokens": 6289, "output_tokens": 1}
    events = shape("messages").decoder().feed(sse(("message_start", {"type": "message_start", "message": {"usage": usage}})))
    (report,) = [e for e in events if isinstance(e, UsageReport)]
    assert (report.usage.prompt_tokens, report.usage.cached_tokens, report.usage.total_tokens) == (9632, 6289, 9633)


def test_chat_error_event_reads_type_when_code_is_null() -> None:
    events = shape("chat").decoder().feed(sse((None, {"error": {"type": "server_error", "code": None, "message": "x"}})))
    assert events == [ErrorEvent("x", "server_error", transient=True)]


@pytest.mark.parametrize("api", APIS)
def test_a_leading_byte_order_mark_is_dropped(api: str) -> None:
    stream = {"chat": sse((None, {"choices": [{"delta": {"content": "Hello"}}]})), "responses": RESPONSES_STREAM,
              "messages": MESSAGES_STREAM}[api]
    decoder = shape(api).decoder()
    events = decoder.feed(b"\xef\xbb\xbf" + stream) + decoder.close()
    assert next(e.text for e in events if isinstance(e, TextDelta)) in ("Hello", "Hel")


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "12a"])
def test_retry_values_that_are_not_ascii_digits_are_ignored(value: str) -> None:
    from granite_magic._sse import SSEDecoder

    (event,) = SSEDecoder().feed(f"retry: {value}\ndata: x\n\n".encode())
    assert event.retry is None


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)

# One event of each shape, with the path of every field a server fills in.
TEMPLATES: dict[str, list[dict[str, object]]] = {
    "chat": [{"id": "g", "model": "m", "provider": "p", "choices": [{"index": 0, "delta": {"content": "a", "tool_calls": [
        {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "cost": 0.1, "prompt_tokens_details": {"cached_tokens": 0}},
        "error": {"code": 500, "message": "x", "metadata": {}}}],
    "responses": [{"type": "response.output_text.delta", "delta": "a"},
                  {"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "i", "delta": "{"},
                  {"type": "response.created", "response": {"id": "r", "model": "m"}},
                  {"type": "response.completed", "response": {"status": "completed", "usage": {"input_tokens": 1, "output_tokens": 1,
                                                                                                 "input_tokens_details": {}}}},
                  {"type": "response.incomplete", "response": {"incomplete_details": {"reason": "max_output_tokens"}}},
                  {"type": "response.failed", "response": {"error": {"code": "server_error", "message": "x"}}},
                  {"type": "error", "code": 429, "message": "x"}],
    "messages": [{"type": "message_start", "message": {"id": "m", "model": "m", "usage": {"input_tokens": 1}}},
                 {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "f"}},
                 {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}},
                 {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{"}},
                 {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1, "cost": 1}},
                 {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}],
}




CASES = [(api, template, path) for api, templates in TEMPLATES.items() for template in templates for path in _paths(template)]


@given(st.sampled_from(CASES), JSON)
def test_decoding_is_total_whatever_json_arrives_in_any_field(case: tuple[str, dict[str, object], tuple[object, ...]], value: object) -> None:
    """Every field of every event shape replaced by any JSON value: events or ProtocolError, nothing else."""
    api, template, path = case
    decoder = shape(api).decoder()
    event = "message" if api != "messages" else str(template.get("type"))
    payload = json.dumps(_replaced(template, path, value))
    try:
        events: list[Event] = decoder.feed(f"event: {event}\ndata: {payload}\n\n".encode()) + decoder.close()
    except ProtocolError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 300
        return
    acc = Accumulator()
    for each in events:
        acc.feed(each)
    acc.result().to_dict()  # what the notebook saves must be buildable too


# --- against the local server ---------------------------------------------------------


def client_for(server: FakeOpenRouter, api: str) -> GraniteClient:
    return GraniteClient(base_url=server.base_url, api_key=TEST_KEY, api=api, retry=FAST_RETRY)


def test_the_three_shapes_give_the_same_result(server: FakeOpenRouter) -> None:
    results = [client_for(server, api).chat("Tell a story", system="Be brief.", seed=4, temperature=0.7, max_tokens=12) for api in APIS]
    assert len({r.text for r in results}) == 1 and results[0].text
    assert len({(r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens, r.usage.cost) for r in results}) == 1
    assert {r.finish_reason for r in results} == {"length"}
    assert [r.path for r in server.chat_requests] == ["/api/v1/chat/completions", "/api/v1/responses", "/api/v1/messages"]


@pytest.mark.parametrize("api", APIS)
def test_mid_stream_error_keeps_the_partial_text(server: FakeOpenRouter, api: str) -> None:
    server.push(Scenario(error_after=5))
    with pytest.raises(StreamError, match="during the reply: Provider disconnected") as info:
        client_for(server, api).chat("Hi", seed=2)
    result = info.value.result
    assert result is not None and len(result.text.split()) == 5 and result.ended == "failed"


@pytest.mark.parametrize("api", APIS)
def test_dropped_connection_keeps_the_partial_text(server: FakeOpenRouter, api: str) -> None:
    server.push(Scenario(drop_after=6))
    with pytest.raises(ConnectionDroppedError) as info:
        client_for(server, api).chat("Hi", seed=2)
    assert info.value.result is not None and len(info.value.result.text.split()) == 6


@pytest.mark.parametrize("api", APIS)
def test_each_shape_retries_a_429_and_works_split_into_odd_chunks(server: FakeOpenRouter, api: str) -> None:
    server.push(Scenario(status=429, retry_after="0"), Scenario(split=5, crlf=True))
    expected = client_for(server, "chat").chat("Hi", seed=8).text
    server.push(Scenario(status=429, retry_after="0"), Scenario(split=5, crlf=True))
    assert client_for(server, api).chat("Hi", seed=8).text == expected


@pytest.mark.parametrize(("api", "path", "fragment"), [
    ("chat", "/chat/completions", '"messages"'),
    ("responses", "/responses", '"max_output_tokens": 9'),
    ("messages", "/messages", '"stop_sequences"'),
])
def test_dry_run_shows_each_shape(ip: InteractiveShell, server: FakeOpenRouter, api: str, path: str, fragment: str) -> None:
    out = run(ip, f"--api {api} --dry-run --max-tokens 9 --stop END -s sys", "Hi")
    text = shown(out)
    assert f"POST {server.base_url}{path}" in text and fragment in text
    assert server.chat_requests == []


def test_magic_streams_through_every_shape(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    texts = []
    for api in APIS:
        run(ip, f"--api {api} --seed 5 -o r", "Hello there")
        texts.append(ip.user_ns["r"].text)
    assert len(set(texts)) == 1 and texts[0]


def test_api_needs_the_http_backend(ip: InteractiveShell) -> None:
    out = run(ip, "--api messages --backend local", "Hi")
    assert "--api messages needs the HTTP backend" in out.stderr
