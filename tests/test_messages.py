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


def test_a_terminal_grid_says_when_columns_start_and_when_an_interrupt_stopped_it(ip: InteractiveShell,
                                                                                  server: FakeOpenRouter) -> None:
    import signal
    import threading

    from .conftest import wait_until

    server.default = Scenario(tokens=20, tokens_per_s=40)  # half a second a column: long enough to be seen streaming
    try:
        out = run(ip, "--seeds 1,2 --max-tokens 20", "Hi")
    finally:
        server.default = Scenario()
    assert "seed 1: streaming (first token after" in out.stdout and "seed 2: streaming" in out.stdout

    main = threading.main_thread().ident
    assert main is not None

    def press_ctrl_c() -> None:  # once the first column's request has arrived; the other queues behind it
        if wait_until(lambda: len(server.chat_requests) >= 3):
            signal.pthread_kill(main, signal.SIGINT)

    server.default = Scenario(tokens=400, tokens_per_s=20)
    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        out = run(ip, "--seeds 3,4 --concurrency 1", "Hi")
    finally:
        presser.join()
        server.default = Scenario()
    assert "Interrupted: seed 3 kept what arrived; seed 4 did not start." in out.stderr


def test_token_probabilities_in_a_terminal_say_where_they_are(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    out = run(ip, "--probs 3 --seed 1 --max-tokens 6", "Hi")
    assert "6 tokens with their probabilities are in the result's .tokens and .tokens_frame()" in out.stdout
