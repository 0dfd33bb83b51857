"""Tool calling from cells and from Python: the loop, each API shape's second step, failures, approval, limits."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from granite_magic import GraniteClient, Result
from granite_magic.testing import FakeOpenRouter, Scenario

from .conftest import FAST_RETRY, TEST_KEY, magics_of, run, shown

RATES = {"EUR": 0.92, "JPY": 150.0, "yen": 150.0}
CALLS: list[tuple[float, str]] = []


def convert(amount: float, currency: str) -> float:
    """Convert an amount of US dollars into another currency.

    Args:
        amount: dollars to convert.
        currency: the currency to convert into.
    """
    CALLS.append((amount, currency))
    return round(amount * RATES[currency], 2)


def broken(amount: float) -> float:
    """A tool that always fails."""
    raise ValueError("the rates service is down")


@pytest.fixture
def tools_ns(ip: InteractiveShell) -> InteractiveShell:
    CALLS.clear()
    ip.user_ns.update(convert=convert, broken=broken, not_a_function=42)
    return ip


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_native_calls_run_here_and_the_answer_follows_in_every_shape(tools_ns: InteractiveShell, server: FakeOpenRouter,
                                                                      api: str) -> None:
    out = run(tools_ns, f"--api {api} --tools convert --tool-mode native -o r", "How much is 120 dollars in yen?")
    r: Result = tools_ns.user_ns["r"]
    assert CALLS == [(120.0, "yen")] and r.tool_calls[0].name == "convert" and r.tool_calls[0].arguments == {"amount": 120, "currency": "yen"}
    assert r.tool_calls[0].result == 18000.0 and r.tool_calls[0].error is None and r.tool_calls[0].ran
    assert r.text.startswith("The tool said: 18000.0") and "calling convert(amount=120, currency='yen')" in shown(out) + out.stderr
    first, second = (req.body for req in server.chat_requests)
    if api == "chat":
        assert first["tools"][0]["function"]["name"] == "convert"
        call = second["messages"][-2]["tool_calls"][0]
        assert second["messages"][-1] == {"role": "tool", "tool_call_id": call["id"], "content": "18000.0"}
    elif api == "responses":
        call, output = second["input"][-2], second["input"][-1]
        assert call["type"] == "function_call" and output == {"type": "function_call_output", "call_id": call["call_id"],
                                                               "output": "18000.0"}
    else:
        use = second["messages"][-2]["content"][-1]
        assert use["type"] == "tool_use" and use["input"] == {"amount": 120, "currency": "yen"}
        result = second["messages"][-1]["content"][0]
        assert result["type"] == "tool_result" and result["tool_use_id"] == use["id"] and result["content"] == "18000.0"


def test_prompted_mode_uses_granites_convention_and_hides_the_call_blocks(tools_ns: InteractiveShell, server: FakeOpenRouter) -> None:
    run(tools_ns, "--tools convert --tool-mode prompted -o r", "How much is 120 dollars in yen?")
    r: Result = tools_ns.user_ns["r"]
    first, second = (req.body for req in server.chat_requests)
    assert "tools" not in first and "<tools>" in first["messages"][0]["content"]
    assert "<tool_response>" in second["messages"][-1]["content"] and second["messages"][-1]["role"] == "user"
    assert CALLS == [(120.0, "yen")] and "<tool_call>" not in r.text and r.text.startswith("The tool said")


def test_failures_go_back_to_the_model_and_nothing_runs_uninvited(tools_ns: InteractiveShell, server: FakeOpenRouter) -> None:
    run(tools_ns, "--tools broken --tool-mode native -o r", "Convert 5 dollars")
    r: Result = tools_ns.user_ns["r"]
    assert r.tool_calls[0].error is not None and "the rates service is down" in r.tool_calls[0].error
    assert "the rates service is down" in str(server.chat_requests[-1].body["messages"][-1]["content"])
    server.push(Scenario(tool_name="nope"))
    run(tools_ns, "--tools convert --tool-mode native -o r", "How much is 3 dollars in yen?")
    assert CALLS == [] and tools_ns.user_ns["r"].tool_calls[0].error  # an unknown tool is reported, nothing runs
    server.push(Scenario(tool_arguments="{not json"))
    run(tools_ns, "--tools convert --tool-mode native -o r", "How much is 3 dollars in yen?")
    assert CALLS == [] and "not valid JSON" in (tools_ns.user_ns["r"].tool_calls[0].error or "")


def test_names_that_are_not_functions_are_refused_before_sending(tools_ns: InteractiveShell, server: FakeOpenRouter) -> None:
    for name in ("not_a_function", "missing_one"):
        out = run(tools_ns, f"--tools {name}", "Hi")
        assert name in out.stderr and "nothing was sent" in out.stderr
    assert server.chat_requests == []


def test_approve_asks_before_each_call(tools_ns: InteractiveShell, server: FakeOpenRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["n"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    run(tools_ns, "--tools convert --tool-mode native --approve -o r", "How much is 7 dollars in yen?")
    r: Result = tools_ns.user_ns["r"]
    assert CALLS == [] and r.tool_calls[0].error == "the user declined to run this call" and not r.tool_calls[0].ran


def test_max_steps_bounds_the_loop_and_says_so(tools_ns: InteractiveShell, server: FakeOpenRouter) -> None:
    server.push(*[Scenario(tool_steps=9)] * 5)
    out = run(tools_ns, "--tools convert --tool-mode native --max-steps 2", "How much is 1 dollar in yen?")
    assert len(server.chat_requests) == 2 and "stopped after 2 steps (--max-steps 2)" in out.stderr


def test_a_conversation_keeps_its_tool_calls(tools_ns: InteractiveShell, server: FakeOpenRouter) -> None:
    run(tools_ns, "--chat money --tools convert --tool-mode native", "How much is 10 dollars in yen?")
    run(tools_ns, "--chat money", "And in words?")
    messages = server.chat_requests[-1].body["messages"]
    roles = [m["role"] for m in messages]
    assert roles == ["user", "assistant", "tool", "assistant", "user"] and messages[1]["tool_calls"]
    magics_of(tools_ns).session.reset("money")


def test_the_python_api_runs_the_same_loop(server: FakeOpenRouter) -> None:
    CALLS.clear()
    client = GraniteClient(base_url=server.base_url, api_key=TEST_KEY, retry=FAST_RETRY)
    result = client.chat("How much is 120 dollars in yen?", tools=[convert], tool_mode="native")
    assert CALLS == [(120.0, "yen")] and result.text.startswith("The tool said") and result.tool_calls[0].result == 18000.0
    spec = {"type": "function", "function": {"name": "convert", "description": "Convert dollars.",
                                             "parameters": {"type": "object", "properties": {"amount": {"type": "number"}},
                                                            "required": ["amount"]}}}
    result = client.chat("How much is 4 dollars?", tools=[(spec, lambda amount: amount * 2)], tool_mode="native")
    assert result.tool_calls[0].result == 8 and result.text == "The tool said: 8"
    client.close()


def test_the_saved_output_has_a_block_per_call_above_the_answer(tools_ns: InteractiveShell, server: FakeOpenRouter,
                                                                recorded_comms: list[Any]) -> None:
    magics_of(tools_ns).live = "widget"
    out = run(tools_ns, "--tools convert --tool-mode native", "How much is 120 dollars in yen?")
    blocks = [i for i, o in enumerate(out.outputs) if "<details" in str(o.data.get("text/html", ""))]
    replies = [i for i, o in enumerate(out.outputs) if "granite_magic" in (o.metadata or {})]
    assert blocks and replies and blocks[0] < replies[-1]  # the calls come above the answer they led to
    html = out.outputs[blocks[0]].data["text/html"]
    assert "Ran <code>convert</code>" in html and "18000.0" in html
    assert out.outputs[replies[-1]].metadata["granite_magic"]["tool_calls"][0]["result"] == 18000.0


@pytest.mark.parametrize("mode", ["native", "prompted"])
def test_a_forced_tool_choice_calls_once_then_lets_the_model_answer(tools_ns: InteractiveShell, server: FakeOpenRouter,
                                                                     mode: str) -> None:
    run(tools_ns, f"--tools convert --tool-mode {mode} --tool-choice convert -o r", "How much is 120 dollars in yen?")
    r: Result = tools_ns.user_ns["r"]
    assert CALLS == [(120.0, "yen")] and r.text.startswith("The tool said") and len(server.chat_requests) == 2
    second = server.chat_requests[1].body
    if mode == "native":
        assert server.chat_requests[0].body["tool_choice"] == {"type": "function", "function": {"name": "convert"}}
        assert second["tool_choice"] == "auto"
    else:  # prompted: the first reply was started with the call, so the model only wrote its arguments
        first = server.chat_requests[0].body["messages"][-1]
        assert first["role"] == "assistant" and first["content"].startswith('<tool_call>\n{"name": "convert"')


def square(n: int) -> int:
    """The square of a whole number."""
    return n * n


def test_a_bare_value_for_a_one_parameter_tool_is_read_as_that_parameter(tools_ns: InteractiveShell, server: FakeOpenRouter) -> None:
    tools_ns.user_ns["square"] = square
    server.push(Scenario(tool_arguments="12"))
    run(tools_ns, "--tools square --tool-mode native -o r", "What is 12 squared?")
    r: Result = tools_ns.user_ns["r"]
    assert r.tool_calls[0].arguments == {"n": 12} and r.tool_calls[0].result == 144
    server.push(Scenario(tool_arguments="12"))
    run(tools_ns, "--tools convert --tool-mode native -o r", "How much is 12 dollars in yen?")
    assert tools_ns.user_ns["r"].tool_calls[0].error and CALLS == []  # two parameters: a bare value is not guessed at


def call_rows(out: Any) -> list[str]:
    """The rows of the saved call blocks (each block's <summary>), as a person reads them."""
    blocks = next(str(o.data["text/html"]) for o in out.outputs if "<details" in str(o.data.get("text/html", "")))
    return [html.unescape(re.sub(r"<[^>]+>", "", row)) for row in re.findall(r"<summary>(.*?)</summary>", blocks, re.S)]


def test_each_call_row_names_its_tool_and_why_it_did_not_run(tools_ns: InteractiveShell, server: FakeOpenRouter,
                                                              recorded_comms: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    magics_of(tools_ns).live = "widget"
    server.push(Scenario(tool_calls=3, tool_arguments="{not json"))  # three calls in one reply, the first malformed
    out = run(tools_ns, "--tools broken,convert --tool-mode native", "How much is 5 dollars in yen?")
    first, second, third = call_rows(out)
    assert first.startswith("⚠ Did not run broken: the arguments are not valid JSON")
    assert second.startswith("Ran convert · ")
    assert third.startswith("⚠ broken failed · ") and "ValueError: the rates service is down" in third
    server.push(Scenario(tool_name="nope"))
    out = run(tools_ns, "--tools convert --tool-mode native", "How much is 3 dollars in yen?")
    assert call_rows(out) == ["⚠ Did not run nope: there is no tool named 'nope'; the tools are: convert"]
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    out = run(tools_ns, "--tools convert --tool-mode native --approve", "How much is 7 dollars in yen?")
    assert call_rows(out) == ["⚠ Did not run convert: the user declined to run this call"]


def shown_live(sent: list[Any]) -> str:
    """What the live view's Output widget shows after the last update sent to the front end, as text."""
    states = [data["state"]["outputs"] for _, kind, data in sent if kind == "comm_msg" and "outputs" in data.get("state", {})]
    return "\n".join(str(o.get("data", {}).get("text/plain", "")) for o in states[-1]) if states else ""


def test_while_approve_waits_the_status_line_says_so(tools_ns: InteractiveShell, server: FakeOpenRouter,
                                                      recorded_comms: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    magics_of(tools_ns).live = "widget"
    seen: list[str] = []

    def answer(prompt: str) -> str:
        seen.append(shown_live(recorded_comms))  # what the cell shows while the question waits
        return "y"

    monkeypatch.setattr("builtins.input", answer)
    run(tools_ns, "--tools convert --tool-mode native --approve -o r", "How much is 7 dollars in yen?")
    (while_asking,) = seen
    status = while_asking.splitlines()[-1]
    assert status == "▌ waiting for your approval: answer y or n in the box below" and "streaming" not in while_asking
    assert "calling convert(amount=7, currency='yen')" in while_asking  # the call it asks about is shown above
    assert CALLS == [(7.0, "yen")] and tools_ns.user_ns["r"].text.startswith("The tool said: 1050.0")


def test_prompted_replies_never_show_the_protocols_fragments(tools_ns: InteractiveShell, server: FakeOpenRouter,
                                                             recorded_comms: list[Any]) -> None:
    magics_of(tools_ns).live = "widget"
    # a forced call: the first reply continues '<tool_call>{"name": "convert", "arguments": ' and closes it; the answer
    # then closes a call it never opened and ends cut off in the middle of another
    server.push(Scenario(), Scenario(text="It is 18000 yen.</tool_call>\n<tool_call"))
    out = run(tools_ns, "--tools convert --tool-mode prompted --tool-choice convert -o r", "How much is 120 dollars in yen?")
    r: Result = tools_ns.user_ns["r"]
    assert CALLS == [(120.0, "yen")] and r.text == "It is 18000 yen."
    live = [str(data) for _, kind, data in recorded_comms if kind == "comm_msg"]
    assert live and not any("tool_call" in update for update in live)
    assert "tool_call" not in shown(out).replace("tool choice", "")


def test_a_forced_choice_holds_for_the_first_call_only_and_the_stop_line_says_whose_calls_remain(
        tools_ns: InteractiveShell, server: FakeOpenRouter) -> None:
    server.push(*[Scenario(tool_steps=9)] * 3)  # a model that keeps calling on its own
    out = run(tools_ns, "--tools convert --tool-mode prompted --tool-choice convert --max-steps 2", "How much is 1 dollar in yen?")
    first, second = (req.body["messages"] for req in server.chat_requests)
    assert first[-1]["role"] == "assistant" and first[-1]["content"].startswith('<tool_call>\n{"name": "convert"')
    assert second[-1]["role"] == "user" and "<tool_response>" in second[-1]["content"]  # not begun with a call again
    assert ("stopped after 2 steps (--max-steps 2): the model kept calling tools on its own (--tool-choice convert forced "
            "only the first call); its last calls were not run") in out.stderr
    server.push(Scenario(tool_steps=9))
    out = run(tools_ns, "--tools convert --tool-mode prompted --tool-choice convert --max-steps 1", "How much is 1 dollar in yen?")
    assert "stopped after 1 step (--max-steps 1): that call was forced by --tool-choice convert, and was not run" in out.stderr
    server.push(*[Scenario(tool_steps=9)] * 2)
    out = run(tools_ns, "--tools convert --tool-mode native --max-steps 2", "How much is 1 dollar in yen?")
    assert "the model kept calling tools on its own; its last calls were not run" in out.stderr and "forced" not in out.stderr


@pytest.mark.slow
def test_on_the_local_model_a_forced_choice_holds_for_the_first_call_only(local: Any) -> None:
    """The local backend reads tools in Granite's prompted convention: a forced choice begins the first reply with the
    call; the next request lets the model choose (``auto``), and the stop line says whose calls were left."""
    from granite_magic._events import Accumulator
    from granite_magic._toolrun import ToolLoop, ToolPlan
    from granite_magic._tools import tool_from_function

    assert local.default_tool_mode(None) == "prompted"
    loop = ToolLoop(ToolPlan((tool_from_function(square),), "prompted", max_steps=2),
                    local.request("What is 12 squared?", tool_choice="square", temperature=0, seed=1, max_tokens=24))
    first = loop.request
    assert first.messages[-1] == {"role": "assistant", "content": '<tool_call>\n{"name": "square", "arguments": '}
    step: Any = first
    while step is not None:
        result = local.loop.run(local.stream(step, Accumulator(step.sampling)))
        step = loop.after(result)
        if loop.steps == 1:
            assert step is not None  # a forced call is always a call, well formed or not
            assert step.sampling["tool_choice"] == "auto" and step.messages[-1]["role"] == "user"
            assert "<tool_response>" in step.messages[-1]["content"] and step.messages[-2]["role"] == "assistant"
            assert step.messages[-2]["content"].startswith('<tool_call>\n{"name": "square"')  # the call, in the history
    final = loop.final()
    assert final.tool_calls and final.tool_calls[0].name == "square"
    assert "<tool_call" not in final.text and "</tool_call>" not in final.text
    if loop.stopped:  # the small model kept calling: the stop line says it did so on its own
        assert "the model kept calling tools on its own (tool_choice='square' forced only the first call)" in loop.stopped
