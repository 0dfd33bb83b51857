"""--probs in a cell: the shaded reply saved in the notebook, the lens under it, branching, and providers without probabilities."""

from __future__ import annotations

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
    lens.step.value = 2
    lens.temperature.value = 0.3  # moving a slider sends nothing
    requests = len(server.chat_requests)
    assert len(server.chat_requests) == requests
    alternative = r.tokens[2].top[-1].text
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
