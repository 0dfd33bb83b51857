"""Each front end words an error in its own terms: the Python API names keyword arguments and environment
variables, a cell names options and ``%config``, and neither is told to type the other's."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell

import granite_magic
from granite_magic import GraniteClient, InvalidParameterError
from granite_magic.testing import FakeOpenRouter, Scenario

from .conftest import FAST_RETRY, TEST_KEY, magics_of, run


def lookup(river: str) -> str:
    """Look a river up."""
    return river


def test_python_is_told_max_steps_and_a_cell_is_told_the_option(client: GraniteClient, ip: InteractiveShell,
                                                                  server: FakeOpenRouter) -> None:
    with pytest.raises(InvalidParameterError) as info:
        client.chat("hi", tools=[lookup], max_steps=99)
    assert "max_steps=99 is out of range" in str(info.value) and "--" not in str(info.value)
    ip.user_ns["lookup"] = lookup
    out = run(ip, "--tools lookup --max-steps 99", "hi")
    assert "--max-steps 99 is out of range" in out.stderr and "max_steps=" not in out.stderr
    assert server.chat_requests == []


def test_a_budget_refusal_from_python_names_the_environment_not_config(server: FakeOpenRouter,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_KEY)
    monkeypatch.setenv("GRANITE_BASE_URL", server.base_url)
    monkeypatch.setenv("GRANITE_BUDGET_USD", "0.0000001")
    with pytest.raises(InvalidParameterError) as info:
        granite_magic.compare("Name a colour", seeds=[1, 2], max_tokens=20)
    message = str(info.value)
    assert "budget would not hold" in message and "GRANITE_BUDGET_USD" in message and "max_tokens=" in message
    assert "%config" not in message and "--max-tokens" not in message
    assert server.chat_requests == []


def test_a_budget_refusal_in_a_cell_names_config_and_the_option(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    magics = magics_of(ip)
    magics.budget_usd = 0.0000001
    try:
        out = run(ip, "--max-tokens 20 --seeds 1,2", "Name a colour")
    finally:
        magics.budget_usd = None
    assert "budget would not hold" in out.stderr and "nothing was sent" in out.stderr
    assert "%config GraniteMagics.budget_usd" in out.stderr and "--max-tokens" in out.stderr
    assert "GRANITE_BUDGET_USD" not in out.stderr and "max_tokens=" not in out.stderr


def test_a_401_from_python_says_how_to_give_a_key(server: FakeOpenRouter) -> None:
    server.push(Scenario(status=401, error_message="User not found."))
    client = GraniteClient(api_key="sk-or-v1-wrong", base_url=server.base_url, retry=FAST_RETRY)
    try:
        with pytest.raises(granite_magic.AuthenticationError) as info:
            client.chat("hi")
    finally:
        client.close()
    assert "api_key=" in str(info.value) and "OPENROUTER_API_KEY" in str(info.value)
    assert "%granite key" not in str(info.value) and "sk-or-v1-wrong" not in str(info.value)


def test_a_401_in_a_cell_says_how_to_give_a_key_there(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    server.push(Scenario(status=401, error_message="User not found."))
    out = run(ip, "", "hi")
    assert "%granite key" in out.stderr and "api_key=" not in out.stderr


def test_a_flag_is_spelled_bare_in_a_cell() -> None:
    from granite_magic._advice import cell_spelling, worded

    error = InvalidParameterError("verify=True runs live and cache='replay' never does: use one of them", names=("verify", "cache"))
    assert worded(error, cell_spelling) == "--verify runs live and --cache replay never does: use one of them"
    assert worded(error, None) == error.message == str(error)
