"""The Python API in a notebook where the extension is loaded: it runs in the magic's session, so what a person
configured with ``%config`` holds for it (the budget above all), its runs are in ``%granite usage``, and the
environment is still followed from one call to the next.  Without the extension it keeps its own session."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

import granite_magic
from granite_magic._ledger import BudgetError
from granite_magic.testing import FakeOpenRouter

from .conftest import TEST_KEY, magics_of


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("GRANITE_CACHE_DIR", str(tmp_path / "cache"))  # a map's rows are cached (auto) by default


def test_a_map_from_python_is_held_to_the_budget_set_with_config(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    magics_of(ip).budget_usd = 0.0000001
    with pytest.raises(BudgetError) as info:
        granite_magic.map(["granite", "chalk"], "Is {item} a rock?", max_tokens=20)
    message = str(info.value)
    assert "budget would not hold" in message and "these 2 runs" in message
    # raising GRANITE_BUDGET_USD would change nothing: %config wins over it, so the refusal names where it was set
    assert "%config GraniteMagics.budget_usd" in message and "GRANITE_BUDGET_USD" not in message
    assert "max_tokens=" in message  # the call's own words for what it can change
    assert server.chat_requests == []


def test_a_compare_from_python_is_held_to_the_budget_set_with_config(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    magics_of(ip).budget_usd = 0.0000001
    with pytest.raises(BudgetError, match=r"%config GraniteMagics\.budget_usd"):
        granite_magic.compare("Name a colour", seeds=[1, 2], max_tokens=20)
    assert server.chat_requests == []


def test_python_runs_in_a_notebook_are_in_granite_usage(ip: InteractiveShell, server: FakeOpenRouter, capsys: Any) -> None:
    ledger = magics_of(ip).session.ledger
    before = len(ledger.entries)
    granite_magic.map(["granite", "chalk", "basalt"], "Is {item} a rock?", max_tokens=5, temperature=0)
    granite_magic.compare("Name a colour", seeds=[1, 2], max_tokens=5)
    assert len(ledger.entries) == before + 5
    assert list(granite_magic.usage()["kind"][-5:]) == ["map", "map", "map", "grid", "grid"]
    ip.run_line_magic("granite", "usage")
    assert f"{before + 5} runs" in capsys.readouterr().out


def test_config_wins_over_the_environment_for_python_calls_as_for_cells(ip: InteractiveShell, server: FakeOpenRouter,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANITE_BASE_URL", "http://127.0.0.1:9/api/v1")  # nothing listens there
    monkeypatch.setenv("GRANITE_MODEL", "env/model")
    monkeypatch.setattr(server, "accept_any_model", True)  # the server outlives the test
    magics_of(ip).model = "config/model"
    try:
        out = granite_magic.map(["granite"], "Is {item} a rock?", max_tokens=5)
    finally:
        magics_of(ip).model = ""
    assert list(out["_status"]) == ["ok"]  # sent to the %config base URL the fixture set, not the environment's
    assert [r.body["model"] for r in server.chat_requests] == ["config/model"]


def test_the_environment_is_followed_from_one_python_call_to_the_next(ip: InteractiveShell, server: FakeOpenRouter,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "accept_any_model", True)  # the server outlives the test
    for model in ("first/model", "second/model"):
        monkeypatch.setenv("GRANITE_MODEL", model)  # %config leaves the model unset: the environment's, read each call
        granite_magic.compare("Name a colour", seeds=[1], max_tokens=5)
    assert [r.body["model"] for r in server.chat_requests] == ["first/model", "second/model"]


def test_a_concurrency_out_of_range_is_refused_before_anything_is_sent(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    with pytest.raises(granite_magic.InvalidParameterError, match="concurrency"):
        granite_magic.map(["granite"], "Is {item} a rock?", concurrency=0)
    with pytest.raises(granite_magic.InvalidParameterError, match="concurrency"):
        granite_magic.compare("Name a colour", seeds=[1], concurrency=0)
    assert server.chat_requests == []
    assert magics_of(ip).session.settings.concurrency == 4  # a call's concurrency is its own: no setting changed


def test_without_the_extension_python_calls_keep_their_own_session(server: FakeOpenRouter) -> None:
    # a fresh interpreter with IPython's shell but the extension never loaded: the environment's budget, in its words
    code = (
        "import granite_magic\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "InteractiveShell.instance()\n"
        "try:\n"
        "    granite_magic.compare('Name a colour', seeds=[1, 2], max_tokens=20)\n"
        "except granite_magic.InvalidParameterError as exc:\n"
        "    print(exc)\n"
    )
    env = {"OPENROUTER_API_KEY": TEST_KEY, "GRANITE_BASE_URL": server.base_url, "GRANITE_BUDGET_USD": "0.0000001",
           "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120).stdout
    assert "budget would not hold" in out and "GRANITE_BUDGET_USD" in out and "%config" not in out
    assert server.chat_requests == []
