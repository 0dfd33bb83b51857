"""One prompt over every row (``granite_magic.map``): rows per second, rate limits, resuming, memory.

Every figure runs against the local fake server in its own process (so its CPU is not the client's), a fresh server
per figure (its queue of pushed scenarios cannot be emptied from outside), with short rows and short replies.

1. ``throughput``: ``--rows`` rows at ``--concurrency``, taking turns run by run (``--runs``; medians):
   - a bare fan-out: ``httpx.AsyncClient()`` (httpx's default pool: 20 connections kept alive) and
     ``asyncio.Semaphore(C)``, a streaming POST to ``/chat/completions`` with the very bodies map sends, each stream
     read to the end, its ``data:`` lines parsed and the reply's text joined; a request the server's small accept
     backlog (5) drops while connections open is sent again after 10 ms, 20 ms, ... (counted: "re-sent");
   - the same with a pool of C kept-alive connections (what a tuned fan-out would do);
   - ``map`` as shipped: every row recorded to the cache (``auto``: appended to the kernel's pack), in a fresh
     temporary ``GRANITE_CACHE_DIR`` each run;
   - ``map`` without the cache: ``map`` has no switch for that (it turns the cache on when the session's is off), so
     this is map's own path with the turn's cache set to ``"off"`` (``_prepare_rows``, ``Session.start_map``,
     ``finish_map``).
   Rows per second, client CPU per row (``time.process_time``: every thread of this process), the server's CPU per
   row (``/proc/PID/stat``) and the connections it saw (distinct client ports).
2. ``limited``: ``--limited-rows`` rows while the server answers every 5th request it gets (20%) with 429 and
   ``Retry-After: --retry-after``.  Failed rows (target 0) and the wall time against two references: the same rows
   without 429s in the same run (T0), and the time the server's answers imply for a client that honours every
   Retry-After: each refused request waits its Retry-After and is sent again while the other slots go on, so
   ``implied = T0 + refusals x Retry-After / concurrency`` (the refusals are counted at the server: requests // 5).
   Target: wall <= 1.5 x implied.  For scale, ``refusals x Retry-After`` is the time if every refusal paused
   everything, one after the other.
3. ``resume``: ``--resume-rows`` rows (the server waits 50 ms before each reply); SIGINT from a timer thread once the
   server has seen half as many requests (``map`` returns the rows finished so far), then the same call again:
   rows finished in the first run that the server sees again (target 0), counted from the request bodies.
4. ``memory``: ``--memory-rows`` short rows in a fresh interpreter (a child process, like a kernel): peak RSS growth
   during ``map`` (``ru_maxrss`` after, minus the RSS before) beyond the result frame's own
   ``memory_usage(deep=True)``, per row (target < 2 KB), and what stays after the call.  Then the progress view
   (``map`` itself shows none): the same number of rows through ``%%granite --over`` in another fresh interpreter
   with the notebook's widget view (``RowsView``; ``live = "widget"``, as in a kernel), every change of its
   ``outputs`` (one comm message to the front end each) timed: changes a second on average and in the busiest second
   (target <= 10 a second).  ``--no-view`` skips it.

    python benchmarks/bench_map.py [--figures throughput,limited,resume,memory] [--rows 2000] [--concurrency 64]
                                   [--runs 3] [--limited-rows 200] [--retry-after 1] [--resume-rows 400]
                                   [--memory-rows 5000] [--tracemalloc] [--no-view] [--tokens 8]

The issue's sizes are 10,000 rows (throughput), 1,000 (limited), 1,000 (resume), 100,000 (memory).  On 2 shared
cores ``--rows 10000 --runs 3`` takes about 12 minutes and ``--memory-rows 100000`` about 15 (a map's time now grows
with its rows; it took 49 minutes for the throughput figure when every waiting row was woken each time a row ended).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

PROMPT = "Classify the sentiment of this review in one word: {text}"
MEMORY_PROMPT = "Echo {text}"
REFUSE_EVERY = 5  # every 5th request refused: 20%


# --- the server, in its own process ---------------------------------------------------------------------------------


@dataclass
class Server:
    url: str  # the API's base URL (.../api/v1)
    pid: int

    @property
    def root(self) -> str:
        return self.url.rsplit("/api/v1", 1)[0]

    def control(self, **body: Any) -> None:
        httpx.post(self.root + "/_control", json=body, timeout=30).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        """Every request it received since its list was last cleared (method, path, body, client port, arrival)."""
        seen: list[dict[str, Any]] = httpx.get(self.root + "/_requests", timeout=120).json()["requests"]
        return seen

    def batches(self) -> dict[str, Any]:
        """``GET /_batches``: the batches, the custom ids of each create call, polls per batch, results pages."""
        counters: dict[str, Any] = httpx.get(self.root + "/_batches", timeout=60).json()
        return counters

    def chat_requests(self) -> list[dict[str, Any]]:
        """Every generation request it received since its list was last cleared (bodies, client ports)."""
        return [r for r in self.requests() if r["method"] == "POST" and r["path"].rstrip("/").endswith("/chat/completions")]

    def cpu_s(self) -> float:
        """User + system CPU seconds the server process has used."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def fake_server(*args: str) -> Iterator[Server]:
    process = subprocess.Popen([sys.executable, "-m", "granite_magic.testing", "--port", "0", *args],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield Server(process.stdout.readline().strip(), process.pid)
    finally:
        process.terminate()
        process.wait()


def point_at(server: Server, cache_dir: str) -> None:
    """What the Python API reads from the environment on each call."""
    os.environ["GRANITE_BASE_URL"] = server.url
    os.environ["OPENROUTER_API_KEY"] = "bench"
    os.environ["GRANITE_CACHE_DIR"] = cache_dir


def rows_frame(n: int, offset: int = 0) -> Any:
    import pandas as pd

    kinds = ("great value", "broke after a week", "does what it says", "arrived late", "would buy again")
    return pd.DataFrame({"text": [f"#{offset + i}: {kinds[i % len(kinds)]}" for i in range(n)]})


def prompts_of(frame: Any, prompt: str = PROMPT) -> list[str]:
    return [prompt.format(text=text) for text in frame["text"]]


def sent_prompt(request: dict[str, Any]) -> str | None:
    """The row's prompt a request carried (None: its body never arrived, the client gave up after the headers)."""
    messages = (request["body"] or {}).get("messages")
    return messages[-1]["content"] if messages else None


# --- the contenders ----------------------------------------------------------------------------------------------------


def run_map(frame: Any, concurrency: int, cache_dir: str) -> Any:
    # granite_magic.map itself (the package resolves its public names lazily, so mypy sees them only from here)
    from granite_magic._api import map as granite_map

    os.environ["GRANITE_CACHE_DIR"] = cache_dir
    return granite_map(frame, PROMPT, concurrency=concurrency)


def run_map_uncached(frame: Any, concurrency: int) -> Any:
    """``map``'s own path, but the turn's cache "off" (map itself has no switch for it)."""
    from granite_magic._api import _prepare_rows
    from granite_magic._session import QuietGrid

    session, turn, rows, prompts = _prepare_rows(frame, PROMPT, None, "auto", None, None, concurrency, {})
    job = session.start_map(replace(turn, cache="off"), prompts, concurrency=concurrency)
    job.loop.run(job.stream(QuietGrid()))
    return session.finish_map(job, rows)


class BareFanOut:
    """httpx + asyncio: a semaphore, one streaming POST per row, each stream read to the end and its text joined."""

    def __init__(self, url: str, pool: int | None = None) -> None:
        self.url = url + "/chat/completions"
        self.loop = asyncio.new_event_loop()
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool) if pool else httpx.Limits(
            max_connections=100, max_keepalive_connections=20)  # httpx's defaults, spelled out
        self.http = httpx.AsyncClient(timeout=60, limits=limits)
        self.resent = 0  # requests dropped by the server's accept backlog and sent again

    async def _one(self, gate: asyncio.Semaphore, body: dict[str, Any]) -> str:
        async with gate:
            for attempt in range(10):
                try:
                    parts: list[str] = []
                    async with self.http.stream("POST", self.url, json=body) as response:
                        assert response.status_code == 200, response.status_code
                        async for line in response.aiter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            for choice in json.loads(line[6:]).get("choices") or ():
                                content = choice["delta"].get("content")
                                if content:
                                    parts.append(content)
                    return "".join(parts)
                except httpx.TransportError:
                    if attempt == 9:
                        raise
                    self.resent += 1
                    await asyncio.sleep(0.01 * 2**attempt)  # the server's accept backlog is full: a moment
            raise AssertionError("unreachable")

    def run(self, bodies: list[dict[str, Any]], concurrency: int) -> list[str]:
        async def fan_out() -> list[str]:
            gate = asyncio.Semaphore(concurrency)
            return await asyncio.gather(*(self._one(gate, body) for body in bodies))

        return self.loop.run_until_complete(fan_out())

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()


