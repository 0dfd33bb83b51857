"""A prompt over rows answered by a batch (``via=``): OpenRouter's Batch API and a JSONL file for ``vllm run-batch``,
with the same result frame as a live run, nothing sent twice, and the estimate of each way before choosing."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

import granite_magic
from granite_magic import _session
from granite_magic._errors import InvalidParameterError
from granite_magic._turn import Turn
from granite_magic.testing import FakeOpenRouter, run_batch_file

from .conftest import TEST_KEY, magics_of, recordings_in, run, shown

ROCKS = pd.DataFrame({"rock": ["granite", "basalt", "shale", "marble", "slate"]}, index=pd.Index(list("abcde"), name="id"))
PROMPT = "Describe {rock} in a few words."


@pytest.fixture
def cache_dir(session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GRANITE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def custom_ids(path: Path) -> list[str]:
    return [json.loads(line)["custom_id"] for line in path.read_text().splitlines()]


# --- a JSONL file for vllm run-batch ----------------------------------------------------------------------------------


def test_jsonl_round_trip_takes_answers_errors_and_missing_rows_back_by_custom_id(
        cache_dir: Path, server: FakeOpenRouter, tmp_path: Path) -> None:
    first = granite_magic.map(ROCKS, PROMPT, limit=2, max_tokens=8)  # two rows answered live, so cached
    assert (first["_status"] == "ok").all()
    sent = len(server.chat_requests)

    written = granite_magic.map(ROCKS, PROMPT, max_tokens=8, via="jsonl", batch_file=str(tmp_path / "in.jsonl"))
    assert len(server.chat_requests) == sent  # writing the file sends nothing
    assert list(written["_status"]) == ["cached", "cached", "skipped", "skipped", "skipped"]
    assert written["_error"].iloc[2].startswith("waiting in in.jsonl")
    ids = custom_ids(tmp_path / "in.jsonl")
    assert len(ids) == 3  # the cached rows are not in the file
    line = json.loads((tmp_path / "in.jsonl").read_text().splitlines()[0])
    assert line["method"] == "POST" and line["url"] == "/v1/chat/completions" and "stream" not in line["body"]
    assert TEST_KEY not in (tmp_path / "in.jsonl").read_text()

    run_batch_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl", fail=[ids[1]], missing=[ids[2]])
    frame = granite_magic.read_batch(str(tmp_path / "out.jsonl"), into=written)
    assert list(frame["_status"]) == ["cached", "cached", "ok", "error", "error"]
    assert frame.loc["c", "reply"] and not frame.loc["d", "reply"]  # as a live row that failed before any text
    assert "no answer in out.jsonl" in frame.loc["e", "_error"]
    assert list(frame.index) == list(ROCKS.index) and list(frame["rock"]) == list(ROCKS["rock"])
    assert list(written["_status"]) == ["cached", "cached", "skipped", "skipped", "skipped"]  # the frame given is kept

    again = granite_magic.map(ROCKS, PROMPT, max_tokens=8)  # live: the answered row comes from the cache
    assert len(server.chat_requests) == sent + 2  # only the failed and the missing rows are sent
    assert again.loc["c", "reply"] == frame.loc["c", "reply"] and again.loc["c", "_status"] == "cached"


def test_an_openai_errors_file_is_read_beside_the_output(cache_dir: Path, server: FakeOpenRouter, tmp_path: Path) -> None:
    written = granite_magic.map(ROCKS, PROMPT, max_tokens=8, via="jsonl", batch_file=str(tmp_path / "in.jsonl"))
    ids = custom_ids(tmp_path / "in.jsonl")
    run_batch_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl", errors_path=tmp_path / "errors.jsonl", fail=[ids[0]],
                   style="openai")
    frame = granite_magic.read_batch(str(tmp_path / "out.jsonl"), into=written, errors=str(tmp_path / "errors.jsonl"))
    assert list(frame["_status"]) == ["error", "ok", "ok", "ok", "ok"]
    assert "no answer" not in frame["_error"].iloc[0]  # the errors file says why


def test_a_schema_s_fields_come_back_validated_from_the_file(cache_dir: Path, server: FakeOpenRouter, tmp_path: Path) -> None:
    written = granite_magic.map(ROCKS, PROMPT, schema="kind: igneous|sedimentary|metamorphic", max_tokens=60,
                                via="jsonl", batch_file=str(tmp_path / "in.jsonl"))
    body = json.loads((tmp_path / "in.jsonl").read_text().splitlines()[0])["body"]
    assert "kind" in json.dumps(body)  # the schema travels in the request (the prompt, or response_format)
    run_batch_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    frame = granite_magic.read_batch(str(tmp_path / "out.jsonl"), into=written)
    assert set(frame["_status"]) <= {"ok", "invalid"} and "kind" in frame.columns
    valid = frame[frame["_status"] == "ok"]
    assert valid["kind"].isin(["igneous", "sedimentary", "metamorphic"]).all()


def test_what_a_batch_file_cannot_carry_is_refused_before_anything_is_written(cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="batch_file="):
        granite_magic.map(ROCKS, PROMPT, via="jsonl")
    with pytest.raises(InvalidParameterError, match="via='carrier pigeon' is invalid"):
        granite_magic.map(ROCKS, PROMPT, via="carrier pigeon")
    with pytest.raises(InvalidParameterError, match="into="):
        granite_magic.read_batch(str(tmp_path / "out.jsonl"), into=ROCKS)
    assert not (tmp_path / "in.jsonl").exists()


# --- OpenRouter's Batch API ---------------------------------------------------------------------------------------------


def test_rows_answered_by_a_batch_make_the_live_frame_at_half_the_price(session: Any, server: FakeOpenRouter, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANITE_CACHE_DIR", str(tmp_path / "live"))
    live = granite_magic.map(ROCKS, PROMPT, max_tokens=8, seed=1)  # the same seed: the fake writes the same words
    monkeypatch.setenv("GRANITE_CACHE_DIR", str(tmp_path / "batch"))
    sent = len(server.chat_requests)
    batched = granite_magic.map(ROCKS, PROMPT, max_tokens=8, seed=1, via="batch", poll_s=0)
    assert len(server.chat_requests) == sent and len(server.batch_creates) == 1  # one create, no live request
    assert list(batched.columns) == list(live.columns) and list(batched.index) == list(live.index)
    assert list(batched["_status"]) == ["ok"] * 5 and list(batched["reply"]) == list(live["reply"])
    assert batched["_cost"].tolist() == pytest.approx((live["_cost"] / 2).tolist())
    body = json.dumps(server.batch_creates[0])
    assert body.index('"endpoint"') < body.index('"model"') < body.index('"requests"')
    ledger = _session.shared_session().ledger.to_dataframe()  # the session map runs in
    assert ledger["cost"].iloc[-5:].sum() == pytest.approx(batched["_cost"].sum())  # the ledger has them


def test_a_failed_request_is_that_row_s_error_and_running_again_sends_only_it(cache_dir: Path, server: FakeOpenRouter) -> None:
    server.batch_fail_every = 3
    first = granite_magic.map(ROCKS, PROMPT, max_tokens=8, via="batch", poll_s=0)
    assert list(first["_status"]) == ["ok", "ok", "error", "ok", "ok"] and first.loc["c", "_error"]
    server.batch_fail_every = 0
    again = granite_magic.map(ROCKS, PROMPT, max_tokens=8, via="batch", poll_s=0)
    assert [len(body["requests"]) for body in server.batch_creates] == [5, 1]  # only the failed row went again
    assert list(again["_status"]) == ["cached", "cached", "ok", "cached", "cached"]
    live = granite_magic.map(ROCKS, PROMPT, max_tokens=8)  # and the live path finds every answer in the cache
    assert (live["_status"] == "cached").all()


def test_a_batch_resumed_after_a_restart_is_polled_not_submitted_again(cache_dir: Path, server: FakeOpenRouter,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import signal
    import threading

    from granite_magic import _batchrun, _session

    server.batch_per_poll = 2  # the batch needs several polls
    main = threading.main_thread().ident
    assert main is not None
    polled: list[int] = []

    def press_stop(progress: Any) -> None:  # Ctrl-C (a SIGINT to the main thread) once the first poll is shown
        polled.append(progress.polls)
        if len(polled) == 1:
            signal.pthread_kill(main, signal.SIGINT)

    real = _batchrun.run_openrouter_batch

    async def watched(*args: Any, **kwargs: Any) -> Any:
        return await real(*args, **{**kwargs, "on_progress": press_stop})

    monkeypatch.setattr("granite_magic._api.run_openrouter_batch", watched)
    # the poll interval the interrupt lands in, as it would in a notebook (30 s between polls)
    cut = granite_magic.map(ROCKS, PROMPT, max_tokens=8, via="batch", poll_s=30)
    assert polled == [1] and (cut["_status"] == "skipped").all() and len(server.batch_creates) == 1
    monkeypatch.setattr("granite_magic._api.run_openrouter_batch", real)
    _session._shared = None  # a kernel restart: nothing in memory but the manifests on disk

    resumed = granite_magic.map(ROCKS, PROMPT, max_tokens=8, via="batch", poll_s=0)
    assert len(server.batch_creates) == 1  # nothing submitted twice
    assert list(resumed["_status"]) == ["ok"] * 5
    assert resumed.attrs["batch"]["submitted"] == 0 and resumed.attrs["batch"]["resumed"] == 1
    assert sum(server.batch_polls.values()) > 2  # it polled the batch submitted before the restart


def test_a_failed_batch_and_a_model_that_takes_none_are_said_in_one_line_nothing_lost(
        cache_dir: Path, server: FakeOpenRouter) -> None:
    from granite_magic._errors import GraniteError

    server.batch_failure = "Batch failed: the provider is down"
    frame = granite_magic.map(ROCKS, PROMPT, max_tokens=8, via="batch", poll_s=0)
    assert (frame["_status"] == "error").all() and "the provider is down" in frame["_error"].iloc[0]
    assert list(frame["rock"]) == list(ROCKS["rock"])  # every row is there, saying why it has no answer

    server.reset()
    server.refuse_batches("ibm-granite/granite-4.0-h-micro")
    with pytest.raises(GraniteError, match="batch") as refused:
        granite_magic.map(ROCKS, PROMPT, max_tokens=8, via="batch", poll_s=0)
    assert "\n" not in refused.value.message and TEST_KEY not in str(refused.value)
    shared = _session.shared_session()  # the session map runs in (a loaded extension's is another: its own probes)
    shared.probe(shared.resolve(Turn("")))  # remembered: the next batch is refused before anything is sent
    creates = len(server.batch_creates)
    with pytest.raises(InvalidParameterError, match=r"takes no batches here .*via='live'"):
        granite_magic.map(ROCKS, PROMPT, max_tokens=8, via="batch", poll_s=0)
    assert len(server.batch_creates) == creates == 0


def test_amap_answers_by_batch_writes_a_file_and_estimates_as_map_does(cache_dir: Path, server: FakeOpenRouter,
                                                                       tmp_path: Path) -> None:
    import asyncio

    async def in_a_running_loop() -> tuple[Any, Any, Any]:
        plan = await granite_magic.amap(ROCKS, PROMPT, max_tokens=8, dry_run=True)
        batch = await granite_magic.amap(ROCKS, PROMPT, max_tokens=8, via="batch", poll_s=0)
        written = await granite_magic.amap(ROCKS, PROMPT, max_tokens=9, via="jsonl", batch_file=str(tmp_path / "in.jsonl"))
        return plan, batch, written

    plan, batch, written = asyncio.run(in_a_running_loop())
    assert list(plan.index) == ["live", "batch"] and len(server.chat_requests) == 0
    assert list(batch["_status"]) == ["ok"] * 5 and batch.attrs["via"] == "batch" and len(server.batch_creates) == 1
    assert (written["_status"] == "skipped").all() and len(custom_ids(tmp_path / "in.jsonl")) == 5
    assert list(batch.columns) == list(granite_magic.map(ROCKS, PROMPT, max_tokens=8).columns)  # the same frame


# --- the estimate, and the cell ---------------------------------------------------------------------------------------


def test_the_plan_compares_live_and_batch_and_measures_on_the_rows_already_answered(cache_dir: Path,
                                                                                  server: FakeOpenRouter) -> None:
    before = granite_magic.map(ROCKS, PROMPT, max_tokens=8, dry_run=True)
    assert list(before.index) == ["live", "batch"] and len(server.chat_requests) == 0
    assert before.loc["batch", "worst case $"] == pytest.approx(before.loc["live", "worst case $"] / 2)
    assert pd.isna(before.loc["live", "expected $"]) and "limit=5" in before.loc["live", "time"]
    granite_magic.map(ROCKS, PROMPT, max_tokens=8, limit=2)
    after = granite_magic.map(ROCKS, PROMPT, max_tokens=8, dry_run=True)
    assert after.loc["live", "requests"] == 3 and after.attrs["measured_rows"] == 2
    assert after.loc["live", "expected $"] <= after.loc["live", "worst case $"] and "about" in after.loc["live", "time"]


@pytest.fixture
def cells(ip: InteractiveShell, tmp_path: Path) -> InteractiveShell:
    magics = magics_of(ip)
    magics.cache_dir = str(tmp_path / "recordings")
    magics.batch_poll = 0  # the fake's batch moves on at each poll: no reason to wait between them
    ip.user_ns["rocks"] = ROCKS.copy()
    yield ip
    magics.cache_dir = ""
    magics.batch_poll = 30.0


def test_a_cell_over_rows_via_a_batch_a_file_and_its_plan(cells: InteractiveShell, server: FakeOpenRouter, tmp_path: Path) -> None:
    out = run(cells, "--over rocks --dry-run", PROMPT)
    assert "worst case $" in shown(out) and len(server.chat_requests) == 0
    out = run(cells, "--over rocks --via batch --max-tokens 8 -o out", PROMPT)
    frame = cells.user_ns["out"]
    assert (frame["_status"] == "ok").all() and len(server.chat_requests) == 0, shown(out)
    assert "batch: 1 batch(es), 5 request(s): 5 done" in shown(out)
    out = run(cells, f"--over rocks --via jsonl --batch-file {tmp_path / 'in.jsonl'} --max-tokens 9 -o waiting", PROMPT)
    assert "5 rows written to" in shown(out) and len(custom_ids(tmp_path / "in.jsonl")) == 5
    out = run(cells, "--over rocks --via jsonl", PROMPT)
    assert "give --batch-file in.jsonl" in out.stderr and "\n" not in out.stderr.strip()  # refused in one line


# --- a hostile batch API ---------------------------------------------------------------------------------------------


def test_a_batch_api_that_echoes_the_key_or_answers_garbage_leaves_a_message_and_no_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from granite_magic._errors import GraniteError

    from .hostile import HOSTILE_KEY, HostileServer, RecordedRequest, Reply, json_reply

    def answers(request: RecordedRequest) -> Reply:  # every request of the create call, answered with the key in it
        created = next(r.json for r in hostile.requests if r.method == "POST" and r.path.endswith("/batches"))
        rows = [{"id": f"r{n}", "custom_id": each["custom_id"], "error": None, "response": {"status_code": 200, "body": {
                 "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "key: {AUTH}"},
                                                          "finish_reason": "stop"}]}}} for n, each in enumerate(created["requests"])]
        return json_reply(200, {"object": "list", "data": [*rows, {"no": "custom id"}], "has_more": False, "next_cursor": None})

    with HostileServer() as hostile:
        monkeypatch.setenv("OPENROUTER_API_KEY", HOSTILE_KEY)
        monkeypatch.setenv("GRANITE_BASE_URL", hostile.base_url)
        monkeypatch.setenv("GRANITE_CACHE_DIR", str(tmp_path / "cache"))
        batch = {"id": "b1", "status": "completed", "request_counts": {"total": 2, "completed": 2, "failed": 0}}
        hostile.script(json_reply(202, {**batch, "status": "validating"}), json_reply(200, batch), answers)
        frame = granite_magic.map(["granite", "basalt"], "Describe {item}.", max_tokens=8, via="batch", poll_s=0)
        assert list(frame["_status"]) == ["ok", "ok"] and frame["reply"].str.startswith("key: ").all()
        assert HOSTILE_KEY not in frame.to_string() and HOSTILE_KEY not in json.dumps(frame.attrs, default=str)
        kept = recordings_in(tmp_path / "cache")
        manifests = [gzip.decompress(path.read_bytes()) for path in (tmp_path / "cache" / "batches").glob("*.gz")]
        assert len(kept) == 2 and len(manifests) == 1
        assert not any(HOSTILE_KEY.encode() in document for document in kept + manifests)

        hostile.script(json_reply(202, {**batch, "id": "b2", "status": "validating"}), json_reply(200, "<html>{AUTH}</html>"))
        with pytest.raises(GraniteError) as failed:
            granite_magic.map(["shale"], "Describe {item}.", max_tokens=8, via="batch", poll_s=0)
        message = failed.value.message
        assert "not a batch" in message and "run the same map again to resume" in message and HOSTILE_KEY not in message


def test_the_poll_interval_is_read_from_the_environment_as_a_number_and_refused_when_it_is_not_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Dask worker takes the driver's settings into its environment as text: a number there must read as one."""
    from granite_magic._settings import Settings

    monkeypatch.setenv("GRANITE_BATCH_POLL_S", "0.5")
    assert Settings.from_env().batch_poll_s == 0.5
    for wrong in ("-1", "soon", "inf"):
        monkeypatch.setenv("GRANITE_BATCH_POLL_S", wrong)
        with pytest.raises(InvalidParameterError, match="GRANITE_BATCH_POLL_S"):
            Settings.from_env()
