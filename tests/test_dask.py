"""``map`` over a Dask DataFrame: each partition through the pandas path on a real ``LocalCluster``'s worker processes,
against the fake OpenRouter server; the same frame as the pandas path, a rerun that sends nothing, a worker killed
mid-run losing no row, and an API key that never travels in the task graph."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

import cloudpickle  # noqa: E402  (comes with dask)
import pandas as pd  # noqa: E402
import psutil  # noqa: E402

import granite_magic  # noqa: E402
from granite_magic._dask import is_dask_frame  # noqa: E402
from granite_magic._errors import InvalidParameterError  # noqa: E402
from granite_magic._session import shared_session  # noqa: E402
from granite_magic.testing import FakeOpenRouter, RecordedRequest  # noqa: E402

from .conftest import TEST_KEY  # noqa: E402

ROCKS = pd.DataFrame({"rock": ["granite", "basalt", "chalk", "slate", "marble", "flint", "pumice", "gneiss", "shale"],
                      "found": ["Alps", "Iceland", "Dover", "Wales", "Carrara", "Norfolk", "Lipari", "Lewis", "Dorset"]},
                     index=pd.Index([101, 102, 103, 104, 105, 106, 107, 108, 109], name="rock_id"))
PROMPT = "Describe {rock}, as found in {found}."
SPEC = "kind: igneous|sedimentary|metamorphic, note"
PER_RUN = ("rows", "rate_limited", "fewest_at_once")  # a partition's own counts: not in the computed frame's attrs


class HoldingServer(FakeOpenRouter):
    """The fake server, which can hold one request (the first whose prompt is ``hold_prompt``) before answering it,
    until ``release`` is set; ``held`` is set when it arrives."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.hold_prompt: str | None = None
        self.held_request: RecordedRequest | None = None
        self.held, self.release = threading.Event(), threading.Event()
        self._holding = threading.Lock()
        server, answer = self, self._httpd.RequestHandlerClass

        class Holding(answer):  # type: ignore[misc,valid-type]
            def _generate(self, api: str, body: dict[str, Any], record: RecordedRequest) -> None:
                server.wait_if_held(body, record)
                super()._generate(api, body, record)

        self._httpd.RequestHandlerClass = Holding

    def hold(self, prompt: str | None) -> None:
        """Hold the next request for ``prompt`` (None: none)."""
        with self._holding:
            self.hold_prompt, self.held_request = prompt, None
            self.held.clear()
            self.release.clear()

    def wait_if_held(self, body: dict[str, Any], record: RecordedRequest) -> None:
        with self._holding:
            hold = self.hold_prompt is not None and body["messages"][-1]["content"] == self.hold_prompt
            if hold:
                self.hold_prompt, self.held_request = None, record
        if hold:
            self.held.set()
            self.release.wait(timeout=60)


@pytest.fixture(scope="module")
def fake() -> Iterator[HoldingServer]:
    with HoldingServer(api_key=TEST_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two worker processes of one thread each, shared by the module (starting them takes seconds).  They inherit the
    key from the environment they start in, which is the only way it reaches them."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENROUTER_API_KEY", TEST_KEY)
        env.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("workers-home")))  # no probe report of another test
        local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with local, distributed.Client(local) as client:
        yield client


@pytest.fixture
def served(fake: HoldingServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[HoldingServer]:
    """The driver's settings for a test (the workers take them from the task graph): the fake server, a cache
    directory of the test's own."""
    fake.reset()
    fake.hold(None)
    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_KEY)
    monkeypatch.setenv("GRANITE_BASE_URL", fake.base_url)
    monkeypatch.setenv("GRANITE_CACHE_DIR", str(tmp_path / "cache"))
    yield fake
    fake.hold(None)
    fake.release.set()  # whatever a test left held goes on


def prompts_sent(server: FakeOpenRouter) -> list[str]:
    return [r.body["messages"][-1]["content"] for r in server.chat_requests]


