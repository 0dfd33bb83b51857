"""The fake server's Batch API (OpenRouter's, chat only) and its ``vllm run-batch`` stand-in, over real HTTP.

A batch moves on only when polled, so every test here drives it poll by poll: nothing sleeps or reads the clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from granite_magic.testing import GRANITE_ID, FakeOpenRouter, fake_completion, run_batch_file

from .conftest import TEST_KEY

ENDPOINT = "/v1/chat/completions"
ENDED = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture
def api(server: FakeOpenRouter) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {TEST_KEY}"}) as client:
        yield client


def chat(text: str, **params: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "temperature": 0, **params}


def requests(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}{i}", "body": chat(f"Describe rock number {i}.")} for i in range(n)]


def create(api: httpx.Client, reqs: list[dict[str, Any]], model: str = GRANITE_ID) -> dict[str, Any]:
    response = api.post("/batches", json={"endpoint": ENDPOINT, "model": model, "requests": reqs})
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


def poll(api: httpx.Client, batch_id: str) -> dict[str, Any]:
    response = api.get(f"/batches/{batch_id}")
    assert response.status_code == 200, response.text
    polled: dict[str, Any] = response.json()
    return polled


def poll_to_end(api: httpx.Client, batch_id: str, most: int = 20) -> dict[str, Any]:
    for _ in range(most):
        batch = poll(api, batch_id)
        if batch["status"] in ENDED:
            return batch
    raise AssertionError(f"batch {batch_id} did not end in {most} polls")


def refused(response: httpx.Response, status: int = 400) -> str:
    """The message of an OpenRouter-style error answer with this status."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status
    message: str = error["message"]
    return message


def live(api: httpx.Client, body: dict[str, Any]) -> tuple[str, str | None, dict[str, Any]]:
    """A live streamed answer's text, finish reason and usage."""
    text, finish, usage = "", None, {}
    response = api.post("/chat/completions", json={"model": GRANITE_ID, "stream": True, **body})
    for line in response.text.splitlines():
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line.removeprefix("data: "))
        for choice in chunk["choices"]:
            text += choice["delta"].get("content") or ""
            finish = choice["finish_reason"] or finish
        usage = chunk.get("usage") or usage
    return text, finish, usage


# --- create, poll, read -------------------------------------------------------------------------------------------


