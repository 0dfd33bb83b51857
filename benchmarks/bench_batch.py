"""One prompt over rows as a batch (``granite_magic.map(..., via="batch")``): resuming, memory, polling, Dask.

Every figure runs against the local fake server (``python -m granite_magic.testing``) in its own process, a fresh
server per figure (or per child process, where its counters must start at zero), with short rows and short replies.
The fake's batches move on only when polled (``/_control`` ``{"batches": {"per_poll": K}}``: K requests finished a
poll), and ``GET /_batches`` counts its create calls (the custom ids of each), the polls of each batch and the results
pages asked for; ``GET /_requests`` gives each request's arrival time.

1. ``resume``: ``--resume-rows`` rows with ``via="batch"`` in a child process (a kernel) whose poll interval is the
   default (30 s), the fake finishing ``--resume-per-poll`` requests a poll.  As soon as the fake's counters show the
   first ``GET /batches/{id}``, the child is killed (SIGKILL: a kernel restart); then the same map, with the same cache
   directory, in a fresh child (``poll_s=--poll-s``), and once more in a third.  Counted at the fake: create calls,
   custom ids submitted and submitted twice (target 0), the polls after the restart; and every row of the second
   child's frame ``ok``.
2. ``batch``: ``--rows`` short rows in a fresh interpreter (a child process, like a kernel), after a warm-up map of
   ``--concurrency`` rows the same way: peak RSS growth during ``map(..., via="batch", poll_s=--poll-s)``
   (``ru_maxrss`` after, minus the RSS before) beyond the result frame's own ``memory_usage(deep=True)``, per row
   (target < 2 KB); beside it, the baseline, the same rows through ``via="live"`` (at ``--concurrency``) measured the
   same way in another fresh interpreter, the two taking turns (``--batch-runs``; medians).  The fake finishes
   ``--per-poll`` requests of each batch a poll, so a batch of 5,000 needs several polls.  Polling, from the fake's
   records of the measured batches (the warm-up's left out): create calls, polls of each batch, results pages, and
   the most ``GET /batches/{id}`` of one batch in any ``poll_s`` window (target: at most 1) with the shortest gap
   between two polls of one batch.  Wall times of both.  ``--breakdown``: one more batch run under tracemalloc,
   marked at the batch path's phases: what each keeps, and the most each passing one adds (where the memory goes).
3. ``dask``: ``--dask-rows`` rows in ``--partitions`` partitions of a Dask DataFrame, ``map`` over it on a
   ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``, ``.compute()``, against the pandas ``map`` of
   the same rows in this process (each run with a fresh cache directory, ``--concurrency`` rows in flight per
   ``map`` call: per partition on the workers; ``temperature=0``, so the fake's reply depends on the prompt alone),
   taking turns (``--runs``; medians): rows equal / total ignoring ``_latency_s`` (target: all), the index, columns,
   dtypes and ``attrs`` (less one run's counts), and the wall times (the cluster's start apart).

    python benchmarks/bench_batch.py [--figures resume,batch,dask] [--resume-rows 2000] [--resume-per-poll 100]
                                     [--rows 10000] [--per-poll 1000] [--poll-s 0.2] [--concurrency 64]
                                     [--batch-runs 1] [--breakdown] [--dask-rows 2000] [--partitions 4]
                                     [--dask-concurrency 16] [--runs 3] [--tokens 4]

The issue's sizes are the defaults, 2,000 rows (resume) and 2,000 in 4 partitions (dask), but for the batch figure:
its default is 10,000 rows, one run of each way (``--batch-runs``); the issue's size is ``--rows 20000`` (about 30 s
via batch and 90 s live on 2 shared cores; the live baseline took 20 minutes when a live map's time grew faster than
its rows).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_map import fake_server  # the fake server in its own process, shared by the figures

PROMPT = "Echo {text}"
DETERMINISTIC: dict[str, Any] = {"temperature": 0}  # the fake's words then depend on the prompt alone, so two runs can be compared
Table = list[tuple[str, str, str]]


# --- the server, in its own process ---------------------------------------------------------------------------------


def point_at(url: str, cache_dir: str) -> None:
    """What the Python API reads from the environment on each call."""
    os.environ["GRANITE_BASE_URL"] = url
    os.environ["OPENROUTER_API_KEY"] = "bench"
    os.environ["GRANITE_CACHE_DIR"] = cache_dir


def rows_frame(n: int, offset: int = 0) -> Any:
    import pandas as pd

    return pd.DataFrame({"text": [f"r{offset + i}" for i in range(n)]})  # short rows


# --- a child process: one map, as a kernel runs it ---------------------------------------------------------------------


def current_rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KB on Linux


def map_child(spec: dict[str, Any]) -> None:
    """In a fresh interpreter: a warm-up map of ``spec["warm"]`` rows (none: 0), then ``spec["rows"]`` short rows the
    same way (``via``, ``poll_s``, ``concurrency``); the figures as JSON on stdout."""
    from granite_magic._api import map as granite_map

    point_at(spec["url"], spec["cache_dir"])
    options = {"via": spec["via"], "poll_s": spec["poll_s"], "concurrency": spec["concurrency"]}
    if spec["warm"]:
        granite_map(rows_frame(spec["warm"], offset=10**9), PROMPT, **options)
    frame = rows_frame(spec["rows"])
    gc.collect()
    rss_before, peak_before = current_rss(), peak_rss()
    started = time.perf_counter()
    result = granite_map(frame, PROMPT, **options)
    wall = time.perf_counter() - started
    peak_after = peak_rss()
    print(json.dumps({"rows": spec["rows"], "wall_s": wall, "rss_before": rss_before, "peak_before": peak_before,
                      "peak_after": peak_after, "frame_bytes": int(result.memory_usage(deep=True).sum()),
                      "statuses": dict(Counter(result["_status"])), "via": result.attrs.get("via", "live"),
                      "batch": result.attrs.get("batch"),
                      "same_order": list(result["text"]) == list(frame["text"])}))


def traced_child(spec: dict[str, Any]) -> None:
    """``map_child``'s measured map under tracemalloc, marked where the batch path's phases begin and end (the map's
    per-row jobs, the batch bodies, each poll, each batch's results pages and the taking of its answers); each mark as
    (label, Python memory traced then, the most traced since the mark before) in JSON on stdout."""
    import functools
    import tracemalloc

    import granite_magic._batchrun as batchrun
    from granite_magic._api import map as granite_map
    from granite_magic._client import GraniteClient
    from granite_magic._session import Session

    marks: list[tuple[str, int, int]] = []

    def mark(label: str) -> None:
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            marks.append((label, current, peak))
            tracemalloc.reset_peak()

    def watch(owner: Any, name: str) -> None:
        original = getattr(owner, name)
        if asyncio_function(original):
            @functools.wraps(original)
            async def waited(*args: Any, **kwargs: Any) -> Any:
                mark(f"{name}>")
                try:
                    return await original(*args, **kwargs)
                finally:
                    mark(f"{name}<")
            setattr(owner, name, waited)
        else:
            @functools.wraps(original)
            def called(*args: Any, **kwargs: Any) -> Any:
                mark(f"{name}>")
                try:
                    return original(*args, **kwargs)
                finally:
                    mark(f"{name}<")
            setattr(owner, name, called)

    for owner, names in ((Session, ("start_map", "finish_map")), (GraniteClient, ("get_batch", "create_batch")),
                         (batchrun, ("pending_rows", "create_bodies", "_answers", "take_answers"))):
        for name in names:
            watch(owner, name)
    point_at(spec["url"], spec["cache_dir"])
    options = {"via": spec["via"], "poll_s": spec["poll_s"], "concurrency": spec["concurrency"]}
    granite_map(rows_frame(spec["warm"], offset=10**9), PROMPT, **options)
    frame = rows_frame(spec["rows"])
    gc.collect()
    tracemalloc.start()
    result = granite_map(frame, PROMPT, **options)
    mark("end")
    print(json.dumps({"rows": spec["rows"], "marks": marks, "frame_bytes": int(result.memory_usage(deep=True).sum()),
                      "statuses": dict(Counter(result["_status"]))}))


def asyncio_function(function: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(function)


def child_command(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, __file__, "--child", json.dumps(spec)]


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(child_command(spec), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the child failed ({out.returncode}):\n{out.stderr[-4000:]}")
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


# --- 1. resume after a kernel restart ----------------------------------------------------------------------------------


def resume(args: argparse.Namespace, table: Table) -> None:
    n = args.resume_rows
    print(f"\n1. resume: {n:,} rows via='batch' in a child killed (SIGKILL) after the batch's first poll, then the same "
          f"map in a fresh child (poll_s={args.poll_s:g}; the fake finishes {args.resume_per_poll} requests a poll)",
          flush=True)
    with fake_server("--tokens", str(args.tokens)) as server, tempfile.TemporaryDirectory() as tmp:
        server.control(batches={"per_poll": args.resume_per_poll})
        spec = {"url": server.url, "cache_dir": f"{tmp}/cache", "rows": n, "via": "batch", "poll_s": None,
                "concurrency": args.concurrency, "warm": 0}  # poll_s None: the package's default (30 s)
        with open(f"{tmp}/stderr", "w+") as stderr:
            started = time.perf_counter()
            child = subprocess.Popen(child_command(spec), stdout=subprocess.DEVNULL, stderr=stderr)
            seen: dict[str, Any] = {}
            while child.poll() is None:  # watching the fake's counters, not the clock
                seen = server.batches()
                if any(seen["polls"].values()):
                    child.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.005)
            child.wait()
            killed_after = time.perf_counter() - started
            if child.returncode != -signal.SIGKILL:
                stderr.seek(0)
                raise SystemExit(f"the first child ended ({child.returncode}) before its first poll:\n{stderr.read()[-4000:]}")
        at_kill = server.batches()
        manifests = sorted(p.name for p in Path(f"{tmp}/cache/batches").glob("*.json.gz"))
        second = run_child({**spec, "poll_s": args.poll_s})
        after_second = server.batches()
        third = run_child({**spec, "poll_s": args.poll_s})
        after_third = server.batches()
    submitted = [identifier for create in after_third["creates"] for identifier in create]
    twice = sum(1 for count in Counter(submitted).values() if count > 1)
    polls_at_kill = sum(at_kill["polls"].values())
    resumed_polls = sum(after_second["polls"].values()) - polls_at_kill
    creates_first, creates_second = len(at_kill["creates"]), len(after_second["creates"]) - len(at_kill["creates"])
    creates_third = len(after_third["creates"]) - len(after_second["creates"])
    ok = second["statuses"].get("ok", 0)
    print(f"  first child: {creates_first} create call(s) ({sum(map(len, at_kill['creates']))} custom ids), killed "
          f"{killed_after:.2f} s after it started, {polls_at_kill} poll(s) by then; manifests left: {manifests}")
    said = second["batch"] or {}
    print(f"  second child: {creates_second} create call(s), {resumed_polls} polls of the batch it resumed, "
          f"{len(after_second['result_requests']) - len(at_kill['result_requests'])} results pages; "
          f"{second['statuses']} in {second['wall_s']:.2f} s (rows in input order: {second['same_order']}); its frame's "
          f"attrs['batch']: submitted {said.get('submitted')}, resumed {said.get('resumed')}, polls {said.get('polls')}")
    print(f"  third child (the same map again): {creates_third} create call(s), "
          f"{sum(after_third['polls'].values()) - sum(after_second['polls'].values())} polls; {third['statuses']}")
    print(f"  custom ids submitted: {len(submitted)} in {len(after_third['creates'])} create call(s), distinct "
          f"{len(set(submitted))}, submitted twice: {twice} (target 0); rows ok after the restart: {ok} of {n}")
    table.append((f"{n:,} rows via='batch', SIGKILL after the first poll, then run again in a fresh process",
                  f"{twice} custom ids submitted twice ({len(submitted):,} submitted in {len(after_third['creates'])} "
                  f"create call(s); 0 creates after the restart: {creates_second == 0}); {ok:,}/{n:,} rows ok; "
                  f"resumed in {second['wall_s']:.1f} s ({resumed_polls} polls at {args.poll_s:g} s)",
                  "0 submitted twice; every row ok"))


# --- 2. 20,000 rows through the batch path -----------------------------------------------------------------------------


def poll_figures(requests: list[dict[str, Any]], batch_ids: set[str], poll_s: float) -> dict[str, Any]:
    """From the fake's records: each batch's ``GET /batches/{id}`` times, the most of one batch in any ``poll_s``
    window, the shortest gap between two polls of one batch, and results pages."""
    polls: dict[str, list[float]] = {}
    pages: Counter[str] = Counter()
    for r in requests:
        if r["method"] != "GET":
            continue
        parts = r["path"].split("?")[0].rstrip("/").split("/batches/")
        if len(parts) != 2:
            continue
        batch_id, _, action = parts[1].partition("/")
        if batch_id not in batch_ids:
            continue
        if action == "":
            polls.setdefault(batch_id, []).append(r["received_at"])
        elif action == "results":
            pages[batch_id] += 1
    most, gaps = 0, []
    for times in polls.values():
        times.sort()
        gaps += [b - a for a, b in itertools.pairwise(times)]
        most = max(most, max(sum(1 for u in times[i:] if u - t < poll_s) for i, t in enumerate(times)))
    return {"polls": {b: len(t) for b, t in sorted(polls.items())}, "pages": dict(sorted(pages.items())),
            "most_in_window": most, "shortest_gap": min(gaps) if gaps else None}


def batch_run(args: argparse.Namespace, via: str) -> dict[str, Any]:
    """One fresh interpreter, one fresh server: ``--rows`` rows ``via``; with the batch path's polling figures."""
    with fake_server("--tokens", str(args.tokens)) as server, tempfile.TemporaryDirectory() as tmp:
        server.control(batches={"per_poll": args.per_poll})
        m = run_child({"url": server.url, "cache_dir": f"{tmp}/cache", "rows": args.rows, "via": via,
                       "poll_s": args.poll_s, "concurrency": args.concurrency, "warm": args.concurrency})
        if via == "batch":
            counters = server.batches()
            measured = [b["id"] for b in counters["batches"][1:]]  # the first is the warm-up's
            m["creates"] = [len(ids) for ids in counters["creates"][1:]]
            m.update(poll_figures(server.requests(), set(measured), args.poll_s))
            m["rounds"] = (m["batch"] or {}).get("polls")  # the client's poll rounds (its frame's attrs['batch'])
    growth = m["peak_after"] - m["rss_before"]
    m["growth"] = growth
    m["beyond_per_row"] = (growth - m["frame_bytes"]) / m["rows"]
    m["hidden"] = m["peak_after"] == m["peak_before"]
    return m


def batch(args: argparse.Namespace, table: Table) -> None:
    n = args.rows
    per_batch = min(n, 5000)
    expected_polls = 1 + math.ceil(per_batch / args.per_poll)
    print(f"\n2. batch: {n:,} short rows in a fresh interpreter, via='batch' (poll_s={args.poll_s:g}, the fake finishing "
          f"{args.per_poll} requests of a batch a poll) beside via='live' (concurrency {args.concurrency}), "
          f"{args.batch_runs} alternating run(s)", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"batch": [], "live": []}
    order = list(runs)
    for run in range(args.batch_runs):
        for via in order[run % 2:] + order[: run % 2]:
            m = batch_run(args, via)
            runs[via].append(m)
            extra = (f"; {len(m['creates'])} creates {m['creates']}, polls per batch {list(m['polls'].values())} in "
                     f"{m['rounds']} poll rounds of the client, "
                     f"results pages {list(m['pages'].values())}, most polls of one batch in {args.poll_s:g} s: "
                     f"{m['most_in_window']}, shortest gap {m['shortest_gap']:.3f} s") if via == "batch" else ""
            print(f"  run {run + 1} {via:5} {m['wall_s']:7.1f} s  {m['statuses']}  peak +{m['growth'] / 2**20:.1f} MB"
                  f"{' (hidden by an earlier peak)' if m['hidden'] else ''}, frame {m['frame_bytes'] / 2**20:.1f} MB, "
                  f"beyond the frame {m['beyond_per_row'] / 1024:.2f} KB/row{extra}", flush=True)

    def med(via: str, key: str) -> float:
        return float(statistics.median(m[key] for m in runs[via]))

    b_kb, l_kb = med("batch", "beyond_per_row") / 1024, med("live", "beyond_per_row") / 1024
    b_wall, l_wall = med("batch", "wall_s"), med("live", "wall_s")
    all_ok = all(m["statuses"] == {"ok": n} and m["same_order"] for ms in runs.values() for m in ms)
    most = max(m["most_in_window"] for m in runs["batch"])
    gap = min(m["shortest_gap"] for m in runs["batch"] if m["shortest_gap"] is not None)
    polls = [p for m in runs["batch"] for p in m["polls"].values()]
    per_round = max(max(m["polls"].values()) / m["rounds"] for m in runs["batch"]) if all(
        m["rounds"] for m in runs["batch"]) else float("nan")
    creates = runs["batch"][0]["creates"]
    print(f"  medians: peak RSS growth beyond the frame {b_kb:.2f} KB/row via batch, {l_kb:.2f} KB/row live "
          f"({b_kb / l_kb:.2f}x); frame {med('batch', 'frame_bytes') / n:.0f} B/row; wall {b_wall:.1f} s batch, "
          f"{l_wall:.1f} s live ({b_wall / l_wall:.2f}x); every row ok in input order: {all_ok}")
    print(f"  polling: {len(creates)} create calls of {creates}; polls per batch {min(polls)}-{max(polls)}, at most "
          f"{per_round:.2f} per batch per poll round of the client "
          f"(the fake needs {expected_polls}: 1 to start, {math.ceil(per_batch / args.per_poll)} to finish); the most "
          f"GET /batches/{{id}} of one batch in any {args.poll_s:g} s window: {most} (target <= 1); shortest gap "
          f"between two polls of one batch {gap:.3f} s")
    table.append((f"{n:,} short rows via='batch' in a fresh interpreter: peak RSS growth beyond the result frame",
                  f"{b_kb:.2f} KB/row (median of {args.batch_runs}; peak +{med('batch', 'growth') / 2**20:.0f} MB, frame "
                  f"{med('batch', 'frame_bytes') / 2**20:.1f} MB) vs live {l_kb:.2f} KB/row: {b_kb / l_kb:.2f}x",
                  "< 2 KB per row"))
    table.append((f"{n:,} rows via='batch', poll_s={args.poll_s:g}: polls of each batch",
                  f"at most {most} GET /batches/{{id}} per batch per {args.poll_s:g} s (shortest gap {gap:.2f} s), "
                  f"{per_round:.2f} per batch per poll round; "
                  f"{len(creates)} batches of {creates[0]:,}, {min(polls)}-{max(polls)} polls each (needed: "
                  f"{expected_polls})", "<= 1 per batch per poll"))
    if args.breakdown:
        breakdown(args)
    table.append((f"{n:,} rows: wall time via='batch' vs via='live' (concurrency {args.concurrency})",
                  f"{b_wall:.1f} s vs {l_wall:.1f} s ({b_wall / l_wall:.2f}x); every row ok: {all_ok}", "report"))


def breakdown(args: argparse.Namespace) -> None:
    """Where the batch path's Python memory goes (tracemalloc, in a fresh interpreter): what each phase keeps, and the
    most each passing phase adds over what was held when it began."""
    n = args.rows
    print(f"  where the memory goes: the same {n:,} rows via='batch' under tracemalloc, in another fresh interpreter "
          "(slower; Python's allocations only)", flush=True)
    with fake_server("--tokens", str(args.tokens)) as server, tempfile.TemporaryDirectory() as tmp:
        server.control(batches={"per_poll": args.per_poll})
        spec = {"url": server.url, "cache_dir": f"{tmp}/cache", "rows": n, "via": "batch", "poll_s": args.poll_s,
                "concurrency": args.concurrency, "warm": args.concurrency}
        out = subprocess.run([sys.executable, __file__, "--traced-child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the traced child failed ({out.returncode}):\n{out.stderr[-4000:]}")
    t = json.loads(out.stdout.strip().splitlines()[-1])
    marks = [(label, current, peak) for label, current, peak in t["marks"]]

    def kept(name: str) -> int:
        """What the calls of ``name`` left held (traced at its end minus at its start), summed."""
        return sum(marks[i + 1][1] - marks[i][1] for i in range(len(marks) - 1) if marks[i][0] == f"{name}>"
                   and marks[i + 1][0] == f"{name}<")

    def passing(name: str) -> int:
        """The most one call of ``name`` held over what was held when it began (whatever it calls included)."""
        most = 0
        for i, (label, current, _) in enumerate(marks):
            if label == f"{name}>":
                end = next(j for j in range(i + 1, len(marks)) if marks[j][0] == f"{name}<")
                most = max(most, max(peak for _, _, peak in marks[i + 1 : end + 1]) - current)
        return most

    peak = max(p for _, _, p in marks)
    before_jobs = next(current for label, current, _ in marks if label == "start_map>")
    kb = 1024 * n
    lines = [("the rows and their prompts (before the jobs)", before_jobs, "kept"),
             ("Session.start_map: a job per row (the live path makes the same)", kept("start_map"), "kept"),
             ("pending_rows: each row's custom id and batch body", kept("pending_rows"), "kept"),
             ("take_answers: the answered rows' results in their jobs", kept("take_answers"), "kept"),
             ("one poll of a batch (the last: an ended batch's object carries all its results)", passing("get_batch"), "passing"),
             ("one batch's results pages read into answers", passing("_answers"), "passing"),
             ("create_bodies: every create call's body, built at once", passing("create_bodies"), "passing")]
    for label, size, kind in lines:
        print(f"    {label:84} {size / 2**20:7.1f} MB  {size / kb:5.2f} KB/row  ({kind})")
    print(f"    traced peak {peak / 2**20:.1f} MB: {(peak - t['frame_bytes']) / kb:.2f} KB/row beyond the frame "
          f"({t['frame_bytes'] / 2**20:.1f} MB); {t['statuses']}")


# --- 3. Dask on two local workers ---------------------------------------------------------------------------------------


def compare_frames(pandas_frame: Any, dask_frame: Any) -> dict[str, Any]:
    """Rows equal (every column but ``_latency_s``, missing values equal), and whether index, columns, dtypes agree."""
    import pandas as pd

    a, b = pandas_frame.drop(columns="_latency_s"), dask_frame.drop(columns="_latency_s")
    same_shape = a.shape == b.shape and list(a.columns) == list(b.columns)
    equal = pd.Series(True, index=range(len(a)))
    if same_shape:
        for column in a.columns:
            x, y = a[column].reset_index(drop=True), b[column].reset_index(drop=True)
            equal &= ((x == y) | (x.isna() & y.isna())).fillna(False).astype(bool)
    dtypes = [c for c in pandas_frame.columns if c in dask_frame.columns and pandas_frame[c].dtype != dask_frame[c].dtype]
    per_run = {"rows", "rate_limited", "fewest_at_once"}  # one run's counts, which the Dask path leaves out
    attrs = sorted(k for k in (set(pandas_frame.attrs) | set(dask_frame.attrs)) - per_run
                   if pandas_frame.attrs.get(k) != dask_frame.attrs.get(k))
    return {"equal": int(equal.sum()) if same_shape else 0, "total": len(a),
            "index": list(pandas_frame.index) == list(dask_frame.index) and pandas_frame.index.name == dask_frame.index.name,
            "columns": list(pandas_frame.columns) == list(dask_frame.columns), "dtypes_differ": dtypes, "attrs_differ": attrs,
            "statuses": dict(Counter(dask_frame["_status"]))}


def dask_figure(args: argparse.Namespace, table: Table) -> None:
    import dask.dataframe as dd
    from dask.distributed import Client, LocalCluster

    from granite_magic._api import map as granite_map

    n, c = args.dask_rows, args.dask_concurrency
    print(f"\n3. dask: {n:,} rows in {args.partitions} partitions on a LocalCluster of 2 worker processes (1 thread each) "
          f"vs the pandas map in this process, concurrency {c} per map call, {args.runs} alternating runs", flush=True)
    with fake_server("--tokens", str(args.tokens)) as server, tempfile.TemporaryDirectory() as tmp:
        point_at(server.url, f"{tmp}/warm")  # before the workers start: they inherit the API key
        started = time.perf_counter()
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,  # type: ignore[no-untyped-call]
                          dashboard_address=":0") as cluster, Client(cluster) as client:  # type: ignore[no-untyped-call]
            cluster_s = time.perf_counter() - started
            frame = rows_frame(n)
            ddf = dd.from_pandas(frame, npartitions=args.partitions)  # type: ignore[no-untyped-call]
            warm = rows_frame(2 * c, offset=10**9)
            warm_ddf = dd.from_pandas(warm, npartitions=2)  # type: ignore[no-untyped-call]
            granite_map(warm_ddf, PROMPT, concurrency=c, **DETERMINISTIC).compute()  # the workers' imports
            granite_map(warm, PROMPT, concurrency=c, **DETERMINISTIC)

            def pandas_run(run: int) -> tuple[float, Any]:
                os.environ["GRANITE_CACHE_DIR"] = f"{tmp}/pandas{run}"
                return _timed(lambda: granite_map(frame, PROMPT, concurrency=c, **DETERMINISTIC))

            def dask_run(run: int) -> tuple[float, Any]:
                os.environ["GRANITE_CACHE_DIR"] = f"{tmp}/dask{run}"
                return _timed(lambda: granite_map(ddf, PROMPT, concurrency=c, **DETERMINISTIC).compute())

            walls: dict[str, list[float]] = {"pandas": [], "dask": []}
            checks = []
            for run in range(args.runs):
                got: dict[str, Any] = {}
                for name in (["pandas", "dask"] if run % 2 == 0 else ["dask", "pandas"]):
                    wall, got[name] = (pandas_run if name == "pandas" else dask_run)(run)
                    walls[name].append(wall)
                check = compare_frames(got["pandas"], got["dask"])
                checks.append(check)
                print(f"  run {run + 1}: pandas {walls['pandas'][-1]:.2f} s, dask {walls['dask'][-1]:.2f} s; rows equal "
                      f"{check['equal']}/{check['total']}, index {check['index']}, columns {check['columns']}, dtypes "
                      f"differ: {check['dtypes_differ'] or 'none'}, attrs differ: {check['attrs_differ'] or 'none'}; dask {check['statuses']}, pandas "
                      f"{dict(Counter(got['pandas']['_status']))}", flush=True)
            workers = len(client.scheduler_info()["workers"])
    p_wall, d_wall = statistics.median(walls["pandas"]), statistics.median(walls["dask"])
    equal = min(check["equal"] for check in checks)
    alike = all(check["index"] and check["columns"] and not check["dtypes_differ"] and not check["attrs_differ"]
                for check in checks)
    print(f"  medians: pandas {p_wall:.2f} s, dask {d_wall:.2f} s ({d_wall / p_wall:.2f}x); the cluster ({workers} "
          f"workers) started in {cluster_s:.1f} s; rows equal in every run: {equal}/{n}; index, columns, dtypes and "
          f"attrs alike: {alike}")
    table.append((f"{n:,} rows in {args.partitions} partitions on 2 local Dask workers vs the pandas map",
                  f"{equal:,}/{n:,} rows equal (ignoring _latency_s; index, columns, dtypes, attrs alike: {alike}); "
                  f"{d_wall:.1f} s vs {p_wall:.1f} s pandas ({d_wall / p_wall:.2f}x; cluster start {cluster_s:.1f} s)",
                  "every row equal"))


def _timed(run: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


# --- main ------------------------------------------------------------------------------------------------------------------


FIGURES: dict[str, Callable[[argparse.Namespace, Table], None]] = {"resume": resume, "batch": batch, "dask": dask_figure}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--figures", default=",".join(FIGURES), help="which to run, comma-separated: " + ", ".join(FIGURES))
    parser.add_argument("--resume-rows", type=int, default=2000)
    parser.add_argument("--resume-per-poll", type=int, default=100, help="resume: requests the fake finishes a poll")
    parser.add_argument("--rows", type=int, default=10000,
                        help="batch: rows (the issue: 20,000, whose live baseline takes about 20 minutes here)")
    parser.add_argument("--per-poll", type=int, default=1000, help="batch: requests of a batch the fake finishes a poll")
    parser.add_argument("--poll-s", type=float, default=0.2, help="map's poll_s (resume's second child, batch)")
    parser.add_argument("--concurrency", type=int, default=64, help="batch: the live baseline's concurrency")
    parser.add_argument("--batch-runs", type=int, default=1,
                        help="batch: alternating runs of each (a live run of 20,000 rows takes minutes here)")
    parser.add_argument("--breakdown", action="store_true",
                        help="batch: also where the batch path's memory goes (tracemalloc, one more run)")
    parser.add_argument("--runs", type=int, default=3, help="dask: alternating runs")
    parser.add_argument("--dask-rows", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--dask-concurrency", type=int, default=16, help="dask: rows in flight per map call")
    parser.add_argument("--tokens", type=int, default=4, help="reply length in tokens")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--traced-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        map_child(json.loads(args.child))
        return
    if args.traced_child is not None:
        traced_child(json.loads(args.traced_child))
        return
    chosen = [name.strip() for name in args.figures.split(",") if name.strip()]
    unknown = set(chosen) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures {sorted(unknown)}: choose from {', '.join(FIGURES)}")
    table: Table = []
    for name in chosen:
        started = time.perf_counter()
        FIGURES[name](args, table)
        print(f"  ({name}: {time.perf_counter() - started:.0f} s)", flush=True)
    print("\n| figure | measured | target |\n|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
