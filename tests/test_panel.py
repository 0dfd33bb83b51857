"""The panel through the widget API, without a front end, against the local server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from granite_magic import Comparison, Result
from granite_magic._panel import PRESETS, Panel
from granite_magic._session import Session
from granite_magic.testing import FakeOpenRouter, Scenario

from .conftest import TEST_KEY, magics_of, run, wait_until


@pytest.fixture
def panel(session: Session, server: FakeOpenRouter, recorded_comms: list[Any]) -> Iterator[Panel]:
    p = Panel(session, base_url=server.base_url, prompt="Tell me about granite")
    yield p
    p.stop()
    p.wait(5)


def click_run(panel: Panel) -> None:
    panel.run_button.click()
    assert panel.wait(10), "the run did not finish"


def test_controls_come_from_the_table_with_ranges(panel: Panel) -> None:
    assert list(panel.controls) == ["temperature", "top_p", "top_k", "min_p", "top_a", "frequency_penalty", "presence_penalty",
                                    "repetition_penalty", "seed", "max_tokens", "stop", "logit_bias", "logprobs", "top_logprobs", "tool_choice"]
    temperature = panel.controls["temperature"].value
    assert (temperature.min, temperature.max, temperature.value) == (0, 2, 1)
    assert panel.controls["top_p"].value.min > 0  # 0 is outside top_p's range
    assert not any(c.send.value for c in panel.controls.values())  # nothing is sent until chosen


def test_unsupported_parameters_are_flagged(panel: Panel) -> None:
    assert panel.support_checked.wait(10)  # the model listing is read in the background
    assert "not supported" in panel.controls["min_p"].flag.value
    assert "not supported" in panel.controls["top_a"].flag.value
    assert panel.controls["temperature"].flag.value == ""


def test_run_sends_exactly_the_chosen_fields(panel: Panel, server: FakeOpenRouter) -> None:
    panel.controls["temperature"].value.value = 0.4  # touching a control is choosing to send it
    panel.controls["seed"].value.value = 9
    panel.controls["top_k"].value.value = 30
    panel.controls["top_k"].send.value = False  # ...until its toggle is unticked: set but not sent
    assert panel.controls["temperature"].send.value and panel.controls["seed"].send.value
    panel.system.value = "Be brief."
    click_run(panel)
    (request,) = server.chat_requests
    assert request.sampling == {"temperature": 0.4, "seed": 9}
    assert request.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about granite"}]
    assert isinstance(panel.results, Result) and panel.results.text and not panel.results.partial
    assert panel.run_button.disabled is False and panel.stop_button.disabled is True


def test_a_touched_control_is_sent_and_copied_and_logprobs_is_one_toggle(panel: Panel) -> None:
    panel.controls["temperature"].value.value = 0.3
    panel.controls["logprobs"].send.value = True
    assert panel.chosen_params() == {"temperature": 0.3, "logprobs": True}
    assert "--temperature 0.3 --logprobs true\n" in panel.copy_as_cell()
    assert not isinstance(panel.controls["logprobs"].value, type(panel.controls["logprobs"].send))  # no second checkbox


def test_a_value_past_a_range_is_refused_by_name_not_clamped(panel: Panel, server: FakeOpenRouter) -> None:
    """A bounded box would clamp 25 to 20 without a word, and Copy as cell would show the 20."""
    panel.controls["top_logprobs"].value.value = 25
    assert panel.controls["top_logprobs"].value.value == 25
    panel.run_button.click()
    assert "top_logprobs 25 is out of range: must be an integer, 0 &lt;= top_logprobs &lt;= 20 (nothing was sent)" in panel.message.value
    assert server.chat_requests == [] and not panel.running
    panel.copy_button.click()
    assert "top_logprobs 25 is out of range" in panel.message.value and panel.cell_text.value == ""


def test_only_the_mode_in_use_shows_its_fields_and_the_model_box_names_what_runs(panel: Panel) -> None:
    assert panel.compare_fields.layout.display == "none"
    panel.mode.value = "compare"
    assert panel.compare_fields.layout.display == ""
    assert panel.support_checked.wait(10)
    assert panel.model.placeholder == "ibm-granite/granite-4.0-h-micro"  # the target's label: "... · local llama.cpp" locally


def test_run_returns_at_once_and_stop_keeps_the_partial_text(panel: Panel, server: FakeOpenRouter) -> None:
    server.push(Scenario(tokens=400, tokens_per_s=20))  # 20 s if left alone
    panel.run_button.click()
    # the callback returned while the reply was still streaming: nothing had finished yet
    assert panel.running and panel.results is None and panel.stop_button.disabled is False
    assert wait_until(lambda: bool(server.chat_requests) and panel.results is None and "streaming" in str(panel.output.children[0].outputs))
    panel.stop_button.click()
    assert panel.wait(10)
    result = panel.results
    assert isinstance(result, Result) and result.ended == "interrupted" and 0 < len(result.text.split()) < 400
    assert "Stopped" in panel.message.value
    assert wait_until(lambda: server.chat_requests[0].disconnected)
    # and the panel is usable again
    server.push(Scenario(tokens=5))
    click_run(panel)
    assert isinstance(panel.results, Result) and not panel.results.partial


def test_invalid_value_is_shown_in_place_and_nothing_is_sent(panel: Panel, server: FakeOpenRouter) -> None:
    panel.controls["logit_bias"].value.value = "{broken"
    panel.controls["logit_bias"].send.value = True
    panel.run_button.click()
    assert "logit_bias is not valid JSON" in panel.message.value and "nothing was sent" in panel.message.value
    assert not panel.running and server.chat_requests == []


def test_failed_run_shows_its_message_and_leaves_the_panel_usable(panel: Panel, server: FakeOpenRouter) -> None:
    server.push(Scenario(status=402))
    click_run(panel)
    assert "credits" in panel.message.value
    click_run(panel)
    assert isinstance(panel.results, Result) and not panel.results.partial and panel.message.value == ""


def test_compare_mode_fills_three_columns_and_the_summary(panel: Panel, server: FakeOpenRouter) -> None:
    panel.mode.value = "compare"
    panel.seeds.value = "1-3"
    click_run(panel)
    comparison = panel.results
    assert isinstance(comparison, Comparison) and comparison.labels == ["seed 1", "seed 2", "seed 3"]
    assert panel.history_picker.options[0][0].endswith("seed 1, seed 2, seed 3")  # not "3 runs"
    assert sorted(r.sampling["seed"] for r in server.chat_requests) == [1, 2, 3]
    html = panel.output.children[0].outputs[0]["data"]["text/html"]
    assert "identical groups" in html and "seed 3" in html


def test_a_compare_shows_the_warnings_a_cell_grid_shows(panel: Panel, server: FakeOpenRouter) -> None:
    """min_p is not in the fake model's supported parameters: a cell's grid warns of it, and so does the panel's."""
    panel.mode.value = "compare"
    panel.seeds.value = "1,2"
    panel.controls["min_p"].value.value = 0.1
    panel.controls["min_p"].send.value = True
    click_run(panel)
    assert isinstance(panel.results, Comparison) and all(run.error is None for run in panel.results.runs)
    assert "min_p is not in this model&#x27;s supported parameters" in panel.message.value


