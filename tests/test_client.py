"""The client against a real HTTP server on 127.0.0.1 speaking the OpenRouter protocol."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from granite_magic import (
    AuthenticationError,
    BadRequestError,
    ConnectionDroppedError,
    GenerationInterrupted,
    GraniteClient,
    InsufficientCreditsError,
    InvalidParameterError,
    MissingKeyError,
    ModelNotFoundError,
    ModerationError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    StallError,
    StreamError,
)
from granite_magic.testing import FakeOpenRouter, Scenario, fake_reply

from .conftest import FAST_RETRY, TEST_KEY, interrupt_after, wait_until


def expected_text(prompt: str, **params: object) -> str:
    return "".join(fake_reply([{"role": "user", "content": prompt}], dict(params)))


def test_chat_streams_the_whole_reply_with_usage_and_metadata(client: GraniteClient, server: FakeOpenRouter) -> None:
    result = client.chat("Say hi", seed=1)
    assert result.text == expected_text("Say hi", seed=1)
    assert result.finish_reason == "stop" and not result.partial and result.error is None
    assert result.model == "ibm-granite/granite-4.0-h-micro" and result.provider == "FakeProvider"
    assert result.generation_id and result.generation_id.startswith("gen-")
    assert result.usage.completion_tokens == len(result.text.split())
    assert result.usage.cost is not None and result.usage.cost > 0
    assert result.ttft_s is not None and result.duration_s is not None and result.duration_s >= result.ttft_s
    assert result.params == {"seed": 1}


def test_same_seed_same_text_other_seed_other_text(client: GraniteClient) -> None:
    first, again, other = (client.chat("Tell a story", seed=s, temperature=0.8).text for s in (1, 1, 2))
    assert first == again
    assert first != other


def test_request_holds_exactly_the_fields_that_were_set(client: GraniteClient, server: FakeOpenRouter) -> None:
    client.chat("Hi", system="Be brief.", temperature=0.3, top_k="40", stop=["END"])
    (request,) = server.chat_requests
    assert request.sampling == {"temperature": 0.3, "top_k": 40, "stop": ["END"]}
    assert request.body["model"] == "ibm-granite/granite-4.0-h-micro"
    assert request.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert request.body["stream"] is True


def test_attribution_and_auth_headers(client: GraniteClient, server: FakeOpenRouter) -> None:
    client.chat("Hi")
    headers = {k.lower(): v for k, v in server.chat_requests[0].headers.items()}
    assert headers["authorization"] == f"Bearer {TEST_KEY}"
    assert headers["x-title"] == "granite-magic"
    assert "granite-magic" in headers["http-referer"]


def test_invalid_parameter_is_refused_before_anything_is_sent(client: GraniteClient, server: FakeOpenRouter) -> None:
    with pytest.raises(InvalidParameterError, match="0 <= temperature <= 2"):
        client.chat("Hi", temperature=5)
    assert server.requests == []


def test_one_http_connection_is_reused(client: GraniteClient, server: FakeOpenRouter) -> None:
    for _ in range(3):
        client.chat("Hi")
    # keep-alive: one TCP connection (one client port) carried all three requests
    assert len(server.chat_requests) == 3
    assert len({r.client_port for r in server.chat_requests}) == 1


@pytest.mark.parametrize(
    ("status", "kind", "fragment"),
    [
        (400, BadRequestError, "The API said"),
        (401, AuthenticationError, "missing, invalid or disabled"),
        (402, InsufficientCreditsError, "credits"),
        (403, ModerationError, "moderation"),
        (404, ModelNotFoundError, "granite-4.0-h-micro"),
    ],
)
def test_client_errors_are_not_retried_and_say_what_happened(
    client: GraniteClient, server: FakeOpenRouter, status: int, kind: type, fragment: str
) -> None:
    server.push(Scenario(status=status))
    with pytest.raises(kind) as info:
        client.chat("Hi")
    assert fragment in str(info.value)
    assert len(server.chat_requests) == 1


def test_wrong_key_gives_401(server: FakeOpenRouter) -> None:
    client = GraniteClient(base_url=server.base_url, api_key="sk-wrong", retry=FAST_RETRY)
    with pytest.raises(AuthenticationError, match="missing, invalid or disabled"):
        client.chat("Hi")


def test_unknown_model_gives_404(client: GraniteClient) -> None:
    with pytest.raises(ModelNotFoundError, match="nobody/nothing"):
        client.chat("Hi", model="nobody/nothing")


def test_missing_key_for_openrouter_is_refused_before_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    client = GraniteClient(base_url="https://openrouter.ai/api/v1")
    with pytest.raises(MissingKeyError, match="OPENROUTER_API_KEY") as info:
        client.chat("Hi")
    assert "api_key=" in str(info.value)  # what a Python user can do; the magic adds `%granite key`


def test_local_servers_need_no_key(server: FakeOpenRouter) -> None:
    server.api_key = None
    try:
        result = GraniteClient(base_url=server.base_url, api_key=None).chat("Hi")
    finally:
        server.api_key = TEST_KEY
    assert result.text
    assert "Authorization" not in server.chat_requests[0].headers


def test_429_waits_for_retry_after_then_succeeds(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(Scenario(status=429, retry_after="1"))
    result = client.chat("Hi", seed=3)
    assert result.text == expected_text("Hi", seed=3)
    first, second = server.chat_requests
    assert second.received_at - first.received_at >= 0.95


@pytest.mark.parametrize("status", [408, 500, 502, 503])
def test_server_errors_are_retried(client: GraniteClient, server: FakeOpenRouter, status: int) -> None:
    server.push(Scenario(status=status), Scenario(status=status))
    assert client.chat("Hi").text
    assert len(server.chat_requests) == 3


def test_retries_are_bounded(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(*[Scenario(status=503)] * 10)
    with pytest.raises(ServerError, match="HTTP 503"):
        client.chat("Hi")
    assert len(server.chat_requests) == FAST_RETRY.max_attempts


def test_429_after_every_retry(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(*[Scenario(status=429, retry_after="0")] * 10)
    with pytest.raises(RateLimitError, match=r"Rate limited \(HTTP 429\)"):
        client.chat("Hi")
    assert len(server.chat_requests) == FAST_RETRY.max_paced_attempts == 8  # a server pacing us: tried longer


def test_a_429_without_retry_after_gets_the_ordinary_attempts(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(*[Scenario(status=429)] * 10)
    with pytest.raises(RateLimitError):
        client.chat("Hi")
    assert len(server.chat_requests) == FAST_RETRY.max_attempts == 4


def test_retry_delays_grow_with_jitter_and_retry_after_is_capped() -> None:
    policy = RetryPolicy(base_delay_s=1, multiplier=2, max_delay_s=5, max_retry_after_s=30)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 5), (9, 5)]:
        delays = {policy.delay(attempt, None) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered
    assert policy.delay(1, 7) == 7
    assert policy.delay(1, 3600) == 30


def test_mid_stream_error_keeps_the_partial_reply_and_is_not_retried(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(Scenario(error_after=5))
    with pytest.raises(StreamError, match="Provider disconnected") as info:
        client.chat("Hi", seed=4)
    result = info.value.result
    assert result is not None and result.partial
    assert result.text == "".join(fake_reply([{"role": "user", "content": "Hi"}], {"seed": 4})[:5])
    assert result.ended == "failed" and result.error == str(info.value)
    assert len(server.chat_requests) == 1


def test_error_event_before_any_token_is_retried(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(Scenario(error_after=0, error_code="server_error"))
    assert client.chat("Hi").text
    assert len(server.chat_requests) == 2


def test_dropped_connection_keeps_the_partial_reply(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(Scenario(drop_after=7))
    with pytest.raises(ConnectionDroppedError, match="connection dropped") as info:
        client.chat("Hi", seed=5)
    assert info.value.result is not None
    assert info.value.result.text == "".join(fake_reply([{"role": "user", "content": "Hi"}], {"seed": 5})[:7])
    assert len(server.chat_requests) == 1


def test_drop_before_any_token_is_retried(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(Scenario(drop_after=0))
    assert client.chat("Hi").text
    assert len(server.chat_requests) == 2


def test_stream_that_ends_without_finish_or_done_is_reported(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(Scenario(finish=False, done=False, usage=False, tokens=3))
    with pytest.raises(ConnectionDroppedError, match="closed the stream before the reply finished") as info:
        client.chat("Hi")
    assert info.value.result is not None and len(info.value.result.text.split()) == 3


def test_done_without_a_finish_reason_is_a_reply_cut_short(client: GraniteClient, server: FakeOpenRouter) -> None:
    """llama-cpp-python's server ends a reply it cuts short with [DONE] and no finish reason: not a whole reply."""
    server.push(Scenario(finish=False, done=True, usage=False, tokens=3))
    with pytest.raises(ConnectionDroppedError, match="closed the stream before the reply finished") as info:
        client.chat("Hi")
    assert info.value.result is not None and info.value.result.partial and len(info.value.result.text.split()) == 3
    assert len(server.chat_requests) == 1  # text had arrived, and nothing else was in flight: not sent again


