"""The magic against a real third-party server: llama-cpp-python's own (its ``[server]`` extra), serving the stand-in.

That server cuts a streaming reply short whenever another request arrives (``interrupt_requests``, on by default),
so a client that looks a listing up beside a reply, or asks ``/generation`` after it, loses replies; it has no
prices and no ``/generation`` either.  A first cell, a grid, ``--probs`` and a ``--chat`` follow-up must all work.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from granite_magic import Comparison, Result

from .conftest import magics_of, run, shown

pytestmark = pytest.mark.slow


@pytest.fixture
def cells(shell: InteractiveShell, llama_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """A kernel whose cells go to the llama.cpp server, as ``GRANITE_BASE_URL`` would send them: a fresh session."""
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    magics = magics_of(shell)
    before = {name: getattr(magics, name) for name in ("base_url", "backend", "default_params", "live")}
    magics.session.close()
    magics.session.conversations.clear()
    magics.base_url = llama_server
    magics.backend = "http"
    magics.default_params = {}
    magics.live = "terminal"
    yield shell
    magics.session.close()
    for name, value in before.items():  # the shell is shared with other modules' tests
        setattr(magics, name, value)


def test_the_first_cell_streams_a_whole_reply(cells: InteractiveShell) -> None:
    out = run(cells, "--seed 1 --max-tokens 16 -o first", "Question: Why is granite hard?\nAnswer:")
    result = cells.user_ns["first"]
    assert isinstance(result, Result)
    assert result.error is None and not result.partial and result.finish_reason in ("stop", "length"), shown(out)
    assert result.text.strip() and result.completion_tokens > 0
    assert "failed" not in shown(out) and "Traceback" not in out.stderr


def test_a_grid_gets_every_column_whole(cells: InteractiveShell) -> None:
    out = run(cells, "--seeds 1-3 --temperature 0.9 --max-tokens 12 -o grid", "Question: Name a hard rock.\nAnswer:")
    grid = cells.user_ns["grid"]
    assert isinstance(grid, Comparison)
    assert [run.error for run in grid.runs] == [None, None, None], shown(out)
    assert all(not run.result.partial and run.result.text.strip() for run in grid.runs)
    # seeds are honoured by llama.cpp: the same seed again repeats its column
    again = run(cells, "--seed 2 --temperature 0.9 --max-tokens 12 -o again", "Question: Name a hard rock.\nAnswer:")
    assert cells.user_ns["again"].text == grid.runs[1].result.text, shown(again)


def test_token_probabilities_come_back(cells: InteractiveShell) -> None:
    out = run(cells, "--probs 3 --seed 1 --max-tokens 8 -o probs", "Question: What is basalt?\nAnswer:")
    result = cells.user_ns["probs"]
    assert result.error is None and not result.partial, shown(out)
    assert result.tokens and "".join(token.text for token in result.tokens) == result.text
    assert all(1 <= len(token.top) <= 3 for token in result.tokens)


def test_a_chat_follow_up_continues_the_conversation(cells: InteractiveShell) -> None:
    first = run(cells, "--chat rocks --seed 1 --max-tokens 12 -o one", "Name one igneous rock.")
    second = run(cells, "--chat rocks --seed 1 --max-tokens 12 -o two", "And one more?")
    one, two = cells.user_ns["one"], cells.user_ns["two"]
    assert one.error is None and two.error is None and not two.partial, shown(first) + shown(second)
    history = magics_of(cells).session.conversations["rocks"].messages
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[1]["content"] == one.text and history[3]["content"] == two.text


def test_a_raw_cell_continues_the_text_through_the_completions_endpoint(cells: InteractiveShell) -> None:
    """``--raw`` goes to ``POST /completions``: the stand-in continues the text (no chat template around it), with
    the completions stream's probabilities, and the same seed repeats the reply."""
    prompt = "Question: Why do volcanoes erupt?\nAnswer:"
    out = run(cells, "--raw --probs 3 --seed 4 --temperature 0.7 --max-tokens 12 -o raw", prompt)
    result = cells.user_ns["raw"]
    assert result.error is None and not result.partial and result.text.strip(), shown(out)
    assert result.tokens and "".join(token.text for token in result.tokens) == result.text
    # the 3 most likely, and the picked token after them when it is not among them (the server appends it)
    assert all(token.text in {a.text for a in token.top} and len(token.top) <= 4 for token in result.tokens)
    again = run(cells, "--raw --seed 4 --temperature 0.7 --max-tokens 12 -o again", prompt)
    assert cells.user_ns["again"].text == result.text, shown(again)


def test_a_prompt_over_rows_answers_every_row_in_order(cells: InteractiveShell, tmp_path: Path) -> None:
    """A map's workers, its gate and the client's kept-alive connections against a server that cuts a reply short when
    another request arrives: every row whole, in input order, and a rerun served from the cache."""
    magics = magics_of(cells)
    magics.cache_dir = str(tmp_path / "cache")  # the rows are cached (as a map's are): in this test's own directory
    try:
        cells.user_ns["rocks"] = ["granite", "basalt", "chalk", "marble"]
        out = run(cells, "--over rocks --concurrency 2 --seed 1 --max-tokens 8 -o out", "Question: Is {item} hard?\nAnswer:")
        frame = cells.user_ns["out"]
        assert list(frame["_status"]) == ["ok"] * 4, shown(out)
        assert list(frame["item"]) == ["granite", "basalt", "chalk", "marble"] and frame["reply"].str.strip().astype(bool).all()
        again = run(cells, "--over rocks --concurrency 2 --seed 1 --max-tokens 8 -o again", "Question: Is {item} hard?\nAnswer:")
        assert list(cells.user_ns["again"]["_status"]) == ["cached"] * 4, shown(again)
        assert list(cells.user_ns["again"]["reply"]) == list(frame["reply"])
    finally:
        magics.cache_dir = ""
