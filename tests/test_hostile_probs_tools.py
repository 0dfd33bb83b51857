"""Hostile servers and values against token probabilities and tools (issue 22, items 1 to 6, and 400 unknown calls).

The contract, as in ``test_hostile.py``: every case ends in one clear message (or none) with nothing lost, and
memory bounded, measured here by what is kept (alternatives per token, characters of saved output), never by
timing.  Every test talks to a real HTTP server on 127.0.0.1 (``tests/hostile.py`` scripts the hostile ones, the
fake OpenRouter plays a model that calls tools); nothing is mocked.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import CapturedIO

from granite_magic import GraniteClient, InvalidParameterError, Result, RetryPolicy
from granite_magic.testing import FakeOpenRouter, Scenario

from .conftest import TEST_KEY, magics_of, run, shown
from .hostile import HostileServer, Reply, event, finish_chunk, sse_reply, text_chunk

KEY = "sk-or-v1-hostile-0123456789abcdef0123"
FAST_RETRY = RetryPolicy(base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


@pytest.fixture
def hostile_client(hostile: HostileServer) -> Iterator[GraniteClient]:
    client = GraniteClient(base_url=hostile.base_url, api_key=KEY, retry=FAST_RETRY, read_timeout_s=5.0)
    yield client
    client.close()


@pytest.fixture
def widget_ip(ip: InteractiveShell, recorded_comms: list[Any]) -> InteractiveShell:
    """A shell whose cells show the live widget and then the static outputs a notebook saves."""
    magics_of(ip).live = "widget"
    return ip


def saved_reply(out: CapturedIO) -> Any:
    """The output a notebook keeps for the reply (the one that carries the metadata)."""
    return [o for o in out.outputs if "granite_magic" in (o.metadata or {})][-1]


def saved_size(out: CapturedIO) -> int:
    """Characters of everything the cell leaves in the notebook: every output's data and metadata, as JSON."""
    return sum(len(json.dumps(o.data, allow_nan=False)) + len(json.dumps(o.metadata, allow_nan=False)) for o in out.outputs)


# --- 1. the shaded view spells exactly Result.text ---------------------------------------------------------


def probs_chunk(text: str, logprobs: Any) -> dict[str, Any]:
    chunk = text_chunk(text)
    chunk["choices"][0]["logprobs"] = logprobs
    return chunk


def good(text: str) -> dict[str, Any]:
    return {"content": [{"token": text, "logprob": -0.25, "top_logprobs": [{"token": text, "logprob": -0.25},
                                                                          {"token": "zz", "logprob": -2.0}]}]}


def one_entry(logprob: str, token: str = "X") -> str:
    """A logprobs object written by hand, so that NaN, Infinity and 1e400 reach the client as they were sent."""
    return f'{{"content": [{{"token": {json.dumps(token)}, "logprob": {logprob}, "top_logprobs": []}}]}}'


BAD_LOGPROBS: dict[str, str | None] = {
    "missing": None,
    "empty-object": "{}",
    "empty-content": '{"content": []}',
    "nan": one_entry("NaN"),
    "infinity": one_entry("Infinity"),
    "minus-infinity": one_entry("-Infinity"),
    "1e400": one_entry("1e400"),
    "a-string": one_entry('"-0.5"'),
    "null": one_entry("null"),
}


def chunk_with(text: str, raw_logprobs: str | None) -> str:
    """One chat chunk as raw JSON text, its logprobs spliced in verbatim (or left out)."""
    chunk = json.dumps(text_chunk(text))
    if raw_logprobs is None:
        return chunk
    return chunk.replace('"finish_reason": null', f'"finish_reason": null, "logprobs": {raw_logprobs}')


def reply_part(shaded: str) -> str:
    """The shaded reply itself (no header, no legend)."""
    inner = re.search(r'<div class="gm-lens-text"[^>]*>(.*?)</div>', shaded, re.S)
    assert inner, shaded[:300]
    return inner.group(1)


