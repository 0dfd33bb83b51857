"""Decoding, with no I/O: SSE framing (``_sse``), the chat decoder and accumulation (``_events``), and an error
status or body mapped to a typed error (``_errors``)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from granite_magic import _errors as errors
from granite_magic._errors import error_for_status, parse_retry_after
from granite_magic._events import Accumulator, ChunkMeta, Done, ErrorEvent, Event, Finish, TextDelta, ToolCallDelta, UsageReport
from granite_magic._shapes import ChatStreamDecoder
from granite_magic._sse import ServerSentEvent, SSEDecoder


def decode_all(*pieces: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = [e for piece in pieces for e in decoder.feed(piece)]
    return events + decoder.close()


def test_comments_are_ignored() -> None:
    events = decode_all(b": OPENROUTER PROCESSING\n\ndata: {\"a\": 1}\n\n: OPENROUTER PROCESSING\n\ndata: [DONE]\n\n")
    assert [e.data for e in events] == ['{"a": 1}', "[DONE]"]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_is_accepted(newline: bytes) -> None:
    stream = newline.join([b"event: ping", b"data: one", b"", b"data: two", b"", b""])
    events = decode_all(stream)
    assert [(e.event, e.data) for e in events] == [("ping", "one"), ("message", "two")]


def test_multiline_data_is_joined_with_newline() -> None:
    events = decode_all(b"data: first\ndata: second\ndata:third\n\n")
    assert events == [ServerSentEvent("first\nsecond\nthird")]


def test_crlf_split_between_reads_is_one_line_end() -> None:
    assert decode_all(b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n") == [ServerSentEvent("a"), ServerSentEvent("b")]


def test_multibyte_character_split_across_reads() -> None:
    data = "data: café ☕\n\n".encode()
    cut = data.index("☕".encode()) + 1
    assert decode_all(data[:cut], data[cut:]) == [ServerSentEvent("café ☕")]


def test_last_event_without_blank_line_is_kept_on_close() -> None:
    assert decode_all(b"data: [DONE]") == [ServerSentEvent("[DONE]")]


def test_id_and_retry_fields() -> None:
    (event,) = decode_all(b"id: 7\nretry: 1500\ndata: x\n\n")
    assert (event.id, event.retry) == ("7", 1500)


SAMPLE_STREAM = (
    b": OPENROUTER PROCESSING\r\n\r\n"
    b'data: {"choices":[{"delta":{"content":"Hel"}}]}\r\n\r\n'
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"choices":[{"delta":{"content":"lo \xc3\xa9t\xc3\xa9"}}]}\n\n'
    b"event: note\rdata: line one\rdata: line two\r\r"
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"cost":0.5}}\n\n'
    b"data: [DONE]\n\n"
)


@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE_STREAM)), max_size=30))
def test_any_split_of_the_bytes_gives_the_same_events(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(SAMPLE_STREAM)]
    pieces = [SAMPLE_STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert decode_all(*pieces) == decode_all(SAMPLE_STREAM)
    assert len(decode_all(SAMPLE_STREAM)) == 5


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=7))
def test_arbitrary_bytes_never_crash_and_split_invariantly(data: bytes, step: int) -> None:
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    assert decode_all(*pieces) == decode_all(data)


def chunk(**fields: object) -> str:
    return json.dumps({"id": "gen-1", "model": "m", "provider": "P", "choices": [], **fields})


def decode_chat_chunk(data: str) -> list[Event]:
    """One ``data:`` payload through the production chat decoder."""
    decoder = ChatStreamDecoder()
    return decoder.feed(f"data: {data}\n\n".encode())


def test_chunk_to_typed_events() -> None:
    events = decode_chat_chunk(chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]))
    assert events == [ChunkMeta("m", "P", "gen-1"), TextDelta("Hi")]
    events = decode_chat_chunk(chunk(choices=[{"delta": {}, "finish_reason": "length", "native_finish_reason": "max_tokens"}]))
    assert events[-1] == Finish("length", "max_tokens")
    assert decode_chat_chunk("[DONE]") == [Done()]


def test_usage_chunk() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "cost": 0.00012,
             "prompt_tokens_details": {"cached_tokens": 2}, "completion_tokens_details": {"reasoning_tokens": 1}}
    (_, report) = decode_chat_chunk(chunk(usage=usage))
    assert isinstance(report, UsageReport)
    assert (report.usage.prompt_tokens, report.usage.completion_tokens, report.usage.cost) == (5, 7, 0.00012)
    assert (report.usage.cached_tokens, report.usage.reasoning_tokens) == (2, 1)


@pytest.mark.parametrize("code", [502, "server_error", None])
def test_mid_stream_error_accepts_any_code(code: object) -> None:
    error = {"message": "Provider disconnected"} | ({"code": code} if code is not None else {})
    events = decode_chat_chunk(chunk(error=error, choices=[{"delta": {"content": ""}, "finish_reason": "error"}]))
    assert Finish("error") in events
    (event,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert (event.message, event.code) == ("Provider disconnected", code)
    assert event.transient == (code is not None)  # a 502 or a server_error is worth retrying before the first token


def test_non_json_data_is_a_protocol_error_that_quotes_it() -> None:
    with pytest.raises(errors.ProtocolError, match=r"not JSON.*Bad gateway"):
        decode_chat_chunk("<html>Bad gateway</html>")


def test_tool_call_fragments_are_joined_per_index() -> None:
    acc = Accumulator()
    for delta in [
        ToolCallDelta(0, "call_1", "get_weather", '{"ci'),
        ToolCallDelta(1, "call_2", "get_time", "{}"),
        ToolCallDelta(0, None, None, 'ty": "Paris"}'),
    ]:
        acc.feed(delta)
    acc.feed(Finish("tool_calls"))
    result = acc.result()
    assert [(c.name, c.arguments, c.id) for c in result.tool_calls] == [("get_weather", {"city": "Paris"}, "call_1"),
                                                                         ("get_time", {}, "call_2")]
    assert result.finish_reason == "tool_calls" and not result.partial


def test_accumulator_times_and_result() -> None:
    now = [10.0]
    acc = Accumulator({"seed": 1}, clock=lambda: now[0])
    now[0] = 10.5
    acc.feed(TextDelta("a"))
    for _ in range(10):
        now[0] += 0.1
        acc.feed(TextDelta("b"))
    acc.feed(Finish("stop"))
    acc.feed(ChunkMeta("granite", "Cloudflare"))
    result = acc.result()
    assert result.text == "a" + "b" * 10
    assert result.ttft_s == pytest.approx(0.5) and result.duration_s == pytest.approx(1.5)
    assert result.tokens_per_s == pytest.approx(10.0)  # usage missing: counted from deltas
    assert (result.model, result.provider, result.params, result.partial) == ("granite", "Cloudflare", {"seed": 1}, False)


def test_result_without_finish_is_partial() -> None:
    acc = Accumulator()
    acc.feed(TextDelta("half"))
    assert acc.result().partial


def test_chat_stream_decoder_end_to_end() -> None:
    decoder = ChatStreamDecoder()
    events = decoder.feed(SAMPLE_STREAM) + decoder.close()
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hel", "lo été"]
    assert isinstance(events[-1], Done)


@pytest.mark.parametrize(
    ("status", "kind", "fragment"),
    [
        (400, errors.BadRequestError, "The API said: max_tokens too big"),
        (401, errors.AuthenticationError, "missing, invalid or disabled"),
        (402, errors.InsufficientCreditsError, "credits"),
        (403, errors.ModerationError, "Flagged for: violence"),
        (404, errors.ModelNotFoundError, "'x/y'"),
        (429, errors.RateLimitError, "Rate limited"),
        (503, errors.ServerError, "HTTP 503"),
    ],
)
def test_error_for_status_is_typed_and_states_the_facts(status: int, kind: type, fragment: str) -> None:
    body = json.dumps({"error": {"code": status, "message": "max_tokens too big" if status == 400 else "no",
                                 "metadata": {"reasons": ["violence"]} if status == 403 else {}}}).encode()
    error = error_for_status(status, body, model="x/y")
    assert isinstance(error, kind) and error.status == status
    assert fragment in str(error)


def test_error_body_that_is_not_json() -> None:
    error = error_for_status(502, b"<html>bad gateway</html>", model="m")
    assert isinstance(error, errors.ServerError) and "bad gateway" in str(error)


def test_error_without_code_field() -> None:
    body = json.dumps({"error": {"message": "busy", "availability": {"retryable": True}}}).encode()
    assert "busy" in str(error_for_status(503, body, model="m"))


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