def test_presets_set_values_and_send_toggles(panel: Panel) -> None:
    panel.preset.value = "precise"
    assert panel.chosen_params() == PRESETS["precise"]


def test_history_keeps_runs_and_compares_with_the_current(panel: Panel) -> None:
    panel.controls["seed"].set(1)
    click_run(panel)
    panel.controls["seed"].set(2)
    click_run(panel)
    assert [e.number for e in panel.history] == [1, 2]
    panel.history_picker.value = 1
    panel.show_button.click()
    shown = panel.output.children[0].outputs[0]["data"]["text/plain"]
    assert shown == panel.history[0].outcome.text  # type: ignore[union-attr]
    panel.diff_button.click()
    assert "#1" in panel.output.children[0].outputs[0]["data"]["text/html"]


@pytest.mark.parametrize("mode", ["single", "compare"])
def test_copy_as_cell_sends_an_identical_request(ip: InteractiveShell, server: FakeOpenRouter, recorded_comms: list[Any], mode: str) -> None:
    magics = magics_of(ip)
    panel = magics.panel()
    panel.prompt.value = 'Summarise {"a": 1} for me'
    panel.system.value = "You're terse."
    panel.controls["temperature"].set(0.65)
    panel.controls["top_k"].set(40)
    panel.controls["stop"].set(["END", "two words"])
    panel.controls["logit_bias"].set({"42": -5})
    panel.controls["max_tokens"].set(30)
    if mode == "compare":
        panel.mode.value = "compare"
        panel.seeds.value = "1-2"
        panel.sweep.value = "top_p=0.5,0.9"
    click_run(panel)
    from_panel = sorted((r.body for r in server.chat_requests), key=str)
    cell = panel.copy_as_cell()
    line, body = cell.split("\n", 1)
    server.requests.clear()
    run(ip, line.removeprefix("%%granite "), body)
    from_cell = sorted((r.body for r in server.chat_requests), key=str)
    assert from_cell == from_panel and len(from_cell) == (1 if mode == "single" else 4)


