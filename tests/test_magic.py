"""%%granite in-process, with IPython's InteractiveShell against the local server."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from granite_magic.testing import FakeOpenRouter, Scenario, fake_reply

from .conftest import TEST_KEY, magics_of, run, shown


def reply(prompt: str, system: str | None = None, **params: Any) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return "".join(fake_reply(messages, params))


def test_cell_streams_and_prints_in_a_terminal(ip: InteractiveShell) -> None:
    out = run(ip, "--seed 7 --temperature 0.3", "Tell me about rivers")
    assert reply("Tell me about rivers", seed=7, temperature=0.3) in out.stdout
    assert "tokens" in out.stdout and "$" in out.stdout


def test_every_option_reaches_the_request(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    line = (
        "-m ibm-granite/granite-4.0-h-micro -s 'Be brief.' --temperature 0.5 --top-p 0.9 --top-k 40 --min-p 0.1 --top-a 0.2 "
        "--seed 11 --max-tokens 50 --stop END --stop STOP --repetition-penalty 1.1 --frequency-penalty 0.5 "
        "--presence-penalty -0.5 --logit-bias '{\"42\": -100}'"
    )
    run(ip, line, "Hi")
    body = server.chat_requests[-1].body
    assert server.chat_requests[-1].sampling == {
        "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.1, "top_a": 0.2, "seed": 11, "max_tokens": 50,
        "stop": ["END", "STOP"], "repetition_penalty": 1.1, "frequency_penalty": 0.5, "presence_penalty": -0.5,
        "logit_bias": {"42": -100},
    }
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_invalid_option_is_refused_before_sending(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    out = run(ip, "--top-p 1.5", "Hi")
    assert "--top-p 1.5 is out of range: must be a number, 0 < top_p <= 1" in out.stderr
    assert "nothing was sent" in out.stderr
    out = run(ip, "--format yaml", "Hi")
    assert "invalid choice" in out.stderr
    assert server.chat_requests == []


def help_shown(ip: InteractiveShell, question: str = "%%granite?") -> str:
    """What IPython prints for ``%%granite?`` (it asks the magic's ``getdoc``)."""
    with capture_output() as captured:
        ip.run_cell(question)
    return captured.stdout


def test_help_lists_every_option_with_range_and_default(ip: InteractiveShell) -> None:
    doc = help_shown(ip)
    assert help_shown(ip, "%granite?") == doc
    for option in ["--model", "--system", "--base-url", "--out", "--format", "--chat", "--dry-run", "--no-interpolate",
                   "--temperature", "--top-p", "--top-k", "--min-p", "--top-a", "--seed", "--max-tokens", "--stop",
                   "--repetition-penalty", "--frequency-penalty", "--presence-penalty", "--logit-bias"]:
        assert option in doc
    assert "Range: number, 0 <= temperature <= 2; when not sent: 1." in doc


def test_help_lists_every_subcommand_and_every_setting(ip: InteractiveShell) -> None:
    from granite_magic._magic import SUBCOMMANDS, TRAIT_SETTINGS, GraniteMagics
    from granite_magic._settings import Settings, configurable

    doc = help_shown(ip)
    for name, command in SUBCOMMANDS.items():  # a subcommand added to the table is in the help, with its words
        assert f"%granite {name} {command.arguments}".strip() in doc and command.help and command.help in doc
    config = " ".join(doc[doc.index("Defaults: %config GraniteMagics.<name> for"):].split())
    traits = GraniteMagics.class_trait_names(config=True)
    assert set(TRAIT_SETTINGS) | {"live"} == set(traits)
    assert all(name in config.replace(",", " ").split() for name in traits)
    # every Settings field has help, and is a %config trait unless it says it is not
    assert {f.name for f in configurable()} == set(TRAIT_SETTINGS.values())
    for field in dataclasses.fields(Settings):
        assert field.metadata["help"]
        assert field.metadata["config"] is False or GraniteMagics.class_traits()[field.name.removesuffix("_s")].help


def test_every_subcommand_in_the_table_is_dispatched(ip: InteractiveShell) -> None:
    from granite_magic._magic import SUBCOMMANDS

    with capture_output() as captured:
        ip.run_line_magic("granite", "nonsense")
    assert f"use one of: {', '.join(SUBCOMMANDS)}" in captured.stderr and "cache" in SUBCOMMANDS
    with capture_output() as captured:
        ip.run_line_magic("granite", "reset")
    assert "no conversations to forget" in captured.stdout


def test_environment_backend_reaches_the_magic_unless_config_sets_one(ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    magics = magics_of(ip)
    monkeypatch.setenv("GRANITE_BACKEND", "local")
    assert magics.backend is None and magics.settings().backend == "local"
    magics.backend = "http"
    try:
        assert magics.settings().backend == "http"
    finally:
        monkeypatch.delenv("GRANITE_BACKEND")
        magics.backend = None  # the session's settings are made again, without the variable
    assert magics.session.settings.backend == "auto"


def test_interpolation_replaces_known_names_only(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    ip.user_ns["topic"] = "granite"
    cell = 'About {topic}. Code: def f(): return {"a": 1}\n{x for x in y} {missing} {{topic}}'
    run(ip, "", cell)
    sent = server.chat_requests[-1].body["messages"][-1]["content"]
    assert sent == 'About granite. Code: def f(): return {"a": 1}\n{x for x in y} {missing} {topic}'
    run(ip, "--no-interpolate", "About {topic}")
    assert server.chat_requests[-1].body["messages"][-1]["content"] == "About {topic}"


def test_out_stores_the_result_and_last_shows_it(ip: InteractiveShell) -> None:
    run(ip, "--seed 1 -o answer", "Hi")
    result = ip.user_ns["answer"]
    assert result.text == reply("Hi", seed=1) and result.finish_reason == "stop"
    assert ip.run_line_magic("granite", "last") is result


def test_dry_run_shows_the_body_and_sends_nothing(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    out = run(ip, "--dry-run --seed 3 -s sys", "Hi")
    assert '"seed": 3' in shown(out) and '"content": "sys"' in shown(out)
    assert TEST_KEY not in shown(out) + out.stderr
    assert server.chat_requests == []


def test_config_defaults_and_cell_options_win(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    ip.run_line_magic("config", "GraniteMagics.default_params = {'temperature': 0.2, 'seed': 5}")
    run(ip, "--seed 9", "Hi")
    assert server.chat_requests[-1].sampling == {"temperature": 0.2, "seed": 9}


def test_unsupported_parameter_warning(ip: InteractiveShell) -> None:
    out = run(ip, "--top-a 0.3 --min-p 0.1", "Hi")
    assert "top_a is not in this model's supported parameters" in out.stderr
    assert "min_p is not in this model's supported parameters" in out.stderr
    assert "temperature" not in out.stderr


def test_conversation_keeps_history_and_survives_a_failed_turn(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    run(ip, "--chat tutor -s 'You teach.' --seed 1", "First question")
    server.push(Scenario(error_after=3))
    failed = run(ip, "--chat tutor", "Second question")
    assert "partial reply" in failed.stderr
    run(ip, "--chat tutor", "Third question")
    messages = server.chat_requests[-1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "You teach." and messages[1]["content"] == "First question"
    assert messages[2]["content"] == reply("First question", system="You teach.", seed=1)
    history = run_line(ip, "history tutor")
    assert "Third question" in history and "Second question" not in history
    run_line(ip, "reset tutor")
    run(ip, "--chat tutor", "Fresh")
    assert [m["role"] for m in server.chat_requests[-1].body["messages"]] == ["user"]


def run_line(ip: InteractiveShell, line: str) -> str:
    with capture_output() as captured:
        ip.run_line_magic("granite", line)
    return shown(captured) + captured.stderr


def test_stateless_by_default(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    run(ip, "", "One")
    run(ip, "", "Two")
    assert len(server.chat_requests[-1].body["messages"]) == 1


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        (Scenario(status=401), "OPENROUTER_API_KEY"),
        (Scenario(status=402), "credits"),
        (Scenario(drop_after=4), "connection dropped"),
        (Scenario(error_after=4), "partial reply"),
    ],
)
def test_failures_show_a_short_message_not_a_traceback(ip: InteractiveShell, server: FakeOpenRouter, scenario: Scenario, expected: str) -> None:
    server.push(scenario)
    out = run(ip, "-o failed", "Hi")
    assert expected in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    result = ip.user_ns["failed"]
    assert result.partial and result.error


def test_missing_key_says_both_ways_forward(ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENROUTER_API_KEY")
    out = run(ip, "--base-url https://openrouter.ai/api/v1", "Hi")
    assert "OPENROUTER_API_KEY" in out.stderr and "%granite key" in out.stderr


def test_key_subcommand_keeps_the_key_for_this_kernel(ip: InteractiveShell, server: FakeOpenRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENROUTER_API_KEY")
    monkeypatch.setattr("getpass.getpass", lambda prompt="": TEST_KEY)
    out = run_line(ip, "key")
    assert TEST_KEY not in out and "kernel" in out
    run(ip, "", "Hi")
    assert server.chat_requests[-1].headers["Authorization"] == f"Bearer {TEST_KEY}"


def test_models_subcommand(ip: InteractiveShell) -> None:
    out = run_line(ip, "models")
    assert "131,000" in out and "$0.017" in out and "$0.112" in out and "repetition_penalty" in out


def test_format_code_strips_fences_and_offers_the_next_cell(ip: InteractiveShell, server: FakeOpenRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    offered: list[str] = []
    monkeypatch.setattr(ip, "set_next_input", lambda text, replace=False: offered.append(text))
    server.push(Scenario(text="Here:\n```python\nprint('hi')\n```"))
    run(ip, "-f code -o code", "Write code")
    assert ip.user_ns["code"].value == "print('hi')"
    assert offered == ["print('hi')"]


def test_format_json_parses_or_reports_and_keeps_raw(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    server.push(Scenario(text='{"a": [1, 2]}'))
    run(ip, "-f json -o data", "JSON please")
    assert ip.user_ns["data"].value == {"a": [1, 2]}
    server.push(Scenario(text="{not json"))
    out = run(ip, "-f json -o bad", "JSON please")
    assert "not valid JSON" in out.stderr and ip.user_ns["bad"].text == "{not json"


def test_widget_view_saves_markdown_with_metadata(ip: InteractiveShell, recorded_comms: list[Any]) -> None:
    magics_of(ip).live = "widget"
    out = run(ip, "--seed 2", "Hi <img src=x onerror=alert(1)>")
    final = [o for o in out.outputs if "text/markdown" in o.data and "granite_magic" in (o.metadata or {})]
    assert final, "no final static output"
    data, meta = final[-1].data, final[-1].metadata["granite_magic"]
    assert data["text/plain"] == reply("Hi <img src=x onerror=alert(1)>", seed=2)
    assert meta["finish_reason"] == "stop" and meta["params"] == {"seed": 2} and meta["usage"]["cost"] > 0
    assert meta["model"] == "ibm-granite/granite-4.0-h-micro" and meta["partial"] is False


def test_model_html_is_never_raw(ip: InteractiveShell, server: FakeOpenRouter, recorded_comms: list[Any]) -> None:
    magics_of(ip).live = "widget"
    server.push(Scenario(text="Look <img src=x onerror=alert(1)> <script>alert(2)</script>"))
    out = run(ip, "", "Hi")
    final = [o for o in out.outputs if "granite_magic" in (o.metadata or {})][-1]
    assert "<img" not in final.data["text/markdown"] and "<script" not in final.data["text/markdown"]
    live = [str(data) for _, kind, data in recorded_comms if kind == "comm_msg"]
    assert live and not any("<img" in text or "<script" in text for text in live)


def test_widget_updates_are_throttled_and_the_text_is_complete(ip: InteractiveShell, server: FakeOpenRouter, recorded_comms: list[Any]) -> None:
    magics_of(ip).live = "widget"
    server.push(Scenario(tokens=5000, tokens_per_s=2500))  # two seconds of a fast stream
    started = time.monotonic()
    run(ip, "-o long --seed 1", "Write a lot")
    duration = time.monotonic() - started
    result = ip.user_ns["long"]
    assert len(result.text.split()) == 5000
    updates = [t for t, kind, data in recorded_comms if kind == "comm_msg" and data.get("method") == "update"]
    assert len(updates) >= 5  # it did stream live
    assert len(updates) <= 15 * duration + 3, f"{len(updates)} updates in {duration:.2f} s"


def test_no_widget_outlives_its_cell(ip: InteractiveShell, recorded_comms: list[Any]) -> None:
    from ipywidgets.widgets.widget import _instances

    magics_of(ip).live = "widget"
    run(ip, "--seed 1", "Hi")  # warm up whatever is made once
    before = len(_instances)
    for seed in range(2, 7):
        run(ip, f"--seed {seed}", "Hi")
    assert len(_instances) == before
    closed = [data for _, kind, data in recorded_comms if kind == "comm_close"]
    assert len(closed) >= 10  # each cell made an Output and its Layout, and closed both


def test_a_large_reply_reaches_the_front_end_once(ip: InteractiveShell, server: FakeOpenRouter, recorded_comms: list[Any]) -> None:
    from granite_magic._render import LIVE_TEXT_LIMIT

    magics_of(ip).live = "widget"
    word = "granite" * 40  # about 2 MB in 7,000 tokens
    server.push(Scenario(text=" ".join([word] * 7000)))
    out = run(ip, "-o big", "Hi")
    text = ip.user_ns["big"].text
    assert len(text) > 1_900_000
    final = [o for o in out.outputs if "granite_magic" in (o.metadata or {})][-1]
    saved = len(json.dumps({"data": final.data, "metadata": final.metadata}))
    assert saved < 2.1 * len(text)  # text/plain and text/markdown: twice, not three times
    updates = [len(json.dumps(data)) for _, kind, data in recorded_comms if kind == "comm_msg"]
    assert updates and max(updates) < 3 * LIVE_TEXT_LIMIT  # live refreshes show the end, never the whole reply


def test_the_readme_states_the_probes_request_count() -> None:
    from pathlib import Path

    from granite_magic._probe import probe_requests

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"with at most {probe_requests()} tiny requests" in readme