def spelled_by(shaded: str) -> str:
    """What the shaded HTML reads as, tags and tooltips taken away."""
    return html.unescape(re.sub(r"<[^>]+>", "", reply_part(shaded)))


def no_probability_spans(shaded: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'<span class="gm-lens-none[^"]*"[^>]*>(.*?)</span>', reply_part(shaded), re.S)]


@pytest.mark.parametrize("bad", BAD_LOGPROBS.values(), ids=BAD_LOGPROBS.keys())
def test_the_shaded_reply_spells_the_text_whatever_the_logprobs(widget_ip: InteractiveShell, hostile: HostileServer,
                                                                 bad: str | None) -> None:
    """Chunks with missing, empty or invalid probabilities keep their text in the shaded view, marked "no probability"."""
    hostile.default = sse_reply(json.dumps(probs_chunk("Hel", good("Hel"))), chunk_with("lo wor", bad),
                                json.dumps(probs_chunk("ld", good("ld"))), chunk_with("!?", bad), finish_chunk())
    magics_of(widget_ip).base_url = hostile.base_url
    out = run(widget_ip, "--probs 3 -o r", "Say hello")
    r: Result = widget_ip.user_ns["r"]
    assert r.text == "Hello world!?" and "Traceback" not in out.stderr
    assert "".join(t.text for t in r.tokens) == r.text
    assert [t.text for t in r.tokens if not t.known] == ["lo wor", "!?"]
    assert all(math.isnan(t.logprob) and t.top == () for t in r.tokens if not t.known)
    shaded = saved_reply(out).data["text/html"]
    assert spelled_by(shaded) == r.text
    assert no_probability_spans(shaded) == ["lo wor", "!?"] and "no probability" in shaded
    json.dumps(saved_reply(out).metadata, allow_nan=False)  # a front end refuses NaN in a notebook's JSON
    # the lens and the Python views take the unknown steps too
    assert r.resample(temperature=0.5)[1] == {} and len(r.resample(top_k=1)) == len(r.tokens)
    frame = r.tokens_frame()
    assert math.isnan(frame["logprob"][1]) and frame["alternatives"][1] == []
    lens = r.lens()
    assert spelled_by(lens.strip.value) == r.text
    lens.token.value = 2  # counted from 1, as a person reads it: the second token, "lo wor"
    assert "no probability" in lens.table.value and "token 2 of" in lens.table.value
    lens.close()


def test_token_texts_that_do_not_spell_the_content_still_spell_the_reply(hostile_client: GraniteClient,
                                                                          hostile: HostileServer) -> None:
    """A server whose token texts are not its content: the reply is spelled whole; what no token matches is marked."""
    wrong = {"content": [{"token": "zzz", "logprob": -1.0}, {"token": "!", "logprob": -0.5}]}
    partial = {"content": [{"token": "wo", "logprob": -0.1}]}  # covers only the start of its chunk
    hostile.default = sse_reply(probs_chunk("Hello ", good("Hello ")), probs_chunk("world", partial), probs_chunk("!?", wrong),
                                finish_chunk())
    r = hostile_client.chat("Hi", logprobs=True, top_logprobs=2)
    assert r.text == "Hello world!?" and "".join(t.text for t in r.tokens) == r.text
    assert [(t.text, t.known) for t in r.tokens][:3] == [("Hello ", True), ("wo", True), ("rld", False)]


def test_responses_stream_with_missing_probabilities_spells_the_text(hostile: HostileServer) -> None:
    delta = {"type": "response.output_text.delta", "output_index": 0, "content_index": 0}
    hostile.default = sse_reply({**delta, "delta": "Hel", "logprobs": [{"token": "Hel", "logprob": -0.1, "top_logprobs": []}]},
                                {**delta, "delta": "lo", "logprobs": "odd"},
                                {"type": "response.completed", "response": {"status": "completed"}}, done=False)
    client = GraniteClient(base_url=hostile.base_url, api_key=KEY, retry=FAST_RETRY, read_timeout_s=5.0, api="responses")
    try:
        r = client.chat("Hi", logprobs=True, top_logprobs=2)
    finally:
        client.close()
    assert r.text == "Hello" and [(t.text, t.known) for t in r.tokens] == [("Hel", True), ("lo", False)]


