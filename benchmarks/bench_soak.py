"""Soak: many `%%granite` cells in one real Jupyter kernel, and what the kernel keeps.

A kernel (jupyter_client, as a notebook front end starts it) runs a warm-up,
then N cells of `%%granite --seed i --max-tokens 20` against the local fake
server (its own process).  The kernel has a `kernel`, so the magic streams
into widgets exactly as in a notebook.  After the warm-up and after the N
cells we read, inside the kernel after a `gc.collect()`, the live ipywidgets
and Python threads, then from outside (psutil) the kernel process's RSS and
open file descriptors.  Targets: RSS grows < 2 MB per 1,000 cells; widgets,
threads and descriptors stay constant.  Every cell is checked for an error,
stderr output (`granite: ...`) and a missing final reply.  The exit code is 0
whatever the figures: this is a benchmark, not a test.

    python benchmarks/bench_soak.py [--cells 1000] [--warmup 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter
from typing import Any

import psutil
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

try:
    from ._server import fake_server
except ImportError:
    from _server import fake_server  # type: ignore[no-redef]

CELL = "%%granite --seed {seed} --max-tokens 20\nSay something"

# Defined once in the kernel; each sample is one call that leaves nothing else in the namespace.
SAMPLER = """\
def _soak_sample():
    import collections, gc, json, os, sys, threading
    from ipywidgets.widgets import widget
    gc.collect()
    live = getattr(widget, "_instances", None)  # ipywidgets >= 8.1
    live = widget.Widget.widgets if live is None else live  # 8.0
    print(json.dumps({"pid": os.getpid(), "python": sys.executable, "threads": threading.active_count(),
                      "widgets": dict(collections.Counter(type(w).__name__ for w in list(live.values())))}))
"""


class Cell:
    """What one execute request produced, read off iopub up to its `idle` and its shell reply."""

    def __init__(self, kc: BlockingKernelClient, code: str, timeout: float = 60) -> None:
        start = time.perf_counter()
        msg_id = kc.execute(code)
        self.stdout = ""
        self.problems: list[str] = []
        self.replied = False  # the final reply (with its granite_magic metadata) reached the front end
        while True:
            msg = kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue  # a message of an earlier cell, or of none
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                break
            if kind == "stream" and content["name"] == "stdout":
                self.stdout += content["text"]
            elif kind == "stream":
                self.problems.append(f"stderr: {content['text'].strip()}")
            elif kind == "error":
                self.problems.append(f"{content['ename']}: {content['evalue']}")
            elif kind in ("display_data", "update_display_data") and "granite_magic" in content.get("metadata", {}):
                self.replied = True
        self.seconds = time.perf_counter() - start
        while (reply := kc.get_shell_msg(timeout=timeout))["parent_header"].get("msg_id") != msg_id:
            pass
        if reply["content"]["status"] != "ok":
            self.problems.append(f"execute_reply status {reply['content']['status']}")


def sample(kc: BlockingKernelClient) -> dict[str, Any]:
    cell = Cell(kc, "_soak_sample()")
    if cell.problems:
        raise RuntimeError(f"sampling failed: {cell.problems}")
    state: dict[str, Any] = json.loads(cell.stdout)
    kernel = psutil.Process(state["pid"])  # read from outside, with the kernel idle again
    state["rss_mb"] = kernel.memory_info().rss / 2**20
    state["fds"] = kernel.num_fds()  # counted inside (/proc/self/fd) it jitters by one with the kernel busy
    state["widget_count"] = sum(state["widgets"].values())
    return state


def run_cells(kc: BlockingKernelClient, seeds: range, errors: list[str]) -> list[float]:
    """Run one granite cell per seed; return their wall times and add what went wrong to ``errors``."""
    times = []
    for seed in seeds:
        cell = Cell(kc, CELL.format(seed=seed))
        problems = cell.problems + ([] if cell.replied else ["no final reply was displayed"])
        errors.extend(f"cell {seed}: {problem}" for problem in problems)
        times.append(cell.seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=1000, help="cells measured after the warm-up")
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    with fake_server() as url:
        km = KernelManager(kernel_name="python3", transport="ipc")  # ipc: no plain-TCP warning
        km.start_kernel(env={**os.environ, "OPENROUTER_API_KEY": "sk-or-v1-soak-fake-key"})
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            setup = Cell(kc, f"%load_ext granite_magic\n%config GraniteMagics.base_url = {url!r}\n{SAMPLER}")
            if setup.problems:
                raise RuntimeError(f"kernel setup failed: {setup.problems}")
            errors: list[str] = []
            run_cells(kc, range(args.warmup), errors)
            before = sample(kc)
            started = time.perf_counter()
            times = run_cells(kc, range(args.warmup, args.warmup + args.cells), errors)
            wall = time.perf_counter() - started
            after = sample(kc)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    report(before, after, args, times, wall, errors)


def report(before: dict[str, Any], after: dict[str, Any], args: Any, times: list[float], wall: float, errors: list[str]) -> None:
    rss_limit = 2.0 * args.cells / 1000
    print(f"kernel {before['python']} (pid {before['pid']}); {args.warmup} warm-up cells, then {args.cells} cells measured")
    print(f"{'metric':22}{'after warm-up':>15}{f'after {args.cells} cells':>18}{'growth':>10}   target")
    rows = [("kernel RSS (MB)", "rss_mb", rss_limit), ("live ipywidgets", "widget_count", 0),
            ("threads", "threads", 0), ("open descriptors", "fds", 0)]
    for label, key, limit in rows:
        growth = after[key] - before[key]
        verdict = "OK" if growth <= limit else "over target"
        target = f"< {limit:.2f} MB (2 MB / 1,000 cells)" if key == "rss_mb" else "constant"
        figures = f"{before[key]:>15.2f}{after[key]:>18.2f}{growth:>+10.2f}" if key == "rss_mb" else f"{before[key]:>15}{after[key]:>18}{growth:>+10}"
        print(f"{label:22}{figures}   {target:36}{verdict}")
    grown = Counter(after["widgets"])
    grown.subtract(before["widgets"])
    if any(grown.values()):
        print("widgets by class: " + ", ".join(f"{name} {count:+}" for name, count in sorted(grown.items()) if count))
    print(f"cell time: median {statistics.median(times) * 1e3:.1f} ms, "
          f"p95 {statistics.quantiles(times, n=20)[-1] * 1e3:.1f} ms, {len(times) / wall:.1f} cells/s")
    print(f"cells with problems: {len({e.split(':')[0] for e in errors})}   target 0   {'OK' if not errors else 'over target'}")
    for error in errors[:5]:
        print(f"  {error}")
    if len(errors) > 5:
        print(f"  ... and {len(errors) - 5} more")


if __name__ == "__main__":
    main()
