"""Wall time of an 8-seed comparison against a single run, in the same run.

The local server (its own process) waits 300 ms before the first token, then
sends 60 tokens at 100 tokens/s, like a small hosted model.  Run one by one,
8 seeds would take 8x as long; concurrently they should take about as long
as one.  The grid's widget update rate is counted too.

    python benchmarks/bench_compare.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import comm
from comm.base_comm import BaseComm

from granite_magic._comparison import plan_runs
from granite_magic._grid import GridView
from granite_magic._params import Sampling
from granite_magic._session import Session, Turn

try:
    from ._server import fake_server
except ImportError:
    from _server import fake_server  # type: ignore[no-redef]


class CountingComm(BaseComm):
    updates = 0

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None, **keys: Any) -> None:
        if msg_type == "comm_msg" and (data or {}).get("method") == "update":
            CountingComm.updates += 1


def timed(session: Session, seeds: list[int]) -> tuple[float, float]:
    """(wall seconds, widget updates per second) for one comparison."""
    specs = plan_runs(seeds)
    grid = GridView("bench", [s.label for s in specs])
    CountingComm.updates = 0
    started = time.perf_counter()
    comp = session.compare(Turn("Tell me about granite", sampling=Sampling({"temperature": 0.7})), specs, grid, concurrency=len(seeds))
    wall = time.perf_counter() - started
    assert all(len(t.split()) == 60 and not r.partial for t, r in zip(comp.texts, comp.results, strict=True))
    return wall, CountingComm.updates / wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    comm.create_comm = CountingComm  # count what the grid would send to a front end
    with fake_server("--ttft", "0.3", "--tokens-per-s", "100", "--tokens", "60") as url:
        os.environ["GRANITE_BASE_URL"] = url
        os.environ.setdefault("OPENROUTER_API_KEY", "bench")
        session = Session()
        timed(session, [0])  # warm-up: imports, connection
        one, eight = [], []
        for run in range(args.runs):
            one.append(timed(session, [run + 1]))
            eight.append(timed(session, list(range(1, 9))))
    wall_one = statistics.median(w for w, _ in one)
    wall_eight = statistics.median(w for w, _ in eight)
    print(f"{args.runs} alternating runs; server: 300 ms to first token, 100 tokens/s, 60 tokens")
    print(f"1 seed : median wall {wall_one:.3f} s, widget updates {statistics.median(u for _, u in one):.1f}/s")
    print(f"8 seeds: median wall {wall_eight:.3f} s, widget updates {statistics.median(u for _, u in eight):.1f}/s")
    print(f"8 seeds / 1 seed wall time: {wall_eight / wall_one:.2f}x  (target <= 1.3x; one by one would be 8x)")


if __name__ == "__main__":
    main()