def test_a_reply_whose_probabilities_are_all_invalid_has_no_tokens(hostile_client: GraniteClient, hostile: HostileServer) -> None:
    """Nothing usable at all is a provider without probabilities (one line in a cell), not a reply of unknowns."""
    hostile.default = sse_reply(chunk_with("Hello", one_entry("NaN", "Hello")), finish_chunk())
    r = hostile_client.chat("Hi", logprobs=True, top_logprobs=2)
    assert r.text == "Hello" and r.tokens == []


# --- 2. at most K alternatives (plus the pick), at decode time ----------------------------------------------


def crowded_reply(tokens: int, alternatives: int) -> Reply:
    """``tokens`` chunks of one token each, each listing ``alternatives`` alternatives; the pick is the 1,500th."""

    def pieces() -> Iterator[bytes]:
        for i in range(tokens):
            word = f" w{i}"
            top = [{"token": f" a{j}", "logprob": -0.001 * (j + 1)} for j in range(alternatives)]
            top[min(1500, alternatives - 1)] = {"token": word, "logprob": -0.001 * 1501}
            yield event(probs_chunk(word, {"content": [{"token": word, "logprob": -1.501, "top_logprobs": top}]}))
        yield event(finish_chunk())
        yield b"data: [DONE]\n\n"

    return Reply(pieces=pieces)


def test_two_thousand_alternatives_per_token_keep_k_and_the_pick(hostile_client: GraniteClient, hostile: HostileServer) -> None:
    hostile.default = crowded_reply(300, 2000)
    r = hostile_client.chat("Hi", logprobs=True, top_logprobs=20)
    assert len(r.tokens) == 300 and "".join(t.text for t in r.tokens) == r.text
    assert all(len(t.top) == 21 for t in r.tokens)  # the 20 most likely and the pick, which was the 1,501st
    assert all(t.top[-1].text == t.text and [a.text for a in t.top[:3]] == [" a0", " a1", " a2"] for t in r.tokens)
    assert sum(len(t.top) for t in r.tokens) == 300 * 21  # of 600,000 sent
    hostile.default = crowded_reply(50, 2000)
    few = hostile_client.chat("Hi", logprobs=True, top_logprobs=3)
    assert all(len(t.top) == 4 for t in few.tokens)


def test_two_thousand_alternatives_in_a_cell_save_a_bounded_output(widget_ip: InteractiveShell, hostile: HostileServer) -> None:
    """--probs 5 against a server sending 2,000 alternatives per token: 5 (and the pick) are kept and saved."""
    hostile.default = crowded_reply(300, 2000)
    magics_of(widget_ip).base_url = hostile.base_url
    out = run(widget_ip, "--probs 5 -o r", "Hi")
    r: Result = widget_ip.user_ns["r"]
    assert len(r.tokens) == 300 and max(len(t.top) for t in r.tokens) == 6
    saved = saved_reply(out)
    assert len(saved.metadata["granite_magic"]["tokens"][0]["top"]) == 6
    assert saved_size(out) < 1_000_000, saved_size(out)  # 32.6 MB before alternatives were bounded


# --- 3. and 4. tool results: a bounded preview, and any value at all ------------------------------------------


BIG = "x" * 10_000_000


def big(n: int) -> str:
    """Return ten million characters."""
    return BIG


def big_rows(n: int) -> list[dict[str, int]]:
    """Return 200,000 rows."""
    return [{"row": i, "value": i * i} for i in range(200_000)]