# --- 1. throughput -------------------------------------------------------------------------------------------------------


@dataclass
class Measure:
    wall_s: float
    cpu_s: float
    server_cpu_s: float
    done: int
    connections: int
    resent: int = 0


def measured(server: Server, rows: int, run: Callable[[], int], resent: Callable[[], int] = lambda: 0) -> Measure:
    server.control(clear_requests=True)
    gc.collect()
    before_resent = resent()
    server_cpu, cpu, started = server.cpu_s(), time.process_time(), time.perf_counter()
    done = run()
    wall, cpu, server_cpu = time.perf_counter() - started, time.process_time() - cpu, server.cpu_s() - server_cpu
    requests = server.chat_requests()
    assert done == rows, f"{done} of {rows} rows done"
    return Measure(wall, cpu, server_cpu, done, len({r["client_port"] for r in requests}), resent() - before_resent)


def throughput(args: argparse.Namespace, table: list[tuple[str, str, str]]) -> None:
    print(f"\n1. throughput: {args.rows:,} rows at concurrency {args.concurrency}, {args.runs} alternating runs, "
          f"{args.tokens}-token replies", flush=True)
    with fake_server("--tokens", str(args.tokens)) as server, tempfile.TemporaryDirectory() as tmp:
        point_at(server, tmp)
        warm = rows_frame(args.concurrency, offset=10**9)
        server.control(clear_requests=True)
        run_map(warm, args.concurrency, f"{tmp}/warm")  # imports, the client, its connections
        run_map_uncached(warm, args.concurrency)
        template = server.chat_requests()[0]["body"]  # what map sends for a row, to send the same from the bare fan-out
        frame = rows_frame(args.rows)
        bodies = [{**template, "messages": [{"role": "user", "content": p}]} for p in prompts_of(frame)]
        bare, tuned = BareFanOut(server.url), BareFanOut(server.url, pool=args.concurrency)
        bare.run(bodies[: args.concurrency], args.concurrency)
        tuned.run(bodies[: args.concurrency], args.concurrency)

        def ok(result: Any) -> int:
            return int(result["_status"].isin(["ok", "repaired"]).sum())

        contenders: dict[str, Callable[[int], Measure]] = {
            "bare httpx fan-out": lambda run: measured(server, args.rows, lambda: sum(1 for t in bare.run(bodies, args.concurrency) if t),
                                                       lambda: bare.resent),
            f"bare, pool of {args.concurrency}": lambda run: measured(server, args.rows,
                                                                      lambda: sum(1 for t in tuned.run(bodies, args.concurrency) if t),
                                                                      lambda: tuned.resent),
            "map (cache on, default)": lambda run: measured(server, args.rows,
                                                            lambda: ok(run_map(frame, args.concurrency, f"{tmp}/run{run}"))),
            "map (cache off)": lambda run: measured(server, args.rows, lambda: ok(run_map_uncached(frame, args.concurrency))),
        }
        results: dict[str, list[Measure]] = {name: [] for name in contenders}
        names = list(contenders)
        for run in range(args.runs):
            for name in names[run % len(names):] + names[: run % len(names)]:  # a different one goes first each run
                results[name].append(contenders[name](run))
                m = results[name][-1]
                print(f"  run {run + 1} {name:26} {m.wall_s:8.2f} s  {m.done / m.wall_s:8.1f} rows/s  "
                      f"CPU {m.cpu_s:7.2f} s  server CPU {m.server_cpu_s:6.2f} s  connections {m.connections}", flush=True)
        bare.close()
        tuned.close()

    def med(name: str, get: Callable[[Measure], float]) -> float:
        return statistics.median(get(m) for m in results[name])

    print(f"{'':28}{'rows/s':>10}{'wall s':>10}{'CPU ms/row':>12}{'server CPU ms/row':>19}{'connections':>13}{'re-sent':>9}")
    for name in names:
        print(f"{name:28}{med(name, lambda m: m.done / m.wall_s):>10.1f}{med(name, lambda m: m.wall_s):>10.2f}"
              f"{med(name, lambda m: m.cpu_s / m.done * 1e3):>12.3f}{med(name, lambda m: m.server_cpu_s / m.done * 1e3):>19.3f}"
              f"{med(name, lambda m: m.connections):>13.0f}{med(name, lambda m: m.resent):>9.0f}")
    base = "bare httpx fan-out"
    rate = {name: med(name, lambda m: m.done / m.wall_s) for name in names}
    cpu = {name: med(name, lambda m: m.cpu_s / m.done * 1e3) for name in names}
    for name in names[2:]:
        print(f"{name} / bare: {rate[name] / rate[base]:.2f}x rows/s (target >= 0.7x), "
              f"{cpu[name] / cpu[base]:.1f}x CPU per row")
        table.append((f"{args.rows:,} rows at concurrency {args.concurrency}: {name} vs bare httpx fan-out",
                      f"{rate[name]:,.0f} vs {rate[base]:,.0f} rows/s: {rate[name] / rate[base]:.2f}x; "
                      f"client CPU {cpu[name]:.2f} vs {cpu[base]:.2f} ms/row", ">= 0.7x"))


