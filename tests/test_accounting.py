"""Honest accounting: the session ledger, worst-case estimates, and a budget that holds (against the local server)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.interactiveshell import InteractiveShell

import granite_magic
from granite_magic import Progress, Result, Sampling
from granite_magic._comparison import plan_runs
from granite_magic._session import Session, Turn
from granite_magic.testing import FakeOpenRouter

from .conftest import TEST_KEY, magics_of, run


def test_the_ledger_total_is_what_the_server_billed(session: Session) -> None:
    results: list[Result] = []
    for seed in (1, 2):
        job = session.start(Turn("Tell me about granite", sampling=Sampling({"seed": seed, "max_tokens": 30})))
        results.append(session.run(job.turn, target=job.target)[0])
    results += session.compare(Turn("Hi", sampling=Sampling({"max_tokens": 12})), plan_runs([1, 2, 3], repeat=2)).results
    billed = [r.cost for r in results]
    assert all(c is not None and c > 0 for c in billed)
    # every single run and grid column once (the extra start() above was never streamed, so it is not billed)
    assert len(session.ledger.entries) == len(results) == 8
    assert session.ledger.total_cost == pytest.approx(sum(c for c in billed if c is not None), abs=1e-9)
    assert {e.kind for e in session.ledger.entries} == {"single", "grid"}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.text(min_size=1, max_size=200).filter(str.strip), max_tokens=st.integers(1, 60),
       seeds=st.lists(st.integers(0, 99), min_size=1, max_size=4, unique=True))
def test_the_worst_case_is_never_below_what_a_grid_costs(session: Session, prompt: str, max_tokens: int, seeds: list[int]) -> None:
    job = session.start_compare(Turn(prompt, sampling=Sampling({"max_tokens": max_tokens})), plan_runs(seeds))
    worst = session.worst_case(job.target, [column.request for column in job.columns])
    job.loop.run(job.stream(_Quiet()))
    actual = sum(r.cost or 0 for r in session.finish_compare(job).results)
    assert worst is not None and worst >= actual > 0


def test_a_budget_refuses_what_it_cannot_hold_and_sends_nothing(session: Session, server: FakeOpenRouter) -> None:
    session.run(Turn("Hi", sampling=Sampling({"max_tokens": 10})))
    spent = session.ledger.total_cost
    session.configure(budget_usd=spent + 1e-7)  # less than any further request can cost at worst
    server.requests.clear()
    with pytest.raises(granite_magic.InvalidParameterError, match=r"budget would not hold: \$0\.0000\d+ spent \+ \$"):
        session.start(Turn("Hi again", sampling=Sampling({"max_tokens": 10})))
    with pytest.raises(granite_magic.InvalidParameterError, match="these 3 runs"):
        session.start_compare(Turn("Hi", sampling=Sampling({"max_tokens": 10})), plan_runs([1, 2, 3]))
    assert server.chat_requests == []


class _Quiet:
    async def run(self, state: Sequence[Progress]) -> None:
        import asyncio

        await asyncio.Event().wait()

    def column_done(self, index: int, result: Result) -> None:
        pass


class _SpendItAllAfterTheFirstColumn(_Quiet):
    """Lowers the budget to what is spent once the first column is done, as another cell's spending would."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def column_done(self, index: int, result: Result) -> None:
        if self.session.settings.budget_usd == 1.0:
            self.session.configure(budget_usd=self.session.ledger.total_cost)


def test_no_new_column_starts_once_the_budget_is_reached(session: Session, server: FakeOpenRouter) -> None:
    session.configure(budget_usd=1.0)
    concurrency = 2
    job = session.start_compare(Turn("Hi", sampling=Sampling({"max_tokens": 8})), plan_runs([1, 2, 3, 4, 5, 6]),
                                concurrency=concurrency)
    job.loop.run(job.stream(_SpendItAllAfterTheFirstColumn(session)))
    comparison = session.finish_compare(job)
    started = len(server.chat_requests)
    # the first column, plus at most the columns already in flight when the budget was reached
    assert 1 <= started <= 1 + concurrency
    skipped = [run for run in comparison.runs if run.error and run.error.startswith("Not started")]
    assert len(skipped) == 6 - started and all(run.result.text == "" for run in skipped)
    assert len(session.ledger.entries) == started


def test_usage_in_a_cell(ip: InteractiveShell, server: FakeOpenRouter, capsys: Any) -> None:
    ledger = magics_of(ip).session.ledger
    before = len(ledger.entries)
    run(ip, "--seed 1 --max-tokens 5", "Hi")
    run(ip, "--seeds 1-2 --max-tokens 5", "Hi")
    frame = granite_magic.usage()
    assert len(frame) == before + 3 and frame["cost"].sum() == pytest.approx(ledger.total_cost, abs=1e-12)
    assert list(frame["kind"][-3:]) == ["single", "grid", "grid"]
    count = ip.execution_count
    ip.run_cell("%%granite --seed 2 --max-tokens 5\nHi")  # a cell as a notebook runs it: the ledger says which
    assert granite_magic.usage()["cell"].iloc[-1] == count
    ip.run_line_magic("granite", "usage")
    assert f"{before + 4} runs" in capsys.readouterr().out