def test_a_ten_megabyte_tool_result_is_previewed_and_kept_whole(widget_ip: InteractiveShell, server: FakeOpenRouter) -> None:
    widget_ip.user_ns.update(big=big, big_rows=big_rows)
    for name in ("big", "big_rows"):
        out = run(widget_ip, f"--tools {name} --tool-mode native -o r", "Call it")
        r: Result = widget_ip.user_ns["r"]
        assert "Traceback" not in out.stderr
        assert saved_size(out) < 60_000, (name, saved_size(out))  # 38 MB before
        blocks = next(o for o in out.outputs if "gm-tool" in o.data.get("text/html", ""))
        assert "more characters cut" in blocks.data["text/plain"] and ".tool_calls[0].result" in blocks.data["text/plain"]
        saved = saved_reply(out).metadata["granite_magic"]["tool_calls"][0]["result"]
        assert isinstance(saved, str) and len(saved) < 2_100 and "more characters cut" in saved
        assert r.tool_calls[0].result is BIG if name == "big" else len(r.tool_calls[0].result) == 200_000
        sent = server.chat_requests[-1].body["messages"][-1]["content"]
        assert len(sent) < 6_100  # what the model gets is bounded as before


class ReprRaises:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class StrAndReprRaise(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str either")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class ToListRaises:
    @property
    def tolist(self) -> Any:
        raise RuntimeError("a property that raises")

    def __repr__(self) -> str:
        return "<ToListRaises>"


def self_containing_list() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


def self_containing_dict() -> dict[str, Any]:
    value: dict[str, Any] = {"a": 1}
    value["me"] = value
    return value


def deep_list() -> list[Any]:
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    return value


HOSTILE_VALUES: dict[str, Callable[[], Any]] = {
    "repr-raises": ReprRaises,
    "str-and-repr-raise": lambda: StrAndReprRaise(),
    "list-contains-itself": self_containing_list,
    "dict-contains-itself": self_containing_dict,
    "generator": lambda: (i for i in range(3)),
    "nested-100000-deep": deep_list,
    "5000-digit-int": lambda: 10**5000,
    "nan": lambda: math.nan,
    "tolist-property-raises": ToListRaises,
    "list-of-repr-raises": lambda: [ReprRaises(), {"k": ReprRaises()}],
}


@pytest.mark.parametrize("make", HOSTILE_VALUES.values(), ids=HOSTILE_VALUES.keys())
@pytest.mark.parametrize("live", ["widget", "terminal"])
def test_any_value_a_tool_returns_is_shown_saved_and_assigned(ip: InteractiveShell, server: FakeOpenRouter,
                                                               recorded_comms: list[Any], make: Callable[[], Any], live: str) -> None:
    value = make()
    magics_of(ip).live = live
    ip.user_ns["tool"] = returning(value)
    ip.user_ns.pop("r", None)
    out = run(ip, "--tools tool --tool-mode native -o r", "Call it")
    assert "Traceback" not in out.stderr + out.stdout and "granite:" not in out.stderr, out.stderr
    r: Result = ip.user_ns["r"]
    assert r.tool_calls[0].result is value and r.tool_calls[0].ran and r.tool_calls[0].error is None
    saved = r.to_dict()
    json.dumps(saved, allow_nan=False)
    assert isinstance(saved["tool_calls"][0]["result"], (str, int, float, list, dict)) or saved["tool_calls"][0]["result"] is None
    if live == "widget":
        saved_size(out)  # every output is JSON a notebook can hold
    if isinstance(value, type(i for i in ())):
        assert list(value) == [0, 1, 2]  # shown, never consumed


def returning(value: Any) -> Callable[[int], Any]:
    def tool(n: int) -> Any:
        """Return the value."""
        return value

    return tool


def test_any_value_a_tool_returns_from_python(client: GraniteClient, server: FakeOpenRouter) -> None:
    for make in HOSTILE_VALUES.values():
        value = make()
        r = client.chat("Call it", tools=[returning(value)], tool_mode="native")
        assert r.tool_calls[0].result is value
        json.dumps(r.to_dict(), allow_nan=False)
        assert "<" in server.chat_requests[-1].body["messages"][-1]["content"] or value is not None


# --- 5. --max-steps 0 --------------------------------------------------------------------------------------


def convert(amount: float) -> float:
    """Convert dollars to euros."""
    return amount * 0.9


def test_max_steps_zero_is_refused_in_a_cell_and_in_python(ip: InteractiveShell, server: FakeOpenRouter, client: GraniteClient) -> None:
    ip.user_ns["convert"] = convert
    for steps in ("0", "-1", "51"):
        out = run(ip, f"--tools convert --max-steps {steps}", "How much is 3 dollars?")
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and f"--max-steps {steps} is out of range" in lines[0] and "max_steps=" not in lines[0]
        assert "nothing was sent" in lines[0]
    assert server.chat_requests == []
    with pytest.raises(InvalidParameterError, match=r"max_steps=0 is out of range: must be an integer from 1 to 50"):
        client.chat("How much is 3 dollars?", tools=[convert], max_steps=0)
    assert server.chat_requests == []


def test_max_steps_one_offers_the_tools_and_runs_none(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    ip.user_ns["convert"] = convert
    out = run(ip, "--tools convert --tool-mode native --max-steps 1 -o r", "How much is 3 dollars?")
    r: Result = ip.user_ns["r"]
    assert len(server.chat_requests) == 1 and "tools" in server.chat_requests[0].body
    assert r.tool_calls == [] and "stopped after 1 step (--max-steps 1)" in out.stderr


def test_the_help_gives_the_range_of_max_steps(ip: InteractiveShell) -> None:
    from granite_magic._cell import build_parser

    assert "1 to 50" in build_parser().format_help().replace("\n", " ").replace("  ", " ")


# --- 6. arguments nested 100,000 deep ------------------------------------------------------------------------

DEEP = '{"amount": ' + "[" * 100_000 + "]" * 100_000 + "}"


def test_deep_arguments_are_a_malformed_call_in_a_cell(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    ip.user_ns["convert"] = convert
    server.push(Scenario(tool_arguments=DEEP, tool_split=0))
    out = run(ip, "--tools convert --tool-mode native -o r", "How much is 3 dollars?")
    r: Result = ip.user_ns["r"]
    assert "Traceback" not in out.stderr + out.stdout and not r.partial and r.text
    assert not r.tool_calls[0].ran and "nested deeper than 100 levels" in (r.tool_calls[0].error or "")
    assert r.tool_calls[0].raw_arguments == DEEP  # kept, as sent
    assert "nested deeper than 100 levels" in shown(out)
    json.dumps(r.to_dict())


def test_deep_arguments_are_a_malformed_call_from_python(client: GraniteClient, server: FakeOpenRouter) -> None:
    server.push(Scenario(tool_arguments=DEEP, tool_split=0))
    r = client.chat("How much is 3 dollars?", tools=[convert], tool_mode="native")
    assert "nested deeper than 100 levels" in (r.tool_calls[0].error or "") and r.text
    for api in ("responses", "messages"):
        server.push(Scenario(tool_arguments=DEEP, tool_split=0))
        other = GraniteClient(base_url=server.base_url, api_key=TEST_KEY, api=api, retry=FAST_RETRY)
        try:
            r = other.chat("How much is 3 dollars?", tools=[convert], tool_mode="native")
        finally:
            other.close()
        assert "nested deeper than 100 levels" in (r.tool_calls[0].error or ""), api


def test_deep_arguments_in_a_reply_without_tools_keep_the_reply(hostile_client: GraniteClient, hostile: HostileServer) -> None:
    """A server that sends a call nobody offered, nested too deep: the reply and the raw call are kept."""
    call = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": DEEP}}]}}]}
    hostile.default = sse_reply(text_chunk("Hello"), call, finish_chunk("tool_calls"))
    r = hostile_client.chat("Hi")
    assert r.text == "Hello" and r.tool_calls[0].arguments is None and r.tool_calls[0].raw_arguments == DEEP


def test_deep_arguments_in_a_prompted_call_are_malformed(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    ip.user_ns["convert"] = convert
    server.push(Scenario(tool_arguments=DEEP, tool_split=0))
    out = run(ip, "--tools convert --tool-mode prompted -o r", "How much is 3 dollars?")
    r: Result = ip.user_ns["r"]
    assert "Traceback" not in out.stderr + out.stdout
    assert r.tool_calls and "nested deeper than 100 levels" in (r.tool_calls[0].error or "")


# --- smaller: 400 calls to an unknown tool --------------------------------------------------------------------


def many_calls(count: int, name: str = "nope") -> Reply:
    calls = [{"index": i, "id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": "{}"}} for i in range(count)]
    return sse_reply({"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": calls}}]}, finish_chunk("tool_calls"))


