"""The batch protocol (``_batch``): request lists in both formats, and whatever comes back read without losing a row."""

from __future__ import annotations

import json

import pytest

from granite_magic._batch import (
    ENDPOINT,
    answer_events,
    batch_body,
    batch_state,
    create_bodies,
    custom_id,
    jsonl_line,
    position_of,
    read_answer_lines,
    results_page,
)
from granite_magic._errors import ProtocolError
from granite_magic._events import Accumulator

COMPLETION = {"id": "gen-1", "object": "chat.completion", "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Positive."}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "cost": 0.00002}}


def result_of(body: dict) -> object:
    acc = Accumulator()
    for event in answer_events(body):
        acc.feed(event)
    return acc.result()


def test_a_custom_id_names_the_row_and_changes_with_the_request() -> None:
    assert position_of(custom_id(7, "ab" * 32)) == 7
    assert custom_id(7, "ab" * 32) != custom_id(7, "cd" * 32)
    assert position_of("someone-else's") is None


def test_a_batch_body_is_the_live_body_answered_whole() -> None:
    live = {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.5}
    assert batch_body(live) == {"model": "m", "messages": [], "temperature": 0.5}
    line = json.loads(jsonl_line("3-abc", batch_body(live)))
    assert line == {"custom_id": "3-abc", "method": "POST", "url": ENDPOINT, "body": batch_body(live)}


def test_create_bodies_put_endpoint_and_model_before_requests_in_chunks_the_api_takes() -> None:
    requests = [(f"{i}-k", {"messages": []}) for i in range(12)]
    bodies = list(create_bodies("ibm-granite/granite-4.0-h-micro", iter(requests), most=5))  # made one at a time
    assert [len(body["requests"]) for body in bodies] == [5, 5, 2]
    text = json.dumps(bodies[0])
    assert text.index('"endpoint"') < text.index('"model"') < text.index('"requests"')
    assert [r["custom_id"] for body in bodies for r in body["requests"]] == [i for i, _ in requests]


def test_a_whole_chat_completion_becomes_the_result_a_stream_of_it_would() -> None:
    result = result_of(COMPLETION)
    assert result.text == "Positive." and result.finish_reason == "stop"
    assert result.usage.completion_tokens == 3 and result.cost == 0.00002


def test_a_responses_object_becomes_a_result_too() -> None:
    body = {"object": "response", "status": "completed",
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi!"}]}],
            "usage": {"input_tokens": 4, "output_tokens": 2, "total_tokens": 6}}
    result = result_of(body)
    assert result.text == "Hi!" and result.usage.prompt_tokens == 4 and result.finish_reason == "stop"


def test_output_lines_in_vllm_and_openai_form_are_read_by_custom_id_and_bad_lines_do_not_lose_the_others() -> None:
    lines = [
        json.dumps({"id": "r1", "custom_id": "0-a", "response": {"status_code": 200, "request_id": "q", "body": COMPLETION}, "error": None}),
        json.dumps({"id": "r2", "custom_id": "1-b", "response": None, "error": {"code": "rate_limited", "message": "slow down"}}),
        json.dumps({"id": "r3", "custom_id": "2-c", "response": {"status_code": 400, "body": {"error": {"message": "bad request"}}}}),
        "{not json",
        json.dumps({"no": "custom id"}),
        "",
    ]
    answers, unreadable = read_answer_lines(lines)
    assert answers["0-a"].body == COMPLETION and answers["0-a"].error is None
    assert answers["1-b"].body is None and answers["1-b"].error == "slow down (rate_limited)"
    assert answers["2-c"].error == "HTTP 400: bad request"
    assert len(unreadable) == 2 and unreadable[0].startswith("line 4")


def test_a_reply_wins_over_an_error_for_the_same_request() -> None:
    ok = json.dumps({"custom_id": "0-a", "response": {"status_code": 200, "body": COMPLETION}, "error": None})
    failed = json.dumps({"custom_id": "0-a", "response": None, "error": {"message": "timeout"}})
    for lines in ([ok, failed], [failed, ok]):
        assert read_answer_lines(lines)[0]["0-a"].body == COMPLETION


def test_a_batch_object_and_a_results_page_are_read_and_anything_else_is_refused_with_what_it_was() -> None:
    state = batch_state({"id": "batch_1", "status": "failed", "request_counts": {"total": 3, "completed": 1, "failed": 2},
                         "error": {"message": "provider down"}})
    assert state.ended and (state.total, state.completed, state.failed, state.error) == (3, 1, 2, "provider down")
    assert not batch_state({"id": "b", "status": "in_progress"}).ended
    rows, cursor = results_page({"object": "list", "data": [{"custom_id": "x"}], "has_more": True, "next_cursor": "c2"})
    assert rows == [{"custom_id": "x"}] and cursor == "c2"
    assert results_page({"data": [], "has_more": False, "next_cursor": None}) == ([], None)
    for wrong in ({"status": "completed"}, [], "<html>"):
        with pytest.raises(ProtocolError, match="not a batch"):
            batch_state(wrong)
