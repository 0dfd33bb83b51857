"""One prompt over every row (``--over``, ``map``): a typed result frame in input order, one bad row never failing
the run, a cache entry per row so a rerun re-pays nothing finished, a worst case before sending, and live progress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

import granite_magic
from granite_magic._errors import InvalidParameterError
from granite_magic._rows import ROW_COLUMNS, read_rows, row_prompts
from granite_magic.testing import FakeOpenRouter, Scenario

from .conftest import magics_of, run, shown

REVIEWS = pd.DataFrame({"text": ["Long hike, worth it.", "Closed trail, dirty centre.", "We walked, then went home.",
                                 "Best view of granite cliffs.", "Rain all day."],
                        "label": ["positive", "negative", "neutral", "positive", "negative"]},
                       index=pd.Index([10, 11, 12, 13, 14], name="review_id"))
PROMPT = "Classify the sentiment of this review: {text}"
SPEC = "sentiment: positive|negative|neutral, reason"


def prompts_sent(server: FakeOpenRouter) -> list[str]:
    return [r.body["messages"][-1]["content"] for r in server.chat_requests]


@pytest.fixture
def cells(ip: InteractiveShell, tmp_path: Any) -> InteractiveShell:
    magics = magics_of(ip)
    magics.cache_dir = str(tmp_path / "recordings")  # rows are cached by default: a fresh directory per test
    ip.user_ns["reviews"] = REVIEWS.copy()
    yield ip
    magics.cache_dir = ""


# --- reading rows and making prompts -------------------------------------------------------------------------


def test_rows_of_a_frame_a_list_of_dicts_and_a_list_of_strings() -> None:
    assert read_rows(REVIEWS).index == [10, 11, 12, 13, 14] and read_rows(REVIEWS).columns == ["text", "label"]
    assert read_rows([{"a": 1}, {"b": 2}]).columns == ["a", "b"]
    assert row_prompts("Say {item}", read_rows(["hi", "bye"])) == ["Say hi", "Say bye"]
    assert len(read_rows(REVIEWS, limit=2)) == 2 and read_rows(REVIEWS, limit=2).index == [10, 11]
    sampled = read_rows(REVIEWS, sample=3)
    assert len(sampled) == 3 and sampled.index == sorted(sampled.index) and sampled.index == read_rows(REVIEWS, sample=3).index
    assert row_prompts("{{text}} is {text}", read_rows(REVIEWS, limit=1)) == ["{text} is Long hike, worth it."]


@pytest.mark.parametrize(("over", "template", "words"), [
    (REVIEWS, "Classify {txt}", "{txt}, which is no column"),
    (REVIEWS, "Classify this", "names no column"),
    (42, "x {a}", "not int"),
    ([], "x {a}", "no rows"),
    (pd.DataFrame([["a", "b"]], columns=["x", "x"]), "Say {x}", "more than one column named x"),
])
def test_bad_rows_or_prompts_are_refused(over: Any, template: str, words: str) -> None:
    with pytest.raises(InvalidParameterError, match=words.replace("{", r"\{").replace("}", r"\}")):
        row_prompts(template, read_rows(over))


def test_a_column_whose_name_is_no_identifier_is_named_as_written() -> None:
    people = pd.DataFrame({"first name": ["Ann", "Bo"], 0: ["tea", "coffee"], "city": ["Oslo", "Lyon"]})
    assert row_prompts("{first name} drinks {0} in {city}", read_rows(people)) == ["Ann drinks tea in Oslo",
                                                                                 "Bo drinks coffee in Lyon"]
    # braces naming no column are the prompt's own text (a JSON example), as in a cell
    assert row_prompts('Answer as {"name": ...} for {first name}', read_rows(people))[0] == 'Answer as {"name": ...} for Ann'
    assert row_prompts("{{first name}} is {first name}", read_rows(people))[0] == "{first name} is Ann"
    with pytest.raises(InvalidParameterError, match=r"write one as \{first name\}"):
        row_prompts("Hello", read_rows(people))  # the advice names a column as it can be written


def test_a_series_goes_over_as_its_one_column() -> None:
    texts = pd.Series(["Long hike.", "Rain."], index=pd.Index([7, 9], name="review_id"), name="text")
    rows = read_rows(texts)
    assert rows.columns == ["text"] and rows.index == [7, 9] and rows.index_name == "review_id"
    assert row_prompts("Classify {text}", rows) == ["Classify Long hike.", "Classify Rain."]
    assert row_prompts("Classify {item}", read_rows(pd.Series(["a"]))) == ["Classify a"]  # unnamed: {item}, as a list


@pytest.mark.parametrize("missing", [None, float("nan"), pd.NA, pd.NaT])
def test_rows_with_no_value_for_a_named_column_are_refused_saying_how_many_and_which(missing: Any) -> None:
    frame = pd.DataFrame({"text": ["fine", missing, "ok", missing], "note": [missing] * 4}, index=[5, 6, 7, 8], dtype=object)
    with pytest.raises(InvalidParameterError) as info:
        row_prompts("Classify {text}", read_rows(frame))
    message = str(info.value)
    assert "2 of the 4 rows have no value for {text} (the first: row 6)" in message and "\n" not in message
    assert "frame.dropna(subset=['text'])" in message and "fillna" in message
    assert row_prompts("Classify {text}", read_rows(frame.dropna(subset=["text"]))) == ["Classify fine", "Classify ok"]
    # a column the prompt does not name may be empty
    assert len(row_prompts("Classify {text}", read_rows(frame.iloc[[0, 2]]))) == 2


def test_a_dict_that_lacks_a_named_key_is_refused_not_a_key_error() -> None:
    with pytest.raises(InvalidParameterError, match=r"row 1 has no value for \{rock\}.*leave those rows out"):
        row_prompts("Describe {rock}", read_rows([{"rock": "granite"}, {"mineral": "quartz"}]))


# --- the cell -------------------------------------------------------------------------------------------


def test_a_prompt_over_rows_gives_a_frame_in_input_order(cells: InteractiveShell, server: FakeOpenRouter) -> None:
    out = run(cells, "--over reviews --max-tokens 20 -o out", PROMPT)
    frame = cells.user_ns["out"]
    assert list(frame.index) == [10, 11, 12, 13, 14] and frame.index.name == "review_id"
    assert list(frame.columns) == ["text", "label", "reply", *ROW_COLUMNS]
    assert (frame["_status"] == "ok").all() and frame["reply"].str.len().gt(0).all(), shown(out)
    assert sorted(prompts_sent(server)) == sorted(PROMPT.format(text=t) for t in REVIEWS["text"])
    assert frame["_cost"].gt(0).all() and frame.attrs["prompt"] == PROMPT and frame.attrs["rows"] == 5
    assert "5 rows · 5 ok" in shown(out)  # the summary that stays in the notebook


def test_a_schema_over_rows_gives_typed_columns_and_one_bad_row_never_fails_the_run(cells: InteractiveShell,
                                                                                    server: FakeOpenRouter) -> None:
    server.push(Scenario(status=400), *[Scenario() for _ in range(4)])
    run(cells, f"--over reviews --schema '{SPEC}' --concurrency 1 --max-tokens 200 -o out", PROMPT)
    frame = cells.user_ns["out"]
    assert list(frame.columns) == ["text", "label", "sentiment", "reason", *ROW_COLUMNS]
    assert list(frame["_status"]) == ["error", "ok", "ok", "ok", "ok"]
    assert frame.loc[10, "_error"] and pd.isna(frame.loc[10, "sentiment"])
    assert frame.loc[11:, "sentiment"].isin(["positive", "negative", "neutral"]).all()
    assert set(frame.loc[11:, "_method"]) == {"prompted"} and frame.attrs["schema"] == SPEC


def test_a_rerun_re_pays_no_finished_row(cells: InteractiveShell, server: FakeOpenRouter) -> None:
    run(cells, "--over reviews --limit 3 --max-tokens 20 -o first", PROMPT)
    assert len(server.chat_requests) == 3
    recordings = Path(magics_of(cells).cache_dir)
    assert len(list(recordings.glob("packs/*.pack"))) == 1 and not list(recordings.rglob("*.json.gz"))  # not a file a row
    ledger = magics_of(cells).session.ledger
    before = ledger.total_cost
    out = run(cells, "--over reviews --max-tokens 20 -o out", PROMPT)
    frame = cells.user_ns["out"]
    assert len(server.chat_requests) == 5, shown(out)  # only the two rows the first run did not reach
    assert list(frame["_status"]) == ["cached", "cached", "cached", "ok", "ok"]
    assert list(frame["reply"])[:3] == list(cells.user_ns["first"]["reply"])
    assert ledger.total_cost - before == pytest.approx(frame["_cost"][frame["_status"] == "ok"].sum())


def test_a_changed_prompt_or_parameter_invalidates_only_what_it_changes(cells: InteractiveShell, server: FakeOpenRouter) -> None:
    run(cells, "--over reviews --max-tokens 20", PROMPT)
    cells.user_ns["reviews"].loc[12, "text"] = "A changed review."
    run(cells, "--over reviews --max-tokens 20 -o out", PROMPT)
    assert len(server.chat_requests) == 6 and list(cells.user_ns["out"]["_status"]).count("cached") == 4
    run(cells, "--over reviews --max-tokens 21", PROMPT)
    assert len(server.chat_requests) == 11


def test_the_budget_refuses_rows_it_cannot_hold_before_sending(cells: InteractiveShell, server: FakeOpenRouter) -> None:
    magics = magics_of(cells)
    magics.budget_usd = 0.0000001
    try:
        out = run(cells, "--over reviews --max-tokens 2000", PROMPT)
    finally:
        magics.budget_usd = None
    assert "budget" in out.stderr and "5 " in out.stderr and server.chat_requests == []


@pytest.mark.parametrize(("line", "words"), [
    ("--over nothing", "does not define"),
    ("--over reviews --chat", "--chat"),
    ("--over reviews --raw", "--raw"),
    ("--limit 2", "--over"),
])
def test_over_with_what_it_cannot_take_is_refused_before_sending(cells: InteractiveShell, server: FakeOpenRouter, line: str,
                                                                  words: str) -> None:
    out = run(cells, line, PROMPT)
    assert len(out.stderr.strip().splitlines()) == 1 and words in out.stderr, out.stderr
    assert server.chat_requests == []


def test_a_missing_column_is_named_before_sending(cells: InteractiveShell, server: FakeOpenRouter) -> None:
    out = run(cells, "--over reviews", "Classify {review}")
    assert "{review}" in out.stderr and "text, label" in out.stderr and server.chat_requests == []


def test_a_system_text_that_names_a_column_is_refused_before_sending(cells: InteractiveShell, server: FakeOpenRouter) -> None:
    out = run(cells, "--over reviews --system 'You judge reviews like {text}'", PROMPT)
    assert "the system text names {text}, a column" in out.stderr and "move it into the prompt" in out.stderr
    assert server.chat_requests == []
    with pytest.raises(InvalidParameterError, match=r"system text names \{label\}"):
        granite_magic.map(REVIEWS, PROMPT, system="Answer {label}")
    # braces that name no column are the system text's own (a JSON example), as in the prompt
    assert row_prompts(PROMPT, read_rows(REVIEWS), system='Answer as {"sentiment": ...}')[0].endswith("worth it.")


def test_a_cell_over_rows_with_gaps_is_refused_in_one_line_before_sending(cells: InteractiveShell,
                                                                         server: FakeOpenRouter) -> None:
    cells.user_ns["gappy"] = REVIEWS.assign(text=[*REVIEWS["text"][:4], None])
    out = run(cells, "--over gappy", PROMPT)
    assert "row 14 has no value for {text}" in out.stderr and "nothing was sent" in out.stderr
    assert "Traceback" not in out.stderr and server.chat_requests == []


# --- the Python API -------------------------------------------------------------------------------------


def test_python_map_over_strings_and_dicts(session: Any, server: FakeOpenRouter, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANITE_CACHE_DIR", str(tmp_path / "cache"))
    frame = granite_magic.map(["granite", "basalt"], "Describe {item}.", max_tokens=10)
    assert list(frame["item"]) == ["granite", "basalt"] and (frame["_status"] == "ok").all()
    frame = granite_magic.map([{"rock": "granite"}], "Describe {rock}.", schema="kind igneous|sedimentary", max_tokens=100)
    assert frame.loc[0, "kind"] == "igneous" and frame.attrs["schema"] == "kind igneous|sedimentary"
    assert json.loads(json.dumps(frame.attrs, default=str))["rows"] == 1


def test_a_map_over_an_earlier_map_s_frame_keeps_both_runs_columns(session: Any, server: FakeOpenRouter, tmp_path: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANITE_CACHE_DIR", str(tmp_path / "cache"))
    first = granite_magic.map(REVIEWS, PROMPT, schema="sentiment positive|negative|neutral", max_tokens=100)
    second = granite_magic.map(first, "Is '{text}' {sentiment}? Say why.", max_tokens=8)
    assert prompts_sent(server)[-1] == f"Is '{REVIEWS['text'].iloc[-1]}' positive? Say why."
    assert list(second.columns[:3]) == ["text", "label", "sentiment"]
    # the first run's reply and how it went are kept beside this run's, each column once
    assert second.columns.is_unique and list(second["_status_input"]) == list(first["_status"])
    assert list(second["_latency_s_input"]) == list(first["_latency_s"]) and (second["_status"] == "ok").all()
    assert second.attrs["renamed"]["_status"] == "_status_input" and second["reply"].str.len().gt(0).all()


@pytest.mark.slow
def test_rows_on_the_local_model_one_after_another_with_a_grammar(ip: InteractiveShell, model_path: str, tmp_path: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.delenv("GRANITE_BASE_URL", raising=False)
    monkeypatch.setenv("GRANITE_LOCAL_MODEL", model_path)
    magics = magics_of(ip)
    magics.base_url = ""
    magics.cache_dir = str(tmp_path / "recordings")
    magics.session.set_api_key(None)
    magics.session.clients.clear()
    ip.user_ns["reviews"] = REVIEWS.copy()
    # a shared instruction longer than one of llama.cpp's 512-token read batches (what a prefix is kept in)
    ip.user_ns["guide"] = " ".join(f"Rule {n}: judge the review by what the writer felt, not by the facts." for n in range(1, 50))
    try:
        out = run(ip, f"--over reviews --limit 3 --schema '{SPEC}' --system '{ip.user_ns['guide']}' --temperature 0 "
                      "--max-tokens 60 -o out", PROMPT)
    finally:
        magics.cache_dir = ""
    frame = ip.user_ns["out"]
    assert list(frame["_status"]) == ["ok"] * 3, shown(out)
    assert set(frame["_method"]) == {"grammar"} and frame["sentiment"].isin(["positive", "negative", "neutral"]).all()
    assert (frame["_cost"] == 0).all()  # free: the model runs here
    # one after another on the loaded model: the shared start (instruction and schema) is read once, then reused in
    # whole 512-token batches (so the same seed gives the same text either way)
    rows = [entry for entry in magics.session.ledger.entries if entry.kind == "map"][-3:]
    assert rows[0].cached_tokens == 0 and all(entry.cached_tokens and entry.cached_tokens >= 512 for entry in rows[1:]), rows


# --- parameters compared across a dataset -------------------------------------------------------------------


def test_rows_times_settings_are_scored_with_an_interval_per_setting(cells: InteractiveShell, server: FakeOpenRouter) -> None:
    from granite_magic._rows import disagreeing_rows

    out = run(cells, "--over reviews --schema 'sentiment positive|negative|neutral' --seeds 1,2 --sweep temperature=0,1 "
                     "--expect label --max-tokens 100 -o out", PROMPT)
    frame = cells.user_ns["out"]
    assert frame.index.names == ["review_id", "setting"] and len(frame) == 20, shown(out)
    assert list(frame.loc[10].index) == ["seed 1 · temperature 0", "seed 1 · temperature 1", "seed 2 · temperature 0",
                                         "seed 2 · temperature 1"]
    assert list(frame.columns[:4]) == ["text", "label", "seed", "temperature"]
    # the fake answers a schema with its first choice: right exactly where the label is "positive"
    assert list(frame.xs("seed 1 · temperature 0", level="setting")["_score"]) == [1.0, 0.0, 0.0, 1.0, 0.0]
    summary = granite_magic.setting_summary(frame)
    assert list(summary["score"]) == [0.4] * 4 and list(summary["rows"]) == [5] * 4
    assert summary["ci_low"].iloc[0] == pytest.approx(0.1176, abs=1e-3) and summary["ci_high"].iloc[0] == pytest.approx(0.7693, abs=1e-3)
    assert list(summary["seed_agreement"]) == [1.0] * 4 and disagreeing_rows(frame) == []
    assert "rows where the settings disagree: 0 of 5" in shown(out) and "seed_agreement" in shown(out)


def test_plain_replies_across_seeds_disagree_where_they_differ(session: Any, server: FakeOpenRouter, tmp_path: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from granite_magic._rows import disagreeing_rows

    monkeypatch.setenv("GRANITE_CACHE_DIR", str(tmp_path / "cache"))
    frame = granite_magic.map(REVIEWS, PROMPT, seeds="1-2", max_tokens=5, temperature=1,
                              expect=lambda row, answer: len(answer.split()) == 5)
    assert sorted(disagreeing_rows(frame)) == [10, 11, 12, 13, 14]  # a different seed, different words (the fake draws by seed)
    assert list(granite_magic.setting_summary(frame)["seed_agreement"]) == [0.0, 0.0] and (frame["_score"] == 1.0).all()


def test_a_summary_of_a_frame_without_settings_is_refused_in_one_line(session: Any, server: FakeOpenRouter, tmp_path: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANITE_CACHE_DIR", str(tmp_path / "cache"))
    frame = granite_magic.map(REVIEWS, PROMPT, max_tokens=5)  # one setting: no "setting" level to summarise by
    for given in (frame, REVIEWS, [1, 2]):
        with pytest.raises(granite_magic.InvalidParameterError, match="seeds= or sweep=") as info:
            granite_magic.setting_summary(given)
        assert "\n" not in str(info.value)


def test_a_row_without_a_label_is_not_scored_rather_than_scored_wrong(session: Any, server: FakeOpenRouter, tmp_path: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANITE_CACHE_DIR", str(tmp_path / "cache"))
    unlabelled = REVIEWS.assign(label=["positive", None, float("nan"), "positive", "negative"])
    frame = granite_magic.map(unlabelled, PROMPT, schema="sentiment positive|negative|neutral", seeds="1-2",
                              expect="label", max_tokens=100)
    # the fake answers with the first choice: right for both "positive" rows, wrong for "negative", unscored for gaps
    assert list(frame.xs("seed 1", level="setting")["_score"].isna()) == [False, True, True, False, False]
    summary = granite_magic.setting_summary(frame)
    assert list(summary["score"]) == [pytest.approx(2 / 3)] * 2 and list(summary["rows"]) == [5, 5]


def test_the_interval_is_wilson_s_for_right_or_wrong_and_normal_for_scores() -> None:
    from granite_magic._rows import interval

    low, mean, high = interval([1.0] * 10)
    assert mean == 1.0 and high == pytest.approx(1.0) and low == pytest.approx(0.7225, abs=1e-3)  # no certainty from 10 rows
    assert interval([]) == (None, None, None)
    low, mean, high = interval([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7) and low == pytest.approx(0.7 - 1.96 * 0.2 / 3 ** 0.5, abs=1e-3)


def test_rate_limits_lower_the_rows_in_flight_and_no_row_fails_for_them(cells: InteractiveShell, server: FakeOpenRouter) -> None:
    cells.user_ns["many"] = [f"rock {n}" for n in range(24)]
    server.push(*[Scenario(status=429, retry_after="0") for _ in range(3)])
    out = run(cells, "--over many --concurrency 8 --max-tokens 5 -o out", "Describe {item}.")
    frame = cells.user_ns["out"]
    assert (frame["_status"] == "ok").all(), shown(out)
    assert frame.attrs["rate_limited"] == 3 and frame.attrs["fewest_at_once"] == 1  # 8 -> 4 -> 2 -> 1
    assert len(server.chat_requests) == 24 + 3
    assert "rate limited 3 times: down to 1 at once" in shown(out)


def test_the_gate_halves_once_per_retry_after_and_climbs_back_one_run_at_a_time() -> None:
    import asyncio

    from granite_magic._session import AdaptiveGate

    async def drive() -> list[int]:
        gate = AdaptiveGate(8)
        seen = [gate.allowed]
        gate.throttled(30.0)
        gate.throttled(30.0)  # a second refusal of the same crowded moment: no second halving
        seen.append(gate.allowed)
        gate.succeeded()
        seen.append(gate.allowed)
        for _ in range(10):
            gate.succeeded()
        seen.append(gate.allowed)  # never above the limit asked for
        return seen

    assert asyncio.run(drive()) == [8, 4, 5, 8]


def test_the_gate_lets_waiting_runs_in_first_come_first_served_one_per_free_place() -> None:
    import asyncio

    from granite_magic._session import AdaptiveGate

    async def drive() -> tuple[list[str], list[int]]:
        gate, entered, at_once, inside = AdaptiveGate(2), [], [], [0]

        async def run(name: str, leave: asyncio.Event) -> None:
            async with gate:
                entered.append(name)
                inside[0] += 1
                at_once.append(inside[0])
                await leave.wait()
                inside[0] -= 1

        leaves = {name: asyncio.Event() for name in "abcdef"}
        tasks = [asyncio.create_task(run(name, leaves[name])) for name in "abcdef"]
        await asyncio.sleep(0)  # every task has reached the gate: a and b inside, the rest waiting in order
        for name in "abcdef":
            leaves[name].set()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return entered, at_once

    entered, at_once = asyncio.run(drive())
    assert entered == list("abcdef") and max(at_once) == 2


def test_a_cancelled_waiter_gives_its_place_to_the_next() -> None:
    import asyncio

    from granite_magic._session import AdaptiveGate

    async def drive() -> list[str]:
        gate, entered = AdaptiveGate(1), []
        hold = asyncio.Event()

        async def run(name: str) -> None:
            async with gate:
                entered.append(name)
                await hold.wait()

        first, second, third = (asyncio.create_task(run(name)) for name in "abc")
        await asyncio.sleep(0)
        second.cancel()
        hold.set()
        await asyncio.gather(first, third, return_exceptions=True)
        return entered

    assert asyncio.run(drive()) == ["a", "c"]


def test_rows_go_on_while_a_refused_row_waits_its_retry_after(cells: InteractiveShell, server: FakeOpenRouter) -> None:
    """A 429 with Retry-After lowers the rows in flight; it does not stop every row for the wait."""
    cells.user_ns["many"] = [f"rock {n}" for n in range(8)]
    server.push(Scenario(status=429, retry_after="2"))
    run(cells, "--over many --concurrency 4 --max-tokens 5 -o out", "Describe {item}.")
    assert (cells.user_ns["out"]["_status"] == "ok").all()
    prompts = [request.body["messages"][-1]["content"] for request in server.chat_requests]
    refused = prompts[0]
    assert prompts.count(refused) == 2
    assert prompts.index(refused, 1) == len(prompts) - 1  # the 7 other rows were all sent while it waited


def test_the_rows_view_refreshes_at_most_ten_times_a_second() -> None:
    from granite_magic._rowsview import RowsView

    assert RowsView("rows", 100, rate=15).interval == pytest.approx(0.1)
    assert RowsView("rows", 100, rate=4).interval == pytest.approx(0.25)


def test_an_interrupted_run_keeps_its_finished_rows_and_a_rerun_sends_only_the_rest(cells: InteractiveShell,
                                                                                  server: FakeOpenRouter) -> None:
    import os
    import signal
    import threading

    from .conftest import wait_until

    cells.user_ns["many"] = [f"rock {n}" for n in range(12)]
    server.default = Scenario(tokens_per_s=200, tokens=20)  # about a tenth of a second a row
    stopper = threading.Thread(target=lambda: wait_until(lambda: len(server.chat_requests) >= 5, timeout=30)
                               and os.kill(os.getpid(), signal.SIGINT))
    stopper.start()
    try:
        out = run(cells, "--over many --concurrency 1 --max-tokens 20 -o first", "Describe {item}.")
    finally:
        stopper.join()
    first = cells.user_ns["first"]
    finished = int((first["_status"] == "ok").sum())
    assert 3 <= finished < 12 and (first["_status"] == "skipped").any(), shown(out)
    assert "did not start" in out.stderr and "run the cell again" in out.stderr
    sent = len(server.chat_requests)
    run(cells, "--over many --concurrency 1 --max-tokens 20 -o again", "Describe {item}.")
    again = cells.user_ns["again"]
    assert len(server.chat_requests) - sent == 12 - finished  # no finished row is sent again
    assert int((again["_status"] == "cached").sum()) == finished and (again["_status"] != "skipped").all()
    # the rows the interrupt cut are billed: their cost is looked up after the run, which a later test must not meet
    assert wait_until(lambda: not magics_of(cells).session._lookups, timeout=30)


def test_the_panel_runs_a_prompt_over_a_table_of_the_notebook(cells: InteractiveShell, server: FakeOpenRouter) -> None:
    from granite_magic._panel import NO_ROWS, Panel

    ip = cells  # its rows are cached in the test's own directory
    ip.user_ns["rocks"] = ["granite", "basalt", "chalk"]
    ip.user_ns["not_a_table"] = 42
    panel = Panel(magics_of(ip).session, prompt="Describe {item}.", base_url=server.base_url, backend="http", max_tokens=10)
    assert "rocks" in panel.over.options and "not_a_table" not in panel.over.options and panel.over.value == NO_ROWS
    panel.over.value = "rocks"
    assert "--over rocks" in panel.copy_as_cell().splitlines()[0]
    panel.run()
    assert panel.wait(30)
    frame = panel.results
    assert list(frame["item"]) == ["granite", "basalt", "chalk"] and (frame["_status"] == "ok").all()
    assert sorted(prompts_sent(server)) == ["Describe basalt.", "Describe chalk.", "Describe granite."]


def test_the_panel_s_over_selector_offers_a_table_made_after_it(cells: InteractiveShell, server: FakeOpenRouter) -> None:
    from granite_magic._panel import NO_ROWS, Panel

    panel = Panel(magics_of(cells).session, prompt="Describe {item}.", base_url=server.base_url, backend="http")
    assert "minerals" not in panel.over.options
    panel.over.value = "reviews"
    cells.run_cell("minerals = ['quartz', 'mica']")  # a table made in a later cell
    cells.run_cell("texts = reviews['text']")  # a Series goes over as its one column
    assert "minerals" in panel.over.options and "texts" in panel.over.options and panel.over.value == "reviews"
    assert "In" not in panel.over.options  # IPython's list of the cells' sources is no table of the user's
    cells.run_cell("del reviews")
    assert panel.over.value == "reviews" and panel.over.options[0] == NO_ROWS  # still chosen; Run says it is gone
