"""What a cell says besides the reply, and where: stderr (the red box) is for problems, not for good news or
warnings the reply itself disproves."""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from granite_magic.testing import FakeOpenRouter, Scenario

from .conftest import magics_of, run


def test_probabilities_that_came_back_raise_no_warning_that_they_may_be_ignored(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    assert "logprobs" not in server.models[next(iter(server.models))]["supported_parameters"]
    out = run(ip, "--probs 3 --seed 1 --max-tokens 8 -o probs", "Hi")
    assert ip.user_ns["probs"].tokens and "logprobs" not in out.stderr
    server.push(Scenario(logprobs=False))  # a provider that really ignores them: then it is said
    out = run(ip, "--probs 3 --seed 2 --max-tokens 8", "Hi")
    assert "logprobs is not in this model's supported parameters" in out.stderr


def test_a_drift_check_that_finds_the_same_text_is_not_shown_as_a_problem(ip: InteractiveShell, server: FakeOpenRouter,
                                                                          tmp_path: Path) -> None:
    magics = magics_of(ip)
    magics.cache_dir, magics.cache = str(tmp_path), "auto"
    try:
        run(ip, "--seed 3 --max-tokens 8", "Tell me about granite")
        out = run(ip, "--seed 3 --max-tokens 8 --verify", "Tell me about granite")
        server.push(Scenario(text="something else entirely"))
        drifted = run(ip, "--seed 3 --max-tokens 8 --verify", "Tell me about granite")
    finally:
        magics.cache, magics.cache_dir = "", ""
    assert "identical to the recording" in out.stdout and "identical" not in out.stderr
    assert "differs from the recording" in drifted.stderr



def test_an_environment_change_after_loading_takes_effect_at_the_next_cell(ip: InteractiveShell, server: FakeOpenRouter,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``%env GRANITE_BASE_URL=...`` after ``%load_ext`` was silently ignored while ``%config`` worked."""
    magics = magics_of(ip)
    magics.base_url = ""  # no %config value: the environment decides
    monkeypatch.setenv("GRANITE_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    magics.session.settings = magics.settings()
    ip.run_line_magic("env", f"GRANITE_BASE_URL={server.base_url}")
    out = run(ip, "--seed 1 --max-tokens 5 -o r", "Hi")
    assert ip.user_ns["r"].text and len(server.chat_requests) == 1, out.stderr
    assert magics.session.settings.base_url == server.base_url