def test_finish_without_done_is_complete(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(Scenario(done=False))
    assert client.chat("Hi").finish_reason == "stop"


def test_stall_longer_than_read_timeout_keeps_partial(server: FakeOpenRouter) -> None:
    client = GraniteClient(base_url=server.base_url, api_key=TEST_KEY, read_timeout_s=0.3, retry=FAST_RETRY)
    server.push(Scenario(stall_after=4, stall_s=3, keepalive_every=0))
    with pytest.raises(StallError, match=r"No new data arrived for 0\.3 s") as info:
        client.chat("Hi")
    assert info.value.result is not None and len(info.value.result.text.split()) == 4
    assert len(server.chat_requests) == 1


def test_keepalive_comments_do_not_count_as_a_stall(server: FakeOpenRouter) -> None:
    client = GraniteClient(base_url=server.base_url, api_key=TEST_KEY, read_timeout_s=2, retry=FAST_RETRY)
    server.push(Scenario(ttft_s=0.5, tokens_per_s=200, tokens=40, keepalive_every=1))
    assert len(client.chat("Hi").text.split()) == 40


@pytest.mark.parametrize("scenario", [Scenario(split=7), Scenario(split=1, tokens=30), Scenario(crlf=True), Scenario(crlf=True, split=3)])
def test_odd_chunk_boundaries_and_crlf_give_the_same_text(client: GraniteClient, server: FakeOpenRouter, scenario: Scenario) -> None:
    server.push(scenario)
    tokens = scenario.tokens
    expected = "".join(fake_reply([{"role": "user", "content": "Hi"}], {"seed": 9}, tokens=tokens))
    result = client.chat("Hi", seed=9)
    assert result.text == expected and result.usage.completion_tokens == len(expected.split())


def test_a_20000_token_reply_arrives_whole(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(Scenario(tokens=20_000))
    updates: list[int] = []
    result = client.chat("Write a lot", seed=1, on_update=lambda acc: updates.append(acc.chunks))
    assert len(result.text.split()) == 20_000 == result.usage.completion_tokens
    assert updates == sorted(updates) and updates[-1] == 20_000


def test_stop_and_max_tokens_reach_the_wire_and_the_result_says_why_it_ended(client: GraniteClient, server: FakeOpenRouter) -> None:
    result = client.chat("Hi", max_tokens=5, stop="END")
    body = server.chat_requests[-1].body
    assert (body["max_tokens"], body["stop"]) == (5, ["END"])
    assert (result.finish_reason, result.usage.completion_tokens, result.params) == ("length", 5, {"max_tokens": 5, "stop": ["END"]})


def test_a_rate_limited_wait_is_shown_while_it_lasts(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(Scenario(status=429, retry_after="1"))
    notes: list[str | None] = []
    client.chat("Hi", on_update=lambda progress: notes.append(progress.note))
    assert notes[0] == "rate limited, retrying in 1 s (attempt 2 of 8)"
    assert notes[-1] is None  # cleared once text arrives


def test_on_update_sees_the_text_grow(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(Scenario(tokens=30, tokens_per_s=300))
    seen: list[str] = []
    result = client.chat("Hi", on_update=lambda acc: seen.append(acc.text))
    assert len(seen) >= 2 and all(result.text.startswith(t) for t in seen)


def test_models_are_read_once_and_cached(client: GraniteClient, server: FakeOpenRouter) -> None:
    info = client.model_info()
    assert info is not None
    assert info.context_length == 131000
    assert info.per_million(info.prompt_price) == pytest.approx(0.017)
    assert info.per_million(info.completion_price) == pytest.approx(0.112)
    assert "seed" in info.supported_parameters
    client.models()
    assert len([r for r in server.requests if r.path.endswith("/models")]) == 1
    client.models(refresh=True)
    assert len([r for r in server.requests if r.path.endswith("/models")]) == 2


def test_interrupt_cancels_the_request_and_keeps_the_partial_text(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(Scenario(tokens=300, tokens_per_s=20))  # 15 s if left alone
    with pytest.raises(GenerationInterrupted) as info:
        client.chat("Hi", on_update=interrupt_after(5))
    result = info.value.result
    assert result.ended == "interrupted" and result.partial
    assert 5 <= len(result.text.split()) < 300
    # the HTTP stream was closed: the server's next write failed
    assert wait_until(lambda: server.chat_requests[0].disconnected)
    # and the client is still usable
    assert client.chat("Hi again").text


def test_a_ctrl_c_that_reaches_another_thread_still_stops_the_reply(client: GraniteClient, server: FakeOpenRouter) -> None:
    """A SIGINT sent to the process may land on any of its threads (here the loop's); Python raises it in the main
    thread only, once that thread runs Python again: a caller waiting for the reply must, before the reply ends."""
    import signal

    server.push(Scenario(tokens=300, tokens_per_s=20))  # 15 s if left alone
    fired: list[bool] = []

    def interrupt_this_thread(progress: Any) -> None:
        if progress.chunks >= 5 and not fired:
            fired.append(True)
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    with pytest.raises(GenerationInterrupted) as info:
        client.chat("Hi", on_update=interrupt_this_thread)
    assert fired and info.value.result.ended == "interrupted" and len(info.value.result.text.split()) < 300
    assert wait_until(lambda: server.chat_requests[0].disconnected)


def test_cancelling_achat_closes_the_stream(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(Scenario(tokens=300, tokens_per_s=20))
    first_token = threading.Event()

    async def main() -> None:
        task = asyncio.ensure_future(client.achat("Hi", on_update=lambda acc: first_token.set()))
        while not first_token.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert wait_until(lambda: server.chat_requests[0].disconnected)


def test_blocking_chat_works_inside_a_running_loop(client: GraniteClient) -> None:
    async def cell() -> str:
        return client.chat("Hi", seed=2).text  # what a Jupyter cell does: a blocking call inside a loop

    assert asyncio.run(cell()) == expected_text("Hi", seed=2)


def test_achat_is_the_twin_of_chat(client: GraniteClient) -> None:
    blocking = client.chat("Twins", seed=8, temperature=0.5)
    awaited = asyncio.run(client.achat("Twins", seed=8, temperature=0.5))
    assert (awaited.text, awaited.finish_reason, awaited.usage, awaited.params) == (
        blocking.text, blocking.finish_reason, blocking.usage, blocking.params)


def test_the_key_never_leaks(server: FakeOpenRouter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = GraniteClient(base_url=server.base_url, api_key=TEST_KEY, retry=FAST_RETRY)
    seen: list[str] = [repr(client), str(client)]
    result = client.chat("Hi")
    seen += [repr(result), str(result), str(result.to_dict())]
    for scenario in [Scenario(status=401), Scenario(status=402), Scenario(error_after=2), Scenario(drop_after=2),
                     Scenario(status=503), Scenario(status=503), Scenario(status=503), Scenario(status=503)]:
        server.push(scenario)
    for _ in range(5):
        try:
            client.chat("Hi")
        except Exception as exc:
            seen += [str(exc), repr(exc), repr(getattr(exc, "result", None)), repr(vars(exc))]
    wrong = GraniteClient(base_url=server.base_url, api_key="sk-or-v1-wrong-key-xyz")
    try:
        wrong.chat("Hi")
    except AuthenticationError as exc:
        seen.append(str(exc))
    seen.append(caplog.text)
    assert len(seen) > 10
    for text in seen:
        assert TEST_KEY not in text and "sk-or-v1-wrong-key-xyz" not in text
