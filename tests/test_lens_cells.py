"""--probs in a cell: the shaded reply saved in the notebook, the lens under it, branching, and providers without probabilities."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from granite_magic import Result
from granite_magic.testing import FakeOpenRouter, Scenario

from .conftest import magics_of, run, wait_until


def test_probs_gives_tokens_that_make_the_text_and_a_shaded_saved_reply(ip: InteractiveShell, server: FakeOpenRouter,
                                                                         recorded_comms: list[Any]) -> None:
    magics_of(ip).live = "widget"
    out = run(ip, "--probs 5 --seed 3 --temperature 0.8 -o r", "Complete the sentence: The oldest rocks on Earth are")
    body = server.chat_requests[-1].body
    assert (body["logprobs"], body["top_logprobs"]) == (True, 5)
    r: Result = ip.user_ns["r"]
    assert r.tokens and "".join(t.text for t in r.tokens) == r.text and r.probs_kind == "server"
    assert all(1 <= len(t.top) <= 5 for t in r.tokens)
    saved = [o for o in out.outputs if "granite_magic" in (o.metadata or {})][-1]
    html = saved.data["text/html"]
    assert "gm-lens" in html and "%" in html and "<script" not in html
    assert saved.data["text/plain"] == r.text  # readable without HTML too
    steps = r.resample(temperature=0.5, top_k=3)
    assert len(steps) == len(r.tokens) and all(sum(step.values()) == pytest.approx(1) for step in steps)
    assert list(r.tokens_frame().columns)[:3] == ["step", "token", "logprob"]
    assert r.to_dict()["tokens"][0]["text"] == r.tokens[0].text


def _lens_and_branches(out: Any) -> tuple[Any, Any]:
    from ipywidgets.widgets.widget import _instances

    views = [o.data["application/vnd.jupyter.widget-view+json"]["model_id"] for o in out.outputs
             if "application/vnd.jupyter.widget-view+json" in o.data]
    box = next(_instances[m] for m in views if m in _instances and len(getattr(_instances[m], "children", ())) == 2)
    lens, _ = box.children
    return lens, lens.on_branch.__self__


def test_clicking_an_alternative_branches_into_a_new_column(ip: InteractiveShell, server: FakeOpenRouter,
                                                            recorded_comms: list[Any]) -> None:
    magics_of(ip).live = "widget"
    out = run(ip, "--probs 4 --seed 5 -o r", "Tell me about granite")
    r: Result = ip.user_ns["r"]
    plain = [o.data.get("text/plain", "") for o in out.outputs if "application/vnd.jupyter.widget-view+json" in o.data]
    assert any(p.startswith(f"sampling lens over {len(r.tokens)} tokens (an interactive widget") for p in plain)
    assert not any(p.startswith(("VBox(", "LensView(")) for p in plain)  # no repr where widgets are not shown
    lens, branches = _lens_and_branches(out)
    requests = len(server.chat_requests)
    lens.temperature.value = 0.3  # moving a slider sends nothing
    assert len(server.chat_requests) == requests
    lens.token.value = 3  # the third token, as the lens and the branch's column both count
    assert "token 3 of" in lens.table.value
    alternative = r.tokens[2].top[-1].text
    assert lens.branch_buttons[-1].tooltip == f"replace token 3 with {alternative!r} and continue from there"
    lens.branch_buttons[-1].click()
    assert wait_until(lambda: len(branches.runs) == 2, timeout=15)
    sent = server.chat_requests[-1].body["messages"]
    prefix = "".join(t.text for t in r.tokens[:2]) + alternative
    assert sent[-1] == {"role": "assistant", "content": prefix}
    branch = branches.runs[1].result
    assert branch.text.startswith(prefix) and branches.comparison.labels == ["original", f"branch at token 3: {alternative!r}"]
    assert [e.kind for e in magics_of(ip).session.ledger.entries][-1] == "branch"
    # the original and a branch are different requests by design: no determinism verdict on them
    assert branches.comparison.determinism == [] and "honoured" not in branches.comparison.summary


def test_a_provider_without_probabilities_says_so_in_one_line(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    server.push(Scenario(logprobs=False))
    out = run(ip, "--probs 5 -o r", "Hi")
    assert ip.user_ns["r"].text and ip.user_ns["r"].tokens == []
    assert "this provider returned no token probabilities" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("k", ["0", "21", "x"])
def test_probs_out_of_range_is_refused(ip: InteractiveShell, server: FakeOpenRouter, k: str) -> None:
    out = run(ip, f"--probs {k}", "Hi")
    assert "nothing was sent" in out.stderr and server.chat_requests == []


def test_the_lens_starts_at_the_runs_settings_and_says_which_were_sent(ip: InteractiveShell, server: FakeOpenRouter,
                                                                        recorded_comms: list[Any]) -> None:
    magics_of(ip).live = "widget"
    out = run(ip, "--probs 5 --seed 3 --temperature 0.8 --top-k 8 -o r", "Complete the sentence: The oldest rocks on Earth are")
    lens, _ = _lens_and_branches(out)
    assert (lens.temperature.value, lens.top_k.value, lens.top_p.value, lens.min_p.value) == (0.8, 8, 1.0, 0.0)
    head = html.unescape(lens.header.value)
    assert "temperature 0.8, top-k 8 (sent); top-p 1, min-p 0 (not sent: the API's documented defaults)" in head
    # untouched, the sliders are the run: "now" is the "at the run" column, row for row
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", lens.table.value, re.S)[1:]]
    assert rows and all(re.sub(r"<[^>]+>", "", row[3]).strip() == re.sub(r"<[^>]+>", "", row[4]).split()[0] for row in rows)


def test_picks_outside_the_k_listed_are_said_to_be_so_not_impossible(ip: InteractiveShell, server: FakeOpenRouter,
                                                                      recorded_comms: list[Any]) -> None:
    magics_of(ip).live = "widget"
    out = run(ip, "--probs 2 --seed 11 --max-tokens 60 -o r", "Tell me about granite")  # the provider's default settings
    r: Result = ip.user_ns["r"]
    lens, _ = _lens_and_branches(out)
    outside = [i for i, t in enumerate(r.tokens) if t.text not in {a.text for a in t.top}]
    assert outside and lens.lens.unlisted() == outside  # the fake server picks past the top 2 now and then
    summary = html.unescape(lens.summary.value)
    assert f"{len(outside)} of the picks are not among the 2 listed alternatives" in summary
    assert "could not have been made" not in summary and "gm-lens-x" not in lens.strip.value
    lens.token.value = outside[0] + 1
    assert "not among the 2 listed · kept" in lens.table.value


@pytest.mark.slow
def test_a_local_run_starts_the_lens_at_llama_cpps_own_defaults(ip: InteractiveShell, model_path: str, recorded_comms: list[Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """What the request did not set is what llama.cpp sampled with, not the HTTP API's documented defaults."""
    monkeypatch.setenv("GRANITE_LOCAL_MODEL", model_path)
    magics = magics_of(ip)
    magics.live = "widget"
    out = run(ip, "--backend local --probs 3 --top-k 5 --seed 1 --max-tokens 6 -o r", "Name a rock.")
    lens, _ = _lens_and_branches(out)
    client = next(c for c in magics.session.clients.values() if c.kind == "local")
    defaults = client.sampler_defaults()
    assert (lens.temperature.value, lens.top_k.value, lens.top_p.value, lens.min_p.value) == (
        defaults["temperature"], 5, defaults["top_p"], defaults["min_p"])
    head = html.unescape(lens.header.value)
    assert "top-k 5 (sent); temperature" in head and "(not sent: the backend's defaults)" in head
    assert "at the run" in lens.table.value  # llama.cpp's samplers change the model's distribution: the run has a column