# --- 2. rate limited -------------------------------------------------------------------------------------------------------


def limited(args: argparse.Namespace, table: list[tuple[str, str, str]]) -> None:
    n, c, wait = args.limited_rows, args.concurrency, float(args.retry_after)
    print(f"\n2. rate limited: {n:,} rows at concurrency {c}, every {REFUSE_EVERY}th request refused "
          f"(429, Retry-After: {args.retry_after})", flush=True)
    with fake_server("--tokens", str(args.tokens)) as server, tempfile.TemporaryDirectory() as tmp:
        point_at(server, tmp)
        run_map(rows_frame(c, offset=10**9), c, f"{tmp}/warm")
        frame = rows_frame(n)
        server.control(clear_requests=True)
        started = time.perf_counter()
        free = run_map(frame, c, f"{tmp}/free")
        t0 = time.perf_counter() - started
        assert (free["_status"] == "ok").all()
        # Enough scenarios for every retry: each refused request comes back once more.
        pattern = [{"status": 429, "retry_after": args.retry_after} if i % REFUSE_EVERY == REFUSE_EVERY - 1
                   else {"tokens": args.tokens} for i in range(2 * n + 100)]
        server.control(clear_requests=True, push=pattern)
        started = time.perf_counter()
        result = run_map(rows_frame(n, offset=n), c, f"{tmp}/limited")  # other rows: nothing is cached
        wall = time.perf_counter() - started
        sent = len(server.chat_requests())
    refused = sent // REFUSE_EVERY
    failed = int((~result["_status"].isin(["ok", "repaired"])).sum())
    implied = t0 + refused * wait / c
    print(f"  failed rows: {failed} of {n}  ({dict(Counter(result['_status']))})")
    print(f"  requests {sent}, refused {refused}; the gate: {result.attrs['rate_limited']} slow-downs, "
          f"fewest at once {result.attrs['fewest_at_once']}")
    print(f"  wall {wall:.2f} s; without 429s {t0:.2f} s; implied by the server's answers {implied:.2f} s "
          f"(T0 + {refused} x {wait:g} s / {c}): {wall / implied:.1f}x (target <= 1.5x); every refusal pausing everything in turn: "
          f"{refused * wait:.0f} s")
    table.append((f"{n:,} rows at concurrency {c}, 20% answered 429 with Retry-After: {args.retry_after}",
                  f"{failed} failed rows; {wall:.1f} s wall vs {implied:.1f} s implied ({wall / implied:.1f}x; "
                  f"without 429s {t0:.1f} s); {refused} refusals, the gate fell to {result.attrs['fewest_at_once']} at once",
                  "0 failed; wall <= 1.5x implied"))


