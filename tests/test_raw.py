"""``--raw``: the cell's text continued as written, through the completions endpoint (HTTP) or the local model with no
template, with every sampling option, probabilities, grids, record/replay, the ledger and the panel."""

from __future__ import annotations

import json
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from granite_magic import Comparison, GraniteClient, Result, compare
from granite_magic._errors import InvalidParameterError, ProtocolError
from granite_magic._events import Finish, TextDelta, TokenLogprobs
from granite_magic._shapes import COMPLETIONS, COMPLETIONS_DEFAULT_MAX_TOKENS, Request
from granite_magic._tokens import Alternative, Token
from granite_magic.testing import FakeOpenRouter

from .conftest import magics_of, run, shown

PROMPT = "Question: Why do volcanoes erupt?\nAnswer:"


def sent(server: FakeOpenRouter) -> list[dict[str, Any]]:
    return [r.body for r in server.chat_requests]


# --- the cell -------------------------------------------------------------------------------------------


def test_a_raw_cell_sends_its_text_to_the_completions_endpoint(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    out = run(ip, "--raw --temperature 0.7 --seed 3 --top-k 40 --stop '\\nQuestion:' -o r", PROMPT)
    result = ip.user_ns["r"]
    assert isinstance(result, Result) and result.error is None and result.text.strip(), shown(out)
    (request,) = server.chat_requests
    assert request.path.endswith("/completions") and not request.path.endswith("/chat/completions")
    body = request.body
    assert body["prompt"] == PROMPT and "messages" not in body  # exactly the cell, no turn around it
    assert (body["temperature"], body["seed"], body["top_k"], body["stop"]) == (0.7, 3, 40, ["\nQuestion:"])
    assert body["max_tokens"] == COMPLETIONS_DEFAULT_MAX_TOKENS  # not the completions API's own 16
    assert "raw completion" in shown(out)  # the status line says how it was asked


def test_raw_probabilities_come_back_from_the_completions_stream(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    out = run(ip, "--raw --probs 3 --max-tokens 6 -o r", PROMPT)
    result = ip.user_ns["r"]
    assert sent(server)[0]["logprobs"] == 3 and "top_logprobs" not in sent(server)[0]
    assert result.tokens and len(result.tokens) == 6, shown(out)
    assert "".join(t.text for t in result.tokens) == result.text
    assert all(len(t.top) == 3 for t in result.tokens)


def test_a_raw_grid_sends_each_column_raw(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    out = run(ip, "--raw --seeds 1,2 --sweep temperature=0.5,1 --max-tokens 8 -o g", PROMPT)
    grid = ip.user_ns["g"]
    assert isinstance(grid, Comparison) and [r.error for r in grid.runs] == [None] * 4, shown(out)
    bodies = sent(server)
    assert len(bodies) == 4 and all(b["prompt"] == PROMPT and "messages" not in b for b in bodies)
    assert sorted((b["seed"], b["temperature"]) for b in bodies) == [(1, 0.5), (1, 1), (2, 0.5), (2, 1)]
    assert "raw completion" in shown(out)


@pytest.mark.parametrize(("line", "named"), [
    ("--raw --system 'Be brief.'", "--system"),
    ("--raw --chat", "--chat"),
    ("--raw --context numbers", "--context"),
    ("--raw --template chatml", "--template"),
    ("--raw --api messages", "--api"),
    ("--raw --tools add", "--tools"),
])
def test_raw_with_a_part_of_a_chat_turn_is_refused_before_sending(ip: InteractiveShell, server: FakeOpenRouter, line: str,
                                                                   named: str) -> None:
    ip.user_ns["numbers"] = [1, 2, 3]
    ip.user_ns["add"] = lambda a, b: a + b
    out = run(ip, line, PROMPT)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--raw" in lines[0] and named in lines[0] and "=" not in lines[0], out.stderr
    assert server.chat_requests == []


def test_a_raw_dry_run_shows_the_completions_body(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    out = run(ip, "--raw --dry-run --probs 2", PROMPT)
    text = shown(out)
    assert f"POST {server.base_url}/completions" in text
    body = json.loads(text[text.index("{"):])
    assert body["prompt"] == PROMPT and body["logprobs"] == 2 and body["max_tokens"] == COMPLETIONS_DEFAULT_MAX_TOKENS
    assert server.chat_requests == []


def test_raw_runs_are_recorded_replayed_and_keyed_apart_from_chat(cached: Any, ip: InteractiveShell, server: FakeOpenRouter) -> None:
    run(ip, "--raw --seed 5 --max-tokens 8 -o first", PROMPT)
    assert len(server.chat_requests) == 1
    out = run(ip, "--raw --seed 5 --max-tokens 8 --cache replay -o again", PROMPT)
    assert ip.user_ns["again"].text == ip.user_ns["first"].text and len(server.chat_requests) == 1, shown(out)
    # the same words as a chat turn are another request: no recording of the raw one answers it
    out = run(ip, "--seed 5 --max-tokens 8 --cache replay -o chat", PROMPT)
    assert "no recording" in out.stderr.lower() and len(server.chat_requests) == 1


def test_raw_runs_are_in_the_ledger_at_their_reported_cost(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    ledger = magics_of(ip).session.ledger
    before = len(ledger.entries)
    run(ip, "--raw --max-tokens 8 -o r", PROMPT)
    entry = ledger.entries[-1]
    assert len(ledger.entries) == before + 1
    assert entry.cost == pytest.approx(ip.user_ns["r"].usage.cost) and entry.cost > 0


# --- the Python API ---------------------------------------------------------------------------------------


def test_python_raw_chat_and_compare(client: GraniteClient, server: FakeOpenRouter, session: Any) -> None:
    result = client.chat(PROMPT, raw=True, max_tokens=5, seed=1)
    assert result.text and sent(server)[-1]["prompt"] == PROMPT
    with pytest.raises(InvalidParameterError, match="raw=True") as refused:
        client.chat(PROMPT, raw=True, system="Be brief.")
    assert "--" not in str(refused.value)  # the Python API names its own parameters
    with pytest.raises(InvalidParameterError, match="tools"):
        client.chat(PROMPT, raw=True, tools=[len])
    grid = compare(PROMPT, seeds="1-2", raw=True, max_tokens=5)
    assert all(r.error is None for r in grid.runs) and all(b["prompt"] == PROMPT for b in sent(server)[-2:])


# --- decoding the completions stream ----------------------------------------------------------------------


def feed(payload: object) -> list[Any]:
    return COMPLETIONS.decoder().feed(f"data: {json.dumps(payload)}\n\n".encode())


def test_classic_logprob_lists_become_tokens_with_alternatives() -> None:
    chunk = {"id": "cmpl-1", "model": "m", "object": "text_completion", "choices": [{"index": 0, "text": " Volcanoes", "logprobs": {
        "tokens": [" Vol", "canoes"], "token_logprobs": [-0.2, -0.01], "text_offset": [0, 4],
        "top_logprobs": [{" Vol": -0.2, " The": -1.9}, {"canoes": -0.01}]}, "finish_reason": None}]}
    events = feed(chunk)
    assert TextDelta(" Volcanoes") in events
    (probs,) = [e for e in events if isinstance(e, TokenLogprobs)]
    assert probs.tokens == (Token(" Vol", -0.2, (Alternative(" Vol", -0.2), Alternative(" The", -1.9))),
                            Token("canoes", -0.01, (Alternative("canoes", -0.01),)))


def test_chat_style_logprobs_in_a_completion_are_read_too() -> None:
    """llama.cpp's own server sends chat's ``content`` list in its completions."""
    chunk = {"choices": [{"text": "Hi", "logprobs": {"content": [{"token": "Hi", "logprob": -0.5, "top_logprobs": []}]},
                          "finish_reason": "stop"}]}
    events = feed(chunk)
    assert next(e for e in events if isinstance(e, TokenLogprobs)).tokens[0].text == "Hi"
    assert Finish("stop") in events


@pytest.mark.parametrize("logprobs", [None, "odd", {"tokens": "x"}, {"tokens": ["a", "b"], "token_logprobs": [-1.0]},
                                      {"tokens": ["a"], "token_logprobs": [None], "top_logprobs": [7]},
                                      {"tokens": [3], "token_logprobs": [-1.0], "top_logprobs": [{"a": "b"}]}])
def test_odd_logprobs_in_a_completion_never_fail_the_text(logprobs: object) -> None:
    events = feed({"choices": [{"text": "ab", "logprobs": logprobs, "finish_reason": None}]})
    assert events[-1:] == [TextDelta("ab")] or TextDelta("ab") in events
    text = "".join(t.text for e in events if isinstance(e, TokenLogprobs) for t in e.tokens)
    assert text in ("", "ab")  # whatever came, the tokens spell the text or are left out


def test_a_completion_chunk_of_the_wrong_shape_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        feed({"choices": [{"text": 5}]})
    with pytest.raises(ProtocolError):
        feed({"choices": "none"})


def test_the_completions_body_spells_probabilities_as_one_number() -> None:
    from granite_magic._params import Sampling

    body = COMPLETIONS.body(Request("m", (), Sampling({"logprobs": True, "top_logprobs": 4, "max_tokens": 9}), prompt="Hi"))
    assert (body["prompt"], body["logprobs"], body["max_tokens"]) == ("Hi", 4, 9) and "top_logprobs" not in body
    alone = COMPLETIONS.body(Request("m", (), Sampling({"logprobs": True}), prompt="Hi"))
    assert alone["logprobs"] == 0  # the chosen tokens only
    assert "logprobs" not in COMPLETIONS.body(Request("m", (), Sampling(), prompt="Hi"))


# --- the panel -----------------------------------------------------------------------------------------


def test_the_panel_raw_toggle_sends_raw_and_copies_as_a_raw_cell(server: FakeOpenRouter, session: Any) -> None:
    from granite_magic._panel import Panel

    panel = Panel(session, prompt=PROMPT, system="Be brief.", backend="http")
    panel.raw.value = True
    assert panel.system.disabled and "raw" in panel.system.placeholder
    cell = panel.copy_as_cell()
    assert "--raw" in cell.splitlines()[0].split() and "Be brief." not in cell
    panel.run()
    assert panel.wait(30)
    assert isinstance(panel.results, Result) and panel.results.error is None
    assert sent(server)[-1]["prompt"] == PROMPT
    panel.raw.value = False
    assert not panel.system.disabled and "-s 'Be brief.'" in panel.copy_as_cell()


# --- the local model ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_local_model_reads_a_raw_prompt_exactly_as_written(local: Any) -> None:
    request = local.request(PROMPT, raw=True, temperature=0, max_tokens=10, logprobs=True, top_logprobs=3)
    text, count = local.prompt_preview(request)
    assert text == "<bos>" + PROMPT  # the BOS the model reads, then the text: no template, no framing
    framed, _ = local.prompt_preview(local.request(PROMPT, temperature=0))
    assert framed != text and framed.count("Question:") == 2  # the plain framing wraps it as a question again
    result = local.chat(PROMPT, raw=True, temperature=0, max_tokens=10, logprobs=True, top_logprobs=3)
    assert result.error is None and result.text.strip() and result.provider == "llama.cpp (local, raw)"
    assert result.usage.prompt_tokens == count
    assert result.tokens and "".join(t.text for t in result.tokens) == result.text
    # chat markers typed by hand are the model's own special tokens, as llama.cpp's completion reads them
    assert local.prompt_preview(local.request("<start_of_turn>", raw=True))[1] == 2


@pytest.mark.slow
def test_a_raw_cell_on_the_local_model(ip: InteractiveShell, model_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.delenv("GRANITE_BASE_URL", raising=False)
    monkeypatch.setenv("GRANITE_LOCAL_MODEL", model_path)
    magics = magics_of(ip)
    magics.base_url = ""
    magics.session.set_api_key(None)
    magics.session.clients.clear()
    out = run(ip, "--raw --seeds 1,2 --temperature 0.8 --max-tokens 8 -o g", "The capital of France is")
    grid = ip.user_ns["g"]
    assert [r.error for r in grid.runs] == [None, None] and all(r.result.text for r in grid.runs), shown(out)
    assert "local llama.cpp · raw completion" in shown(out)
    dry = shown(run(ip, "--raw --dry-run", "The capital of France is"))
    assert "(raw completion)" in dry and '"prompt": "The capital of France is"' in dry and "as written" in dry