def test_usage_sums_up_by_model_and_by_cell_with_totals() -> None:
    """Not only the last 10 rows: what each model and each cell cost, every run counted."""
    from granite_magic import Result, Usage
    from granite_magic._ledger import Ledger

    cells = iter([3, 3, 3, 5] + [6] * 12)
    ledger = Ledger(lambda: next(cells))
    for model, cost in [("granite", 0.001), ("granite", 0.002), ("gemma.gguf", 0.0), ("granite", 0.003)] + [("granite", 0.0001)] * 12:
        ledger.record(Result(text="hi", model=model, chunks=1, usage=Usage(prompt_tokens=10, completion_tokens=5, cost=cost)),
                      backend="http", kind="single")
    text = ledger.summary()
    by_model = text[text.index("by model:"):text.index("by cell")]
    assert "granite" in by_model and "15 runs" in by_model and "$0.007200" in by_model and "1 run " in by_model
    by_cell = text[text.index("by cell"):text.index("the last 10 of 16 runs:")]
    assert "cell 3" in by_cell and "3 runs" in by_cell and "$0.003000" in by_cell and "12 runs" in by_cell
    assert len(text[text.index("the last 10 of 16 runs:"):].splitlines()) == 11


def test_a_budget_in_a_cell_is_shown_and_holds(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    magics = magics_of(ip)
    magics.budget_usd = magics.session.ledger.total_cost + 0.05
    try:
        out = run(ip, "--seed 1 --max-tokens 5", "Hi")
        assert "budget spent" in out.stdout + str([o.data for o in out.outputs])
        magics.budget_usd = magics.session.ledger.total_cost  # nothing left
        server.requests.clear()
        out = run(ip, "--seed 1 --max-tokens 5", "Hi")
        assert "budget would not hold" in out.stderr and "nothing was sent" in out.stderr
        assert server.chat_requests == []
    finally:
        magics.budget_usd = None


# --- which parameters a provider honours -----------------------------------------------------------


@pytest.fixture
def probes(tmp_path: Any, session: Session) -> Session:
    from granite_magic._probe import ProbeStore

    session.probes = ProbeStore(tmp_path / "probes.json")
    return session


def test_the_probe_finds_a_correct_provider_honours_everything_it_tests(probes: Session, server: FakeOpenRouter) -> None:
    target = probes.resolve(Turn(""))
    estimate = probes.probe_estimate(target)
    report = probes.probe(target)
    assert report.requests == len(server.chat_requests) + len(server.batch_creates) <= 20
    seen = {o.parameter: o.observed for o in report.observations}
    assert {seen[name] for name in ("seed", "temperature", "top_k", "stop", "max_tokens", "logprobs", "tools",
                                     "response_format", "batch")} == {"honoured"}
    assert report.cost is not None and estimate is not None and 0 < report.cost <= estimate < 0.001
    # every reply is in the ledger; the batch of one is left to run (its answer, and its cost, come later)
    assert [e.kind for e in probes.ledger.entries] == ["probe"] * len(server.chat_requests) and len(server.batch_creates) == 1
    assert TEST_KEY not in report.table() and TEST_KEY not in probes.probes.path.read_text()


@pytest.mark.parametrize(("model", "parameter"), [("fake/ignores-seed", "seed"), ("fake/ignores-stop", "stop"),
                                                  ("fake/ignores-tools", "tools"), ("fake/ignores-response_format", "response_format")])
def test_the_probe_catches_a_provider_that_ignores_a_parameter(probes: Session, model: str, parameter: str) -> None:
    for _ in range(3):  # every time, not by luck
        report = probes.probe(probes.resolve(Turn("", model=model)))
        seen = report.get(parameter)
        assert seen is not None and seen.observed == "ignored" and seen.evidence
        others = {o.parameter: o.observed for o in report.observations if o.parameter != parameter}
        assert "ignored" not in others.values()


def test_a_probed_response_format_decides_how_a_schema_is_asked_for(probes: Session, server: FakeOpenRouter) -> None:
    """The listing names no response_format (as OpenRouter's for Granite does not): prompted, until a probe sees the
    provider honour it; a probe that sees it dropped keeps it prompted."""
    from granite_magic._spec import output_schema

    turn = Turn("Classify: great hike.", schema=output_schema("sentiment positive|negative"))
    target = probes.resolve(turn)
    assert probes.request(turn, target).structure.method == "prompted"  # type: ignore[union-attr]
    probes.probe(target)
    request = probes.request(turn, target)
    assert request.structure is not None and request.structure.method == "provider"
    ignoring = Turn("Classify: great hike.", model="fake/ignores-response_format", schema=turn.schema)
    probes.probe(probes.resolve(ignoring))
    assert probes.request(ignoring, probes.resolve(ignoring)).structure.method == "prompted"  # type: ignore[union-attr]


def test_a_cell_setting_an_ignored_parameter_is_warned_with_the_evidence(ip: InteractiveShell, server: FakeOpenRouter,
                                                                          tmp_path: Any) -> None:
    from granite_magic._probe import ProbeStore

    magics = magics_of(ip)
    magics.session.probes = ProbeStore(tmp_path / "probes.json")
    ip.run_line_magic("granite", "probe fake/ignores-seed")
    out = run(ip, "-m fake/ignores-seed --seed 3 --max-tokens 5", "Hi")
    assert "seed was observed ignored by" in out.stderr and "seed 11 twice gave two different texts" in out.stderr
    out = run(ip, "--seed 3 --max-tokens 5", "Hi")  # another model: nothing observed, nothing said
    assert "observed ignored" not in out.stderr


def test_strict_sends_require_parameters_and_explains_a_refusal(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    run(ip, "--strict --seed 1 --max-tokens 5", "Hi")
    assert server.chat_requests[-1].body["provider"] == {"require_parameters": True}
    out = run(ip, "--strict -m fake/ignores-seed --seed 1 --max-tokens 5", "Hi")
    assert "No provider of 'fake/ignores-seed' honours every parameter sent (max_tokens, seed)" in out.stderr
    assert "--strict" in out.stderr and "Traceback" not in out.stderr
    run(ip, "--seed 1 --max-tokens 5", "Hi")
    assert "provider" not in server.chat_requests[-1].body  # off unless asked for


def test_a_cost_the_stream_did_not_carry_is_looked_up_after_the_run(session: Session, server: FakeOpenRouter) -> None:
    from granite_magic.testing import Scenario

    from .conftest import wait_until

    server.push(Scenario(usage=False))
    result, _ = session.run(Turn("Hi", sampling=Sampling({"max_tokens": 6})))
    assert result.cost is None
    assert wait_until(lambda: session.ledger.entries[-1].cost_source == "lookup")
    assert session.ledger.entries[-1].cost == pytest.approx(server.costs[result.generation_id or ""], abs=1e-12)


def test_credits_show_what_is_left_and_never_the_key(ip: InteractiveShell, server: FakeOpenRouter,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run(ip, "--seed 1 --max-tokens 5", "Hi")
    ip.run_line_magic("granite", "credits")
    shown_text = capsys.readouterr().out
    used = sum(server.costs.values())
    assert f"used ${used:.6f} of a $10.00 limit" in shown_text and TEST_KEY not in shown_text


class _InterruptAfterTokens:
    """A live view that presses Ctrl-C once some text has streamed."""

    def __init__(self, chunks: int) -> None:
        import threading

        self.chunks, self.main = chunks, threading.main_thread().ident

    async def run(self, acc: Progress) -> None:
        import asyncio
        import signal

        while acc.chunks < self.chunks:
            await asyncio.sleep(0.01)
        assert self.main is not None
        signal.pthread_kill(self.main, signal.SIGINT)
        await asyncio.Event().wait()


def test_an_interrupted_reply_counts_what_it_can_have_cost(session: Session, server: FakeOpenRouter) -> None:
    """A provider bills an interrupted reply for what it generated: the ledger counts its bound (the prompt at most and
    the tokens that arrived, at the listed prices), marked as such, not $0."""
    from granite_magic.testing import Scenario

    session.run(Turn("Hi", sampling=Sampling({"max_tokens": 5})))  # reads the listing, as any first cell does
    spent = session.ledger.total_cost
    server.push(Scenario(tokens=400, tokens_per_s=40))
    result, _ = session.run(Turn("Write a lot"), _InterruptAfterTokens(5))
    assert result.ended == "interrupted" and result.cost is None
    entry = session.ledger.entries[-1]
    assert entry.cost_source == "unknown" and entry.bound is not None and entry.bound > 0
    assert session.ledger.total_cost == pytest.approx(spent + entry.bound)
    assert "counted at its worst case" in session.ledger.summary()


def test_amounts_are_printed_with_enough_digits_to_be_seen() -> None:
    from granite_magic._ledger import Ledger, usd

    assert Ledger().budget_line(0.00001) == "$0.000000 of $0.00001 budget spent"  # not "of $0.00 budget"
    assert (usd(0.5, 2), usd(0.0, 2), usd(1e308, 2), usd(0.000123)) == ("$0.50", "$0.00", "$1e+308", "$0.000123")