# --- 3. interrupted and run again ------------------------------------------------------------------------------------------


def resume(args: argparse.Namespace, table: list[tuple[str, str, str]]) -> None:
    n, c = args.resume_rows, args.concurrency
    print(f"\n3. resume: {n:,} rows at concurrency {c}, SIGINT once the server has seen {n // 2} requests, then again",
          flush=True)
    with fake_server("--tokens", str(args.tokens), "--ttft", "0.05") as server, tempfile.TemporaryDirectory() as tmp:
        point_at(server, tmp)
        run_map(rows_frame(c, offset=10**9), c, f"{tmp}/rows")
        frame = rows_frame(n)
        prompts = prompts_of(frame)
        server.control(clear_requests=True)
        stop, fired = threading.Event(), []

        def interrupt_at_half() -> None:
            while not stop.is_set():
                if len(server.chat_requests()) >= n // 2:
                    fired.append(time.perf_counter())
                    os.kill(os.getpid(), signal.SIGINT)
                    return
                time.sleep(0.05)

        timer = threading.Thread(target=interrupt_at_half, daemon=True)
        timer.start()
        try:
            first = run_map(frame, c, f"{tmp}/rows")
        except KeyboardInterrupt:
            raise SystemExit("the interrupt reached the caller: map did not return the partial frame") from None
        returned = time.perf_counter()
        stop.set()
        timer.join()
        assert fired, "the run ended before the interrupt"
        first_requests = server.chat_requests()
        server.control(clear_requests=True)
        second = run_map(frame, c, f"{tmp}/rows")
        second_requests = server.chat_requests()
    finished = {p for p, s in zip(prompts, first["_status"], strict=True) if s in ("ok", "repaired")}
    served = {sent_prompt(r) for r in first_requests if not r["disconnected"]} - {None}  # it sent the whole reply
    again = Counter(p for p in map(sent_prompt, second_requests) if p is not None)
    bodiless = sum(1 for r in first_requests if sent_prompt(r) is None)
    resent = len(finished & set(again))
    print(f"  first run: {len(first_requests)} requests ({bodiless} cut off before their body), {len(finished)} rows finished "
          f"({dict(Counter(first['_status']))}); map returned {returned - fired[0]:.2f} s after the SIGINT")
    print(f"  second run: {len(second_requests)} requests ({dict(Counter(second['_status']))})")
    print(f"  finished rows sent again: {resent} (target 0); rows the server had answered whole but the first frame "
          f"did not count finished, sent again: {len((served - finished) & set(again))}; rows sent twice in the "
          f"second run: {sum(1 for k in again.values() if k > 1)}")
    table.append((f"{n:,} rows interrupted (SIGINT) after {n // 2} requests, then run again",
                  f"{resent} of {len(finished)} finished rows re-sent; the rerun sent {len(second_requests)} requests "
                  f"for the {n - len(finished)} others", "0 re-sent"))