def test_panel_subcommand_and_function(ip: InteractiveShell, server: FakeOpenRouter, recorded_comms: list[Any]) -> None:
    import granite_magic

    magics_of(ip).default_params = {"temperature": 0.3}
    shown = ip.run_line_magic("granite", "panel Hello there")
    assert isinstance(shown, Panel) and shown.prompt.value == "Hello there"
    assert shown.chosen_params() == {"temperature": 0.3}
    made = granite_magic.panel(prompt="Hi", seed=4)
    # the kernel's defaults start switched on in every panel, as they apply to every cell
    assert made.session is magics_of(ip).session and made.chosen_params() == {"temperature": 0.3, "seed": 4}


def test_copy_as_cell_can_insert_the_next_cell(ip: InteractiveShell, recorded_comms: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    offered: list[str] = []
    monkeypatch.setattr(ip, "set_next_input", lambda text, replace=False: offered.append(text))
    panel = magics_of(ip).panel("Hello")
    panel.controls["seed"].set(3)
    text = panel.copy_as_cell(insert=True)
    # the kernel's settings (base URL, defaults) are implied, as for any cell in it
    assert offered == [text] and text == "%%granite --seed 3\nHello"


def test_a_bad_sweep_is_refused_in_place_and_the_panel_stays_usable(panel: Panel, server: FakeOpenRouter) -> None:
    panel.mode.value = "compare"
    for sweep in ["temperature=,", "temperature=0,1;temperature=0.5", "seed=7,8"]:
        panel.sweep.value = sweep
        panel.run_button.click()
        assert "nothing was sent" in panel.message.value and not panel.running
        assert panel.run_button.disabled is False and server.chat_requests == []
    panel.sweep.value = "temperature=0,1"
    click_run(panel)
    assert isinstance(panel.results, Comparison) and len(panel.results.runs) == 6


def test_the_panel_is_a_widget_that_fits_in_a_layout(panel: Panel) -> None:
    import ipywidgets

    box = ipywidgets.VBox([ipywidgets.HTML("above"), panel])
    assert box.children[1] is panel and isinstance(panel, ipywidgets.DOMWidget)


def test_nothing_the_panel_sends_to_the_front_end_holds_the_key(panel: Panel, server: FakeOpenRouter, recorded_comms: list[Any]) -> None:
    server.push(Scenario(status=401))
    click_run(panel)
    click_run(panel)
    panel.mode.value = "compare"
    click_run(panel)
    sent = json.dumps([data for _, _, data in recorded_comms], default=str)
    assert len(sent) > 1000 and TEST_KEY not in sent
    assert "API key was refused" in sent  # the 401 message itself did reach the panel
