"""--context, --docs and --cell from a cell: what reaches each API shape, and the one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

from granite_magic.testing import FakeOpenRouter

from .conftest import run, shown


@pytest.fixture
def frame(ip: InteractiveShell) -> pd.DataFrame:
    df = pd.DataFrame({"city": ["Oslo", "Lima", None], "rain_mm": [760.0, 13.0, None]})
    ip.user_ns["rain"] = df
    return df


@pytest.mark.parametrize(("api", "field"), [("chat", "messages"), ("responses", "instructions"), ("messages", "system")])
def test_the_context_block_goes_on_the_system_side_of_every_shape(ip: InteractiveShell, server: FakeOpenRouter,
                                                                  frame: pd.DataFrame, api: str, field: str) -> None:
    run(ip, f"--api {api} -s 'Be brief.' --context rain --max-tokens 5", "Which city is driest?")
    body = server.chat_requests[-1].body
    system = body["messages"][0]["content"] if field == "messages" else body[field]
    assert system.startswith("Be brief.") and "<context>" in system and "### rain (pandas.DataFrame)" in system
    assert "city" in system and "rain_mm" in system and "missing values" in system
    user = [m for m in body.get("messages", body.get("input", [])) if m["role"] == "user"]
    assert user[-1]["content"] == "Which city is driest?"  # the user's prompt is left as written


def test_documents_and_an_earlier_cell(ip: InteractiveShell, server: FakeOpenRouter, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notes.md").write_text("# Field notes\nGranite is an igneous rock.\n")
    monkeypatch.chdir(tmp_path)
    ip.run_cell("answer = 6 * 7", store_history=True)
    ip.run_cell("%%granite --docs '*.md' --cell -1 --max-tokens 5\nWhat do my notes say?", store_history=True)
    system = server.chat_requests[-1].body["messages"][0]["content"]
    assert '<document name="notes.md"' in system and "igneous rock" in system
    assert "answer = 6 * 7" in system


@pytest.mark.parametrize(("options", "message"), [
    ("--context nowhere", "--context names nowhere, which this notebook does not define"),
    ("--docs missing-file.txt", "missing-file.txt"),
    ("--cell 99999", "--cell 99999 is out of range"),
])
def test_what_cannot_be_attached_is_refused_in_one_line(ip: InteractiveShell, server: FakeOpenRouter, options: str,
                                                        message: str) -> None:
    out = run(ip, options, "Hi")
    assert message in out.stderr and "nothing was sent" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and server.chat_requests == []


def test_dry_run_shows_the_context_the_size_and_the_worst_case(ip: InteractiveShell, server: FakeOpenRouter,
                                                               frame: pd.DataFrame) -> None:
    out = run(ip, "--context rain --max-tokens 100 --dry-run", "Which city is driest?")
    text = shown(out)
    assert "### rain (pandas.DataFrame)" in text and "prompt: about" in text and "worst-case cost $" in text
    assert server.chat_requests == []


def test_a_prompt_longer_than_the_context_is_refused_with_the_numbers(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    ip.user_ns["book"] = "granite " * 70_000  # 560,000 characters: about 140,000 tokens, more than 131,000
    out = run(ip, "--max-tokens 100 --no-interpolate", "{book}")
    assert len(server.chat_requests) == 1  # sent literally, "{book}" is short: it goes
    server.requests.clear()
    out = run(ip, "--max-tokens 100", "Summarise: {book}")
    assert "the prompt is about 140,0" in out.stderr and "131,000-token context" in out.stderr
    assert "nothing was sent" in out.stderr and server.chat_requests == []