# --- 4. memory -------------------------------------------------------------------------------------------------------------


def current_rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KB on Linux


def memory_child(n: int, url: str, concurrency: int, traced: bool) -> None:
    """In a fresh interpreter: one warm-up map, then ``n`` short rows; the figures as JSON on stdout.  ``traced``: with
    tracemalloc on during the call (Python's own allocations, without the allocator's slack; about 2x slower)."""
    import tracemalloc

    from granite_magic._api import map as granite_map

    os.environ["GRANITE_BASE_URL"] = url
    os.environ["OPENROUTER_API_KEY"] = "bench"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GRANITE_CACHE_DIR"] = tmp
        granite_map(rows_frame(concurrency, offset=10**9), MEMORY_PROMPT, concurrency=concurrency)
        import pandas as pd

        frame = pd.DataFrame({"text": [f"r{i}" for i in range(n)]})  # short rows
        gc.collect()
        rss_before, peak_before = current_rss(), peak_rss()
        if traced:
            tracemalloc.start()
        started = time.perf_counter()
        result = granite_map(frame, MEMORY_PROMPT, concurrency=concurrency)
        wall = time.perf_counter() - started
        peak_after = peak_rss()
        gc.collect()
        rss_after = current_rss()
        traced_now, traced_peak = tracemalloc.get_traced_memory() if traced else (None, None)
        print(json.dumps({"traced_peak": traced_peak, "traced_after": traced_now, "rows": n, "wall_s": wall, "rss_before": rss_before, "peak_before": peak_before,
                          "peak_after": peak_after, "rss_after": rss_after,
                          "frame_bytes": int(result.memory_usage(deep=True).sum()),
                          "statuses": dict(Counter(result["_status"]))}))


