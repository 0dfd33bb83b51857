"""Side-by-side comparison: planning, metrics, concurrent runs against the local server, the magic."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from granite_magic import Comparison, GraniteClient, InvalidParameterError, Progress, Result, Run, Sampling, compare
from granite_magic._comparison import (
    Divergence,
    first_divergence,
    identical_groups,
    parse_seeds,
    parse_sweep,
    plan_runs,
    similarity,
    word_diff,
)
from granite_magic._session import Session, Turn
from granite_magic.testing import FakeOpenRouter, Scenario

from .conftest import TEST_KEY, magics_of, run, wait_until

# --- planning -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seeds"), [("1,2,3", [1, 2, 3]), ("1-4", [1, 2, 3, 4]), ("1-3, 7", [1, 2, 3, 7]), ([5, 6], [5, 6])])
def test_parse_seeds(text: Any, seeds: list[int]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(("text", "fragment"), [("4-1", "LOW-HIGH"), ("x", "seed='x' is not an integer"), (",", "names no seed"), ("1-500", "at most 64")])
def test_bad_seeds_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(InvalidParameterError, match=fragment):
        parse_seeds(text)


def test_parse_sweep_validates_every_value() -> None:
    assert parse_sweep("temperature=0,0.7,1.4") == ("temperature", [0.0, 0.7, 1.4])
    assert parse_sweep("top-k=1,40") == ("top_k", [1, 40])
    with pytest.raises(InvalidParameterError, match="0 <= temperature <= 2"):
        parse_sweep("temperature=0,3")
    with pytest.raises(InvalidParameterError, match="NAME=V1,V2"):
        parse_sweep("temperature")
    with pytest.raises(InvalidParameterError, match="unknown parameter 'warmth'"):
        parse_sweep("warmth=1,2")


def test_plan_runs_makes_a_grid_with_repeats() -> None:
    specs = plan_runs([1, 2], {"temperature": [0.0, 0.7]}, repeat=2)
    assert len(specs) == 8
    assert specs[0].label == "seed 1 · temperature 0" and specs[1].label == "seed 1 · temperature 0'"
    assert specs[0].params == {"seed": 1, "temperature": 0.0}
    assert specs[0].settings_key == specs[1].settings_key != specs[2].settings_key
    assert [s.label for s in plan_runs([3])] == ["seed 3"]


# --- metrics -----------------------------------------------------------------------------


def test_identical_groups_and_similarity() -> None:
    assert identical_groups(["a b", "c", "a b", "c", "d"]) == [[0, 2], [1, 3], [4]]
    assert similarity("the river ran", "the river ran") == 1.0
    assert similarity("the river ran", "the river slept") == pytest.approx(2 / 3)
    assert similarity("a b", "c d") == 0.0


def test_first_divergence() -> None:
    assert first_divergence("one patient season", "one patient season") is None
    assert first_divergence("one patient season", "one restless season") == Divergence(1, "patient", "restless")
    assert first_divergence("one patient", "one patient season") == Divergence(2, "", "season")


def test_word_diff() -> None:
    assert word_diff("the slow river ran", "the fast river ran far") == [
        ("equal", "the"), ("delete", "slow"), ("insert", "fast"), ("equal", "river ran"), ("insert", "far")]


def make_comparison() -> Comparison:
    from granite_magic._result import Usage

    specs = plan_runs([1, 2], repeat=2)
    texts = ["one patient season", "one patient season", "one restless season", "one restless day"]
    results = [Result(text=t, finish_reason="stop", usage=Usage(completion_tokens=3, cost=0.001), ttft_s=0.1, duration_s=0.5,
                      params={"seed": s.params["seed"]}) for t, s in zip(texts, specs, strict=True)]
    return Comparison("p", [Run(spec, result) for spec, result in zip(specs, results, strict=True)], wall_s=0.6)


def test_comparison_metrics_and_summary() -> None:
    comp = make_comparison()
    assert comp.groups == [[0, 1], [2], [3]]
    assert comp.determinism == [("seed 1", True), ("seed 2", False)]
    assert comp.seed_honoured is False
    assert comp.divergences[2] == Divergence(1, "patient", "restless")
    assert comp.total_tokens == 12 and comp.total_cost == pytest.approx(0.004)
    summary = comp.summary
    assert "identical groups: {seed 1, seed 1'} {seed 2} {seed 2'}" in summary
    assert "1 of 2 repeated settings gave identical text (seed NOT reliably honoured)" in summary
    assert "first divergence: seed 2 at word 1 ('patient' -> 'restless')" in summary
    assert "total 0.6 s wall · 12 tokens · $0.004000" in summary


@pytest.mark.parametrize("failing", [(), (1,), (0, 1, 2, 3)])
def test_every_view_of_a_comparison_has_every_run(failing: tuple[int, ...]) -> None:
    """to_dict, rows, to_dataframe and the saved metadata agree, whether columns failed or not."""
    from granite_magic._grid import comparison_bundle

    base = make_comparison()
    comp = Comparison("p", [Run(r.spec, r.result, "boom" if i in failing else None) for i, r in enumerate(base.runs)])
    saved = comparison_bundle(comp)[1]["granite_magic"]["comparison"]
    assert len(comp.to_dict()["runs"]) == len(comp.rows()) == len(comp.to_dataframe()) == len(saved["runs"]) == 4
    assert [r["run_error"] for r in saved["runs"]] == ["boom" if i in failing else None for i in range(4)]


def test_to_dataframe_has_one_row_per_run() -> None:
    frame = make_comparison().to_dataframe()
    assert list(frame["seed"]) == [1, 1, 2, 2]
    assert list(frame["group"]) == [0, 0, 1, 2]
    assert {"text", "tokens", "ttft_s", "tokens_per_s", "cost", "repeat", "similarity_to_reference"} <= set(frame.columns)


# --- against the local server ----------------------------------------------------------------


def test_four_seeds_give_the_texts_of_four_single_runs(session: Session, client: GraniteClient) -> None:
    comp = session.compare(Turn("Tell a story", sampling=Sampling({"temperature": 0.8})), plan_runs([1, 2, 3, 4]))
    singles = [client.chat("Tell a story", seed=s, temperature=0.8).text for s in (1, 2, 3, 4)]
    assert comp.texts == singles
    assert len(comp.groups) == 4 and comp.errors == [None] * 4


def test_a_repeated_seed_gives_an_identical_group_of_two(session: Session) -> None:
    comp = session.compare(Turn("Hi"), plan_runs([5], repeat=2))
    assert comp.groups == [[0, 1]] and comp.seed_honoured is True


def test_a_provider_that_ignores_seeds_is_caught_by_the_audit(session: Session, server: FakeOpenRouter) -> None:
    server.honour_seed = False
    comp = session.compare(Turn("Hi"), plan_runs([1, 2], repeat=2))
    assert comp.seed_honoured is False
    assert "seed NOT reliably honoured" in comp.summary


def test_a_sweep_changes_that_field_and_nothing_else(session: Session, server: FakeOpenRouter) -> None:
    session.compare(Turn("Hi", system="Be kind.", sampling=Sampling({"seed": 3, "max_tokens": 20})), plan_runs(sweep={"temperature": [0.0, 0.7, 1.4]}))
    bodies = sorted((r.body for r in server.chat_requests), key=lambda b: b["temperature"])
    assert [b["temperature"] for b in bodies] == [0.0, 0.7, 1.4]
    for body in bodies:
        rest = {k: v for k, v in body.items() if k != "temperature"}
        assert rest == {k: v for k, v in bodies[0].items() if k != "temperature"}
        assert body["seed"] == 3 and body["max_tokens"] == 20


def test_a_failing_column_leaves_the_others_complete(session: Session, server: FakeOpenRouter) -> None:
    server.push(Scenario(error_after=3))
    comp = session.compare(Turn("Hi"), plan_runs([1, 2, 3, 4]), concurrency=1)
    assert comp.results[0].partial and len(comp.texts[0].split()) == 3
    assert comp.errors[0] is not None and "Provider disconnected" in comp.errors[0]
    assert all(not r.partial and r.finish_reason == "stop" for r in comp.results[1:])
    assert "1 failed (partial text kept)" in comp.summary


def test_columns_run_concurrently_up_to_the_limit(session: Session, server: FakeOpenRouter) -> None:
    server.default = Scenario(tokens=20, tokens_per_s=40)  # half a second each
    comp = session.compare(Turn("Hi"), plan_runs(list(range(1, 9))), concurrency=4)
    assert server.max_in_flight == 4
    assert all(not r.partial for r in comp.results)


class InterruptWhenAllStream:
    """A grid view that presses Ctrl-C once every column has streamed some text."""

    def __init__(self) -> None:
        self.main = threading.main_thread().ident

    async def run(self, state: Sequence[Progress]) -> None:
        while not all(acc.chunks >= 2 for acc in state):
            await asyncio.sleep(0.01)
        assert self.main is not None
        signal.pthread_kill(self.main, signal.SIGINT)
        await asyncio.Event().wait()

    def column_done(self, index: int, result: Result) -> None:
        pass


def test_interrupt_cancels_every_column_and_keeps_what_arrived(session: Session, server: FakeOpenRouter) -> None:
    server.default = Scenario(tokens=400, tokens_per_s=20)  # 20 s each if left alone
    comp = session.compare(Turn("Hi"), plan_runs([1, 2, 3]), InterruptWhenAllStream())
    assert all(r.ended == "interrupted" for r in comp.results)
    assert all(2 <= len(t.split()) < 400 for t in comp.texts)
    # stopped: every stream was closed, far before it would have ended
    assert wait_until(lambda: all(r.disconnected for r in server.chat_requests))


class InterruptWhenFirstStreams(InterruptWhenAllStream):
    """Ctrl-C once the first column has streamed some text, while the others still queue behind it."""

    async def run(self, state: Sequence[Progress]) -> None:
        while state[0].chunks < 2:
            await asyncio.sleep(0.01)
        assert self.main is not None
        signal.pthread_kill(self.main, signal.SIGINT)
        await asyncio.Event().wait()


def test_columns_an_interrupt_stopped_before_they_started_are_not_run(session: Session, server: FakeOpenRouter) -> None:
    """Not "partial replies" grouped as identical empty texts and billed as runs of model "?": not run at all."""
    server.default = Scenario(tokens=400, tokens_per_s=20)
    comp = session.compare(Turn("Hi"), plan_runs([1, 2, 3]), InterruptWhenFirstStreams(), concurrency=1)
    assert comp.labels == ["seed 1"] and comp.results[0].ended == "interrupted" and comp.texts[0]
    assert comp.not_run == ["seed 2", "seed 3"] and len(server.chat_requests) == 1
    assert "not run (interrupted before they started): seed 2, seed 3" in comp.summary
    assert comp.groups == [[0]] and comp.to_dict()["not_run"] == ["seed 2", "seed 3"]
    assert [entry.model for entry in session.ledger.entries] == ["ibm-granite/granite-4.0-h-micro"]


def test_python_api_compare(server: FakeOpenRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_KEY)
    comp = compare("Hi", seeds="1-2", sweep={"temperature": [0.5, 1]}, base_url=server.base_url, max_tokens=10)
    assert comp.labels == ["seed 1 · temperature 0.5", "seed 1 · temperature 1", "seed 2 · temperature 0.5", "seed 2 · temperature 1"]
    assert all(r.params["max_tokens"] == 10 for r in comp.results)
    with pytest.raises(InvalidParameterError, match="0 <= temperature <= 2"):
        compare("Hi", sweep={"temperature": [5]}, base_url=server.base_url)


# --- the magic -----------------------------------------------------------------------------


def test_magic_grid_output_is_escaped_html_with_markdown_fallback(ip: InteractiveShell, server: FakeOpenRouter, recorded_comms: list[Any]) -> None:
    magics_of(ip).live = "widget"
    server.push(Scenario(text="Look <img src=x onerror=alert(1)> here"))
    out = run(ip, "--seeds 1-3 -o comp", "Hi")
    comp = ip.user_ns["comp"]
    assert isinstance(comp, Comparison) and len(comp.results) == 3
    final = [o for o in out.outputs if "granite_magic" in (o.metadata or {})][-1]
    html = final.data["text/html"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img" not in html
    assert "identical groups" in html and "seed 3" in final.data["text/markdown"]
    runs = final.metadata["granite_magic"]["comparison"]["runs"]
    assert [r["params"]["seed"] for r in runs] == [1, 2, 3]
    live = [str(data) for _, kind, data in recorded_comms if kind == "comm_msg"]
    assert live and not any("<img" in text for text in live)


def test_magic_refuses_a_bad_grid_before_sending(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    out = run(ip, "--sweep temperature=0,9", "Hi")
    assert "0 <= temperature <= 2" in out.stderr and "nothing was sent" in out.stderr
    out = run(ip, "--seeds 1-2 --chat c", "Hi")
    assert "--chat cannot be combined" in out.stderr
    out = run(ip, "--seeds 1-2 --concurrency 0", "Hi")
    assert "--concurrency 0 is out of range: must be an integer >= 1" in out.stderr
    assert server.chat_requests == []


def test_magic_grid_updates_stay_throttled(ip: InteractiveShell, server: FakeOpenRouter, recorded_comms: list[Any]) -> None:
    import time

    magics_of(ip).live = "widget"
    server.default = Scenario(tokens=800, tokens_per_s=800)  # 8 columns streaming fast for about a second
    started = time.monotonic()
    run(ip, "--seeds 1-8 --concurrency 8 -o comp", "Hi")
    duration = time.monotonic() - started
    assert all(len(t.split()) == 800 for t in ip.user_ns["comp"].texts)
    updates = [t for t, kind, data in recorded_comms if kind == "comm_msg" and data.get("method") == "update"]
    assert len(updates) <= 15 * duration + 3, f"{len(updates)} updates in {duration:.2f} s"