def test_a_batch_is_accepted_validating_and_polled_step_by_step_to_its_results(api: httpx.Client, server: FakeOpenRouter) -> None:
    created = create(api, requests(3))
    assert created["id"].startswith("batch_")
    assert {k: v for k, v in created.items() if k not in ("id", "created_at")} == {
        "object": "batch", "endpoint": ENDPOINT, "model": GRANITE_ID, "status": "validating",
        "request_counts": {"total": 3, "completed": 0, "failed": 0}, "completion_window": "24h",
        "results": None, "usage": None, "error": None, "finalized_at": None}
    assert isinstance(created["created_at"], int)

    first = poll(api, created["id"])
    assert first["status"] == "in_progress" and first["results"] is None and first["usage"] is None
    done = poll(api, created["id"])  # by default a poll finishes every request left
    assert done["status"] == "completed" and done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert isinstance(done["finalized_at"], int) and done["error"] is None
    assert [row["custom_id"] for row in done["results"]] == ["r0", "r1", "r2"]
    assert poll(api, created["id"]) == done  # an ended batch stays as it is

    row = done["results"][0]
    assert set(row) == {"id", "custom_id", "response", "error"} and row["id"].startswith("batchreq_") and row["error"] is None
    assert row["response"]["status_code"] == 200 and row["response"]["request_id"] == row["response"]["body"]["id"]
    body = row["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == GRANITE_ID
    assert body["choices"][0]["index"] == 0 and body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["role"] == "assistant" and body["choices"][0]["message"]["content"]
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens", "cost"}
    usages = [r["response"]["body"]["usage"] for r in done["results"]]
    assert done["usage"]["total_tokens"] == sum(u["total_tokens"] for u in usages)
    assert done["usage"]["prompt_tokens"] == sum(u["prompt_tokens"] for u in usages)
    assert done["usage"]["completion_tokens"] == sum(u["completion_tokens"] for u in usages)
    assert server.costs[body["id"]] == body["usage"]["cost"]  # GET /generation knows a batch answer's cost too


@pytest.mark.parametrize("body", [
    chat("How much is 120 dollars in yen?"),
    chat("Write about granite.", max_tokens=5),
    chat("Write about granite.", seed=7, temperature=0.8, stop=["stone"]),
    chat("How much is 120 dollars in yen?", tools=[{"type": "function", "function": {
        "name": "convert", "parameters": {"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]}}}]),
], ids=["plain", "max_tokens", "seeded-stop", "tools"])
def test_a_batch_answer_says_what_the_live_answer_says_at_half_the_price(api: httpx.Client, body: dict[str, Any]) -> None:
    batch = create(api, [{"custom_id": "one", "body": body}])
    answer = poll_to_end(api, batch["id"])["results"][0]["response"]["body"]
    text, finish, usage = live(api, body)
    choice = answer["choices"][0]
    assert (choice["message"]["content"] or "") == text and choice["finish_reason"] == finish
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert answer["usage"][name] == usage[name]
    assert answer["usage"]["cost"] == pytest.approx(usage["cost"] / 2)
    if "tools" in body:
        call = choice["message"]["tool_calls"][0]
        assert call["function"]["name"] == "convert" and json.loads(call["function"]["arguments"]) == {"amount": 120}


def test_the_list_names_every_batch_newest_first_without_results(api: httpx.Client) -> None:
    first = create(api, requests(1))
    poll_to_end(api, first["id"])
    second = create(api, requests(2))
    listed = api.get("/batches").json()
    assert listed["object"] == "list"
    assert [b["id"] for b in listed["data"]] == [second["id"], first["id"]]
    assert [b["status"] for b in listed["data"]] == ["validating", "completed"]  # listing is not polling
    assert all(b["results"] is None for b in listed["data"])


def test_an_unknown_batch_is_404_everywhere(api: httpx.Client) -> None:
    for response in (api.get("/batches/batch_nope"), api.get("/batches/batch_nope/results"), api.post("/batches/batch_nope/cancel")):
        assert "batch_nope" in refused(response, 404)


def test_cancelling_ends_a_batch_with_the_answers_it_has(api: httpx.Client, server: FakeOpenRouter) -> None:
    server.batch_per_poll = 1
    batch = create(api, requests(3))
    poll(api, batch["id"])
    poll(api, batch["id"])  # one request finished
    cancelled = api.post(f"/batches/{batch['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["request_counts"]["completed"] == 1
    assert [row["custom_id"] for row in cancelled["results"]] == ["r0"]
    assert poll(api, batch["id"])["status"] == "cancelled"


# --- what a create call is refused for ----------------------------------------------------------------------------


def raw_create(api: httpx.Client, text: str) -> httpx.Response:
    return api.post("/batches", content=text.encode(), headers={"Content-Type": "application/json"})


REQUESTS_TEXT = json.dumps(requests(1))


@pytest.mark.parametrize("text, late", [
    (f'{{"requests": {REQUESTS_TEXT}, "endpoint": "{ENDPOINT}", "model": "{GRANITE_ID}"}}', "endpoint, model"),
    (f'{{"endpoint": "{ENDPOINT}", "requests": {REQUESTS_TEXT}, "model": "{GRANITE_ID}"}}', "model"),
    (f'{{"endpoint": "{ENDPOINT}", "model": "{GRANITE_ID}", "requests": {REQUESTS_TEXT}, "callback_url": "http://x/"}}',
     "callback_url"),
])
def test_endpoint_model_and_callback_url_must_come_before_requests_in_the_text(
        api: httpx.Client, server: FakeOpenRouter, text: str, late: str) -> None:
    assert json.loads(text)["requests"]  # the same JSON value as an accepted body: only the order differs
    assert refused(raw_create(api, text)).startswith(f"{late} must come before requests")
    assert server.batches == {} and server.batch_creates == []


def test_a_body_in_the_streamable_order_is_accepted_with_a_callback_url(api: httpx.Client) -> None:
    text = f'{{"endpoint": "{ENDPOINT}", "model": "{GRANITE_ID}", "callback_url": "http://x/", "requests": {REQUESTS_TEXT}}}'
    assert raw_create(api, text).status_code == 202


def bad(**change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"endpoint": ENDPOINT, "model": GRANITE_ID, "requests": requests(2)}
    return {k: v for k, v in {**body, **change}.items() if v is not None}


# The create bodies refused with a 400, and a word of what the message says.
REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "too many requests": (bad(requests=requests(5001)), "at most 5000 requests; this one has 5001"),
    "duplicate custom_id": (bad(requests=[*requests(2), requests(1)[0]]), "duplicate custom_id 'r0'"),
    "missing custom_id": (bad(requests=[{"body": chat("hi")}]), "requests[0] has no custom_id"),
    "empty custom_id": (bad(requests=[{"custom_id": "", "body": chat("hi")}]), "requests[0] has no custom_id"),
    "missing body": (bad(requests=[*requests(1), {"custom_id": "x"}]), "requests[1] (x) has no body"),
    "no requests": (bad(requests=[]), "requests must be a non-empty array"),
    "requests missing": (bad(requests=None), "requests must be a non-empty array"),
    "another endpoint": (bad(endpoint="/v1/embeddings"), "endpoint /v1/embeddings is not supported"),
    "no endpoint": (bad(endpoint=None), "endpoint is required"),
    "no model": (bad(model=None), "model is required"),
    "unlisted model": (bad(model="someone/else"), "Model someone/else does not support batches"),
}


@pytest.mark.parametrize("body, message", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_create_call_is_refused_with_a_400_saying_why(api: httpx.Client, server: FakeOpenRouter,
                                                        body: dict[str, Any], message: str) -> None:
    assert message in refused(api.post("/batches", json=body))
    assert server.batches == {} and server.batch_custom_ids == []


def test_without_the_key_every_batch_route_is_401(api: httpx.Client, server: FakeOpenRouter) -> None:
    batch = create(api, requests(1))
    with httpx.Client(base_url=server.base_url, headers={"Authorization": "Bearer wrong"}) as stranger:
        answers = [stranger.post("/batches", json=bad()), stranger.get("/batches"), stranger.get(f"/batches/{batch['id']}"),
                   stranger.get(f"/batches/{batch['id']}/results"), stranger.post(f"/batches/{batch['id']}/cancel")]
    assert all(refused(response, 401) for response in answers)
    assert server.batch_polls == {} and len(server.batch_creates) == 1


def test_a_model_can_be_made_to_refuse_batches_and_the_default_is_every_listed_model(
        api: httpx.Client, server: FakeOpenRouter) -> None:
    server.models["fake/other"] = {"id": "fake/other"}
    assert create(api, requests(1), model="fake/other")["model"] == "fake/other"  # listed, so it takes batches
    server.refuse_batches(GRANITE_ID)
    assert "does not support batches" in refused(api.post("/batches", json=bad()))
    assert create(api, requests(1), model="fake/other")["status"] == "validating"
    server.batch_models = {GRANITE_ID}
    assert create(api, requests(1))["model"] == GRANITE_ID
    assert "does not support batches" in refused(api.post("/batches", json=bad(model="fake/other")))


# --- progress, pages, failures --------------------------------------------------------------------------------------


def test_each_poll_finishes_the_set_number_of_requests_and_results_wait_for_the_end(
        api: httpx.Client, server: FakeOpenRouter) -> None:
    server.batch_per_poll = 2
    batch = create(api, requests(5))
    seen = [poll(api, batch["id"]) for _ in range(4)]
    assert [(b["status"], b["request_counts"]["completed"]) for b in seen] == [
        ("in_progress", 0), ("in_progress", 2), ("in_progress", 4), ("completed", 5)]
    assert all(b["results"] is None for b in seen[:3]) and len(seen[3]["results"]) == 5
    assert server.batch_polls == {batch["id"]: 4}


def test_results_are_refused_with_a_409_until_the_batch_has_ended(api: httpx.Client, server: FakeOpenRouter) -> None:
    server.batch_per_poll = 0  # a batch that never gets anywhere
    batch = create(api, requests(2))
    assert "validating" in refused(api.get(f"/batches/{batch['id']}/results"), 409)
    poll(api, batch["id"])
    assert poll(api, batch["id"])["status"] == "in_progress"
    assert "in_progress" in refused(api.get(f"/batches/{batch['id']}/results"), 409)
    assert server.batch_result_requests == [(batch["id"], None), (batch["id"], None)]


def test_results_come_in_cursor_pages_that_are_the_same_when_asked_again(api: httpx.Client, server: FakeOpenRouter) -> None:
    batch = create(api, requests(5))
    ended = poll_to_end(api, batch["id"])
    url = f"/batches/{batch['id']}/results"
    pages, cursor = [], None
    while True:
        page = api.get(url, params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        assert page["object"] == "list"
        pages.append(page)
        again = api.get(url, params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        assert again == page  # a retried page is the same page
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert [len(p["data"]) for p in pages] == [2, 2, 1] and [p["has_more"] for p in pages] == [True, True, False]
    assert pages[-1]["next_cursor"] is None
    assert [row for p in pages for row in p["data"]] == ended["results"]
    whole = api.get(url).json()  # the default limit (1000) holds them all
    assert whole["data"] == ended["results"] and whole["has_more"] is False and whole["next_cursor"] is None
    assert len(server.batch_result_requests) == 7
    assert server.batch_result_requests[2] == (batch["id"], pages[0]["next_cursor"])
    assert "unknown cursor" in refused(api.get(url, params={"cursor": "batchreq_nope"}))
    assert "limit must be a positive integer" in refused(api.get(url, params={"limit": "0"}))


def test_chosen_requests_fail_by_custom_id_and_every_nth(api: httpx.Client, server: FakeOpenRouter) -> None:
    server.batch_fail_ids = {"r0"}
    server.batch_fail_every = 3  # the 3rd and 6th request of a batch
    ended = poll_to_end(api, create(api, requests(6))["id"])
    failed = [row["custom_id"] for row in ended["results"] if row["error"] is not None]
    assert failed == ["r0", "r2", "r5"]
    assert ended["status"] == "completed" and ended["request_counts"] == {"total": 6, "completed": 3, "failed": 3}
    row = ended["results"][0]
    assert row["response"] is None and row["error"] == {"code": "provider_error", "message": "Provider returned error"}
    answered = [r["response"]["body"]["usage"]["total_tokens"] for r in ended["results"] if r["response"]]
    assert ended["usage"]["total_tokens"] == sum(answered)


def test_a_request_the_live_api_would_refuse_fails_on_its_own(api: httpx.Client) -> None:
    reqs = [*requests(1), {"custom_id": "empty", "body": {"messages": []}}]
    ended = poll_to_end(api, create(api, reqs)["id"])
    assert ended["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    assert ended["results"][1]["error"] == {"code": "invalid_request", "message": "messages must be a non-empty list"}


def test_a_batch_told_to_fail_ends_failed_at_its_next_poll_keeping_its_answers(api: httpx.Client, server: FakeOpenRouter) -> None:
    server.batch_per_poll = 1
    batch = create(api, requests(3))
    poll(api, batch["id"])
    poll(api, batch["id"])  # one answered
    server.fail_batch(batch["id"], "Provider batch failed")
    failed = poll(api, batch["id"])
    assert failed["status"] == "failed" and failed["error"] == {"message": "Provider batch failed"}
    assert failed["request_counts"] == {"total": 3, "completed": 1, "failed": 0}
    assert [row["custom_id"] for row in failed["results"]] == ["r0"] and failed["usage"]["total_tokens"] > 0
    assert api.get(f"/batches/{batch['id']}/results").json()["data"] == failed["results"]  # an ended batch's pages


def test_batches_made_while_a_failure_is_set_fail_at_their_first_poll(api: httpx.Client, server: FakeOpenRouter) -> None:
    server.batch_failure = "Validation failed"
    batch = create(api, requests(2))
    assert batch["status"] == "validating"
    failed = poll(api, batch["id"])
    assert failed["status"] == "failed" and failed["error"] == {"message": "Validation failed"} and failed["results"] == []
    server.batch_failure = None
    later = create(api, requests(2))
    server.fail_batch(later["id"], "Window passed", status="expired")
    assert poll(api, later["id"])["status"] == "expired"
    with pytest.raises(ValueError, match="cannot be made to end 'completed'"):
        server.fail_batch(later["id"], status="completed")


# --- counters, and the knobs from another process ----------------------------------------------------------------


def test_the_server_counts_creates_polls_and_pages(api: httpx.Client, server: FakeOpenRouter) -> None:
    first = create(api, requests(2, "a"))
    second = create(api, requests(1, "b"))
    poll_to_end(api, first["id"])
    poll(api, second["id"])
    api.get(f"/batches/{first['id']}/results")
    assert [body["model"] for body in server.batch_creates] == [GRANITE_ID, GRANITE_ID]
    assert server.batch_creates[0]["requests"] == requests(2, "a")
    assert server.batch_custom_ids == ["a0", "a1", "b0"]
    assert server.batch_polls == {first["id"]: 2, second["id"]: 1}
    assert server.batch_result_requests == [(first["id"], None)]
    assert server.chat_requests == []  # a batch's requests are not live requests
    counters = httpx.get(server.base_url.removesuffix("/api/v1") + "/_batches").json()
    assert counters["creates"] == [["a0", "a1"], ["b0"]]
    assert counters["polls"] == {first["id"]: 2, second["id"]: 1}
    assert counters["result_requests"] == [[first["id"], None]]
    assert [b["status"] for b in counters["batches"]] == ["completed", "in_progress"]
    server.reset()
    assert (server.batches, server.batch_creates, server.batch_polls, server.batch_result_requests) == ({}, [], {}, [])
    assert create(api, requests(1))["id"] not in (first["id"], second["id"])  # an id is never given twice


def control(server: FakeOpenRouter, settings: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.base_url.removesuffix("/api/v1") + "/_control", json={"batches": settings})


def test_control_turns_every_batch_knob_from_another_process(api: httpx.Client, server: FakeOpenRouter) -> None:
    assert control(server, {"per_poll": 1, "fail_ids": ["r1"], "fail_every": 4, "failure": None}).status_code == 200
    assert (server.batch_per_poll, server.batch_fail_ids, server.batch_fail_every) == (1, {"r1"}, 4)
    batch = create(api, requests(4))
    assert [poll(api, batch["id"])["request_counts"]["completed"] for _ in range(3)] == [0, 1, 1]  # r1 failed
    assert control(server, {"fail_batch": {"id": batch["id"], "message": "gone"}}).status_code == 200
    assert poll(api, batch["id"])["error"] == {"message": "gone"}

    assert control(server, {"refuse": [GRANITE_ID]}).status_code == 200
    assert "does not support batches" in refused(api.post("/batches", json=bad()))
    assert control(server, {"models": None}).status_code == 200
    assert control(server, {"failure": "down", "per_poll": None}).status_code == 200
    assert poll(api, create(api, requests(1))["id"])["status"] == "failed"

    assert "unknown batch settings: ['speed']" in refused(control(server, {"speed": 2}))
    assert "batch settings" in refused(control(server, {"fail_batch": {"id": "batch_nope"}}))


# --- the vllm run-batch stand-in ---------------------------------------------------------------------------------


def write_input(path: Path, bodies: dict[str, dict[str, Any]], url: str = ENDPOINT) -> None:
    lines = [{"custom_id": cid, "method": "POST", "url": url, "body": {"model": GRANITE_ID, **body}} for cid, body in bodies.items()]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


BODIES = {f"q{i}": chat(f"Name rock {i}.") for i in range(4)}


def test_run_batch_file_answers_in_order_with_failures_inline_and_missing_ids_left_out(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", BODIES)
    run_batch_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl", fail=["q1"], missing=["q2"])
    lines = read_lines(tmp_path / "out.jsonl")
    assert [line["custom_id"] for line in lines] == ["q0", "q1", "q3"]
    ok, failed = lines[0], lines[1]
    assert set(ok) == {"id", "custom_id", "response", "error"} and ok["id"].startswith("vllm-") and ok["error"] is None
    assert ok["response"]["status_code"] == 200 and ok["response"]["request_id"].startswith("vllm-batch-")
    body = ok["response"]["body"]
    expected = fake_completion({"model": GRANITE_ID, **BODIES["q0"]}, price=None)
    assert body["object"] == "chat.completion" and body["choices"] == expected["choices"] and body["usage"] == expected["usage"]
    assert "cost" not in body["usage"]  # a local engine bills nothing
    assert failed["response"]["status_code"] == 500 and failed["response"]["body"] is None
    assert failed["error"]["code"] == 500 and failed["error"]["message"]


def test_run_batch_file_answers_what_the_server_answers_live(api: httpx.Client, tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", BODIES)
    run_batch_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    body = read_lines(tmp_path / "out.jsonl")[2]["response"]["body"]
    text, finish, usage = live(api, BODIES["q2"])
    assert body["choices"][0]["message"]["content"] == text and body["choices"][0]["finish_reason"] == finish
    assert body["usage"]["completion_tokens"] == usage["completion_tokens"]


def test_run_batch_file_in_openai_style_puts_failures_in_the_errors_file(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", BODIES)
    run_batch_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl", errors_path=tmp_path / "errors.jsonl", fail=["q0", "q3"],
                   style="openai")
    assert [line["custom_id"] for line in read_lines(tmp_path / "out.jsonl")] == ["q1", "q2"]
    errors = read_lines(tmp_path / "errors.jsonl")
    assert [line["custom_id"] for line in errors] == ["q0", "q3"]
    assert errors[0]["id"].startswith("batch_req_") and errors[0]["error"] is None
    assert errors[0]["response"]["status_code"] == 500 and errors[0]["response"]["body"]["error"]["type"] == "server_error"

    run_batch_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl", errors_path=tmp_path / "errors.jsonl", style="openai")
    assert len(read_lines(tmp_path / "out.jsonl")) == 4 and (tmp_path / "errors.jsonl").read_text() == ""


def test_run_batch_file_fails_a_line_that_is_not_a_chat_request(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", {"e": {"input": "x"}}, url="/v1/embeddings")
    with (tmp_path / "in.jsonl").open("a") as file:
        file.write(json.dumps({"custom_id": "m", "method": "POST", "url": ENDPOINT, "body": {"messages": []}}) + "\n")
    run_batch_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    lines = read_lines(tmp_path / "out.jsonl")
    assert [(line["response"]["status_code"], line["error"]["code"]) for line in lines] == [(400, 400), (400, 400)]
    assert "/v1/embeddings" in lines[0]["error"]["message"] and "messages" in lines[1]["error"]["message"]


def test_run_batch_file_refuses_a_style_it_does_not_know_or_an_errors_file_where_none_is_written(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", BODIES)
    with pytest.raises(ValueError, match="style must be one of"):
        run_batch_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl", style="sglang")
    with pytest.raises(ValueError, match="takes no errors_path"):
        run_batch_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl", errors_path=tmp_path / "errors.jsonl")
    with pytest.raises(ValueError, match="needs errors_path"):
        run_batch_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl", style="openai")
    assert not (tmp_path / "out.jsonl").exists()