def view_child(n: int, url: str, concurrency: int) -> None:
    """In a fresh interpreter: ``n`` short rows through ``%%granite --over`` with the notebook's progress view (the
    ``RowsView`` widget, as in a kernel), every change of its ``outputs`` (one comm message to the front end each)
    timed; the figures as JSON on stdout."""
    import pandas as pd
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    from granite_magic._magic import GraniteMagics
    from granite_magic._rowsview import RowsView

    stamps: list[float] = []  # when the widget's outputs changed
    views: list[RowsView] = []
    made = RowsView.__init__

    def counted(self: RowsView, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        views.append(self)
        self.widget.observe(lambda change: stamps.append(time.monotonic()), names="outputs")

    RowsView.__init__ = counted  # type: ignore[method-assign]
    os.environ["GRANITE_BASE_URL"] = url
    os.environ["OPENROUTER_API_KEY"] = "bench"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GRANITE_CACHE_DIR"] = tmp
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "granite_magic")
        magics = next(m for m in shell.configurables if isinstance(m, GraniteMagics))
        magics.live = "widget"
        cell = MEMORY_PROMPT.replace("{text}", "{item}")
        shell.user_ns["warm"] = [f"w{i}" for i in range(concurrency)]
        with capture_output():
            shell.run_cell_magic("granite", f"--over warm --concurrency {concurrency}", cell)  # type: ignore[no-untyped-call]
        shell.user_ns["rows"] = pd.DataFrame({"item": [f"v{i}" for i in range(n)]})  # short rows, none cached
        stamps.clear()
        rss_before = current_rss()
        started = time.monotonic()
        with capture_output():
            shell.run_cell_magic("granite", f"--over rows --concurrency {concurrency} -o out", cell)  # type: ignore[no-untyped-call]
        wall = time.monotonic() - started
        out = shell.user_ns["out"]
        live = [t - started for t in stamps]
        busiest, first = 0, 0  # the most changes in any one second of the run
        for last, at in enumerate(live):
            while at - live[first] >= 1.0:
                first += 1
            busiest = max(busiest, last - first + 1)
        print(json.dumps({"rows": n, "wall_s": wall, "changes": len(live), "refreshes": views[-1].updates,
                          "busiest_second": busiest, "rate_setting": 1 / views[-1].interval,
                          "peak_after": peak_rss(), "rss_before": rss_before,
                          "frame_bytes": int(out.memory_usage(deep=True).sum()),
                          "statuses": dict(Counter(out["_status"]))}))