def test_four_hundred_refused_calls_are_counted_not_listed(ip: InteractiveShell, hostile: HostileServer) -> None:
    ip.user_ns["convert"] = convert
    hostile.script(many_calls(400))
    hostile.default = sse_reply(text_chunk("I have no such tool."), finish_chunk())
    magics_of(ip).base_url = hostile.base_url
    out = run(ip, "--tools convert --tool-mode native -o r", "Use nope")
    r: Result = ip.user_ns["r"]
    assert len(r.tool_calls) == 400 and all(not c.ran and "no tool named 'nope'" in (c.error or "") for c in r.tool_calls)
    lines = out.stdout.splitlines()
    assert len(lines) < 30, len(lines)  # 800 before
    summary = [line for line in lines if "more calls" in line]
    assert len(summary) == 1 and "390 to nope not run (there is no tool named 'nope'" in summary[0]
    assert sum("calling nope" in line for line in lines) == 10
    second = hostile.chat_requests[-1].json["messages"]
    assert sum(m["role"] == "tool" for m in second) == 400  # the model still hears about every call


def test_four_hundred_calls_save_twenty_blocks_and_a_count(widget_ip: InteractiveShell, hostile: HostileServer) -> None:
    widget_ip.user_ns["convert"] = convert
    hostile.script(many_calls(400))
    hostile.default = sse_reply(text_chunk("I have no such tool."), finish_chunk())
    magics_of(widget_ip).base_url = hostile.base_url
    out = run(widget_ip, "--tools convert --tool-mode native -o r", "Use nope")
    blocks = next(o for o in out.outputs if "gm-tool" in o.data.get("text/html", ""))
    assert blocks.data["text/html"].count('<details class="gm-tool">') == 20
    assert "380 more calls: 380 to nope not run" in blocks.data["text/plain"]
    assert len(widget_ip.user_ns["r"].tool_calls) == 400


# --- probabilities and prompted tools together -----------------------------------------------------------------


def test_prompted_tools_with_probabilities_keep_tokens_that_spell_the_answer(client: GraniteClient, server: FakeOpenRouter) -> None:
    """Prompted mode takes the <tool_call> blocks (and the ends' white space) out of the text: the tokens follow."""
    r = client.chat("How much is 3 dollars?", tools=[convert], tool_mode="prompted", logprobs=True, top_logprobs=3)
    assert r.tool_calls and r.text and "".join(t.text for t in r.tokens) == r.text
    server.push(*[Scenario(tool_steps=9)] * 2)
    stopped = client.chat("How much is 3 dollars?", tools=[convert], tool_mode="prompted", logprobs=True, top_logprobs=3, max_steps=2)
    assert "<tool_call>" not in stopped.text and "".join(t.text for t in stopped.tokens) == stopped.text
    assert all(t.text for t in stopped.tokens)