def rocks(npartitions: int) -> Any:
    return dd.from_pandas(ROCKS, npartitions=npartitions)


def test_a_dask_frame_gives_the_pandas_path_s_frame_row_for_row(served: HoldingServer, cluster: Any,
                                                                 monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    ledger = shared_session().ledger
    runs_here = len(ledger.entries)
    result = granite_magic.map(rocks(3), PROMPT, schema=SPEC, temperature=0, max_tokens=100)
    assert is_dask_frame(result) and result.npartitions == 3 and served.requests == []  # lazy: nothing sent yet
    got = result.compute()
    assert sorted(prompts_sent(served)) == sorted(PROMPT.format(**row) for row in ROCKS.to_dict("records"))
    assert len(ledger.entries) == runs_here  # the rows ran in the workers' sessions, not in this process's

    monkeypatch.setenv("GRANITE_CACHE_DIR", str(tmp_path / "pandas"))  # the pandas path asks the server too
    expected = granite_magic.map(ROCKS, PROMPT, schema=SPEC, temperature=0, max_tokens=100)
    assert list(result.columns) == list(expected.columns) and result.dtypes.equals(expected.dtypes)
    assert got.dtypes.equals(expected.dtypes)
    assert (got["_status"] == "ok").all() and got["kind"].isin(["igneous", "sedimentary", "metamorphic"]).all()
    pd.testing.assert_frame_equal(got.drop(columns="_latency_s"), expected.drop(columns="_latency_s"))  # row for row
    assert got["_latency_s"].gt(0).all()
    assert got.attrs == {name: value for name, value in expected.attrs.items() if name not in PER_RUN}
    assert got.attrs["schema"] == SPEC and got.attrs["prompt"] == PROMPT


def test_a_rerun_sends_no_request(served: HoldingServer, cluster: Any) -> None:
    first = granite_magic.map(rocks(3), PROMPT, temperature=0, max_tokens=20).compute()
    assert (first["_status"] == "ok").all() and len(served.chat_requests) == len(ROCKS)
    sent = len(served.requests)
    again = granite_magic.map(rocks(3), PROMPT, temperature=0, max_tokens=20).compute()
    # nothing at all, but the model listing a worker process that ran none of the first run's rows reads (free)
    assert [r.path for r in served.requests[sent:] if not r.path.endswith("/models")] == []
    assert (again["_status"] == "cached").all() and list(again["reply"]) == list(first["reply"])
    assert list(again.index) == list(ROCKS.index)


def test_each_call_is_a_run_of_its_own_not_the_last_one_s_results(served: HoldingServer) -> None:
    # Dask reuses results held under the same keys: two calls alike must not share them, or a rerun computed while
    # the scheduler still held the first run's results would be handed those back, and a record-mode rerun not re-sent
    first, again = (granite_magic.map(rocks(3), PROMPT, temperature=0, max_tokens=20) for _ in range(2))
    assert first._name != again._name
    assert first._name == first._name and set(first.__dask_keys__()).isdisjoint(again.__dask_keys__())


def test_a_worker_killed_mid_run_loses_no_row_and_repeats_none(served: HoldingServer, cluster: Any) -> None:
    held = PROMPT.format(**ROCKS.loc[105])  # the middle row of the middle partition (104-106)
    served.hold(held)
    # one row at a time in a partition: when 105 is asked for, 104 is answered and in the cache, 106 not yet asked for
    future = cluster.compute(granite_magic.map(rocks(3), PROMPT, temperature=0, max_tokens=20, concurrency=1))
    assert served.held.wait(timeout=60), "the row to hold was never asked for"
    # the worker whose process holds the request's connection
    assert served.held_request is not None
    port = served.held_request.client_port
    pids = cluster.run(os.getpid)
    holder = next(pid for pid in pids.values()
                  if any(c.laddr and c.laddr.port == port for c in psutil.Process(pid).net_connections("tcp")))
    os.kill(holder, signal.SIGKILL)
    psutil.Process(holder).wait(timeout=30)
    served.release.set()  # the held request is answered to a closed connection

    frame = future.result(timeout=120)
    assert list(frame.index) == list(ROCKS.index)  # every row, once, in input order
    assert frame["_status"].isin(["ok", "cached"]).all() and frame["reply"].str.len().gt(0).all()
    sent = prompts_sent(served)
    assert sent.count(held) == 2  # held and lost with its worker, then asked again when Dask ran the partition again
    assert set(sent) == {PROMPT.format(**row) for row in ROCKS.to_dict("records")}
    # a row answered before the kill came from the cache when its partition ran again: sent once, never twice
    assert all(sent.count(prompt) == 1 for prompt in set(sent) - {held})
    assert list(frame.loc[104:106, "_status"]) == ["cached", "ok", "ok"]
    cluster.wait_for_workers(2, timeout=60)  # the nanny started a new worker; the next test has two again


def test_the_key_never_travels_in_the_task_graph(served: HoldingServer, tmp_path: Any) -> None:
    session = shared_session()
    session.set_api_key(TEST_KEY)  # a key the driver's session holds (a Secret) stays there too
    try:
        result = granite_magic.map(rocks(2), PROMPT, schema=SPEC, temperature=0, expect=lambda row, answer: True)
    finally:
        session.set_api_key(None)
    graph = dict(result.__dask_graph__())
    # the graph as printed, and each task's arguments in full (a task prints only its key)
    shown = repr(graph) + "".join(repr(getattr(task, "args", task)) + repr(getattr(task, "kwargs", "")) for task in graph.values())
    assert PROMPT in shown and str(tmp_path / "cache") in shown  # what does travel: the prompt, the settings
    assert TEST_KEY not in shown and "Secret" not in shown
    for sent in (cloudpickle.dumps(graph), cloudpickle.dumps(result)):  # the graph, and the expression a client sends
        assert TEST_KEY.encode() not in sent and b"Secret" not in sent
    assert served.requests == []


@pytest.mark.parametrize(("options", "words"), [
    ({"limit": 2}, "limit=2 would keep each partition's first rows"),
    ({"sample": 3}, "sample=3 would draw rows in each partition"),
    ({"seeds": "1-2"}, "seeds='1-2' indexes the result by row and setting"),
    ({"sweep": {"temperature": [0, 1]}}, "a Dask DataFrame cannot hold"),
    ({"via": "batch"}, "via='batch' answers a whole table by batch"),
    ({"dry_run": True}, "dry_run=True"),
])
def test_options_a_partition_cannot_honour_are_refused_before_sending(served: HoldingServer, options: dict[str, Any],
                                                                       words: str) -> None:
    if options.keys() & {"via", "dry_run"} and "via" not in granite_magic.map.__code__.co_varnames:
        pytest.skip("map() has no batch options here")
    with pytest.raises(InvalidParameterError) as refused:
        granite_magic.map(rocks(2), PROMPT, **options)
    assert words in refused.value.message and "\n" not in refused.value.message
    with pytest.raises(InvalidParameterError, match=r"\{rok\}"):  # and a prompt that names no column, once, here
        granite_magic.map(rocks(2), "Describe {rok}.")
    assert served.requests == []


def test_granite_magic_imports_no_dask_and_runs_without_it(served: HoldingServer) -> None:
    """Importing the package, and the pandas path, never import dask; with dask missing altogether, map works."""
    code = ("import sys; sys.modules['dask'] = None\n"  # `import dask` now fails, as if it were not installed
            "import granite_magic, granite_magic._api, granite_magic._dask\n"
            "assert not [name for name in sys.modules if name.startswith('dask') and sys.modules[name] is not None]\n"
            "frame = granite_magic.map(['granite'], 'Describe {item}.', max_tokens=5)\n"
            "assert list(frame['_status']) == ['ok'], frame\n"
            "print('ran', len(frame))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert done.returncode == 0 and done.stdout.strip() == "ran 1", done.stderr
    assert prompts_sent(served) == ["Describe granite."]