def memory(args: argparse.Namespace, table: list[tuple[str, str, str]]) -> None:
    n = args.memory_rows
    print(f"\n4. memory: {n:,} short rows at concurrency {args.concurrency} in a fresh interpreter", flush=True)
    with fake_server("--tokens", "4") as server:
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--url", server.url,
                              "--concurrency", str(args.concurrency), *(["--tracemalloc"] if args.tracemalloc else [])],
                             capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    growth = m["peak_after"] - m["rss_before"]
    beyond = (growth - m["frame_bytes"]) / n
    kept = (m["rss_after"] - m["rss_before"] - m["frame_bytes"]) / n
    hidden = " (the peak before the call was higher: growth is at most this)" if m["peak_after"] == m["peak_before"] else ""
    print(f"  {m['statuses']} in {m['wall_s']:.1f} s ({n / m['wall_s']:.0f} rows/s)")
    print(f"  RSS before {m['rss_before'] / 2**20:.1f} MB, peak {m['peak_after'] / 2**20:.1f} MB{hidden}, "
          f"after {m['rss_after'] / 2**20:.1f} MB; the result frame {m['frame_bytes'] / 2**20:.1f} MB "
          f"({m['frame_bytes'] / n:.0f} B/row)")
    print(f"  peak growth beyond the frame: {beyond / 1024:.2f} KB per row (target < 2 KB); "
          f"kept after the call beyond the frame: {kept / 1024:.2f} KB per row")
    if m["traced_peak"] is not None:  # Python's allocations, counted from the start of the call (the frame among them)
        print("  (the RSS figures above include tracemalloc's own bookkeeping)")
        print(f"  tracemalloc: peak {(m['traced_peak'] - m['frame_bytes']) / n / 1024:.2f} KB per row beyond the frame, "
              f"still allocated after the call {(m['traced_after'] - m['frame_bytes']) / n / 1024:.2f} KB per row")
    table.append((f"{n:,} short rows in a fresh interpreter: peak RSS growth beyond the result frame",
                  f"{beyond / 1024:.2f} KB per row (peak +{growth / 2**20:.0f} MB, frame {m['frame_bytes'] / 2**20:.1f} MB); "
                  f"{kept / 1024:.2f} KB per row kept after; {m['wall_s']:.0f} s", "< 2 KB per row"))
    if args.no_view:
        return
    print(f"  the progress view: {n:,} short rows through %%granite --over (the widget view, as in a kernel), "
          "in a fresh interpreter", flush=True)
    with fake_server("--tokens", "4") as server:
        out = subprocess.run([sys.executable, __file__, "--view-child", str(n), "--url", server.url,
                              "--concurrency", str(args.concurrency)], capture_output=True, text=True, check=True)
    v = json.loads(out.stdout.strip().splitlines()[-1])
    per_s = v["changes"] / v["wall_s"]
    view_beyond = (v["peak_after"] - v["rss_before"] - v["frame_bytes"]) / n
    print(f"  {v['statuses']} in {v['wall_s']:.1f} s ({n / v['wall_s']:.0f} rows/s)")
    print(f"  the widget changed {v['changes']} times ({v['refreshes']} refreshes): {per_s:.1f} a second on average, "
          f"{v['busiest_second']} in the busiest second (target <= 10 a second; its rate setting: {v['rate_setting']:g})")
    print(f"  peak RSS growth beyond the frame, through the cell: {view_beyond / 1024:.2f} KB per row "
          "(in the same interpreter as its warm-up cell; the frame includes the input's column)")
    table.append((f"{n:,} short rows through %%granite --over: the progress view's updates",
                  f"{per_s:.1f} a second on average ({v['changes']} in {v['wall_s']:.0f} s), {v['busiest_second']} in "
                  f"the busiest second", "<= 10 a second"))


# --- main ------------------------------------------------------------------------------------------------------------------


FIGURES: dict[str, Callable[[argparse.Namespace, list[tuple[str, str, str]]], None]] = {
    "throughput": throughput, "limited": limited, "resume": resume, "memory": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--figures", default=",".join(FIGURES), help="which to run, comma-separated: " + ", ".join(FIGURES))
    parser.add_argument("--rows", type=int, default=2000, help="throughput rows (the issue: 10,000)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3, help="alternating throughput runs")
    parser.add_argument("--tokens", type=int, default=8, help="reply length in tokens")
    parser.add_argument("--limited-rows", type=int, default=200, help="rows under 429s (the issue: 1,000)")
    parser.add_argument("--retry-after", default="1", help="the 429s' Retry-After, in seconds")
    parser.add_argument("--resume-rows", type=int, default=400)
    parser.add_argument("--memory-rows", type=int, default=5000, help="the issue: 100,000")
    parser.add_argument("--tracemalloc", action="store_true", help="memory: also trace Python's allocations (slower)")
    parser.add_argument("--no-view", action="store_true", help="memory: skip the progress view's run")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--view-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.url, args.concurrency, args.tracemalloc)
        return
    if args.view_child is not None:
        view_child(args.view_child, args.url, args.concurrency)
        return
    chosen = [name.strip() for name in args.figures.split(",") if name.strip()]
    unknown = set(chosen) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures {sorted(unknown)}: choose from {', '.join(FIGURES)}")
    table: list[tuple[str, str, str]] = []
    for name in chosen:
        FIGURES[name](args, table)
    print("\n| figure | measured | target |\n|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
