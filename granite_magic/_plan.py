"""Before a prompt goes over rows: what each way of running them would cost and take (``map(..., dry_run=True)``,
``--over ... --dry-run``).  Pure: the caller measures, this module compares.

Costs come from the model's listed prices: the worst case (every reply to its token limit) and the expected cost
(replies as long as the rows already answered, when some were: ``--limit 5`` first makes the estimate real).
Times come from those rows too: live at their latency with the rows in flight, local one after another; a batch
takes what the provider's window allows.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

BATCH_DISCOUNT = 0.5  # OpenRouter's batches: typically half the per-token price
BATCH_WINDOW = "minutes to hours; at most 24 h (the provider's window)"


@dataclass(frozen=True)
class RowsAtHand:
    """The runs a map would make (rows x settings) and what is known of them before any is sent."""

    runs: int
    cached: int  # answered by the cache: free and instant
    prompt_tokens: int  # estimated, summed over the runs to send
    prompt_bound: int  # at most, summed over the runs to send
    max_tokens: int | None  # a reply's limit (None: the model's)
    answered_tokens: Sequence[int] = ()  # completion tokens of the rows already answered
    answered_latency_s: Sequence[float] = ()  # their latencies

    @property
    def to_send(self) -> int:
        return self.runs - self.cached


@dataclass(frozen=True)
class Prices:
    prompt: float | None  # USD per token
    completion: float | None
    longest_reply: int | None  # the listing's output bound, for a request that sets none


@dataclass(frozen=True)
class Route:
    """One way of running the rows."""

    via: str
    sends: int
    worst_usd: float | None
    expected_usd: float | None
    time: str


def plan(rows: RowsAtHand, prices: Prices | None, *, concurrency: int, backend: str) -> list[Route]:
    """Each way open to ``backend`` (the local model runs locally; a server live or, on OpenRouter, as a batch)."""
    if backend == "local":
        return [Route("local", rows.to_send, 0.0, 0.0, _one_after_another(rows))]
    worst, expected = _worst(rows, prices), _expected(rows, prices)
    routes = [Route("live", rows.to_send, worst, expected, _live_time(rows, concurrency))]
    if backend == "openrouter":
        routes.append(Route("batch", rows.to_send, _scaled(worst), _scaled(expected), BATCH_WINDOW))
    return routes


def _worst(rows: RowsAtHand, prices: Prices | None) -> float | None:
    if prices is None or prices.prompt is None or prices.completion is None:
        return None
    reply = rows.max_tokens if rows.max_tokens is not None else prices.longest_reply
    if reply is None:
        return None
    return rows.prompt_bound * prices.prompt + rows.to_send * reply * prices.completion


def _expected(rows: RowsAtHand, prices: Prices | None) -> float | None:
    if prices is None or prices.prompt is None or prices.completion is None or not rows.answered_tokens:
        return None
    return rows.prompt_tokens * prices.prompt + rows.to_send * statistics.mean(rows.answered_tokens) * prices.completion


def _scaled(cost: float | None) -> float | None:
    return None if cost is None else cost * BATCH_DISCOUNT


def _live_time(rows: RowsAtHand, concurrency: int) -> str:
    if not rows.to_send:
        return "none: every row is in the cache"
    if not rows.answered_latency_s:
        return "unknown until some rows ran (try limit=5 first)"
    seconds = rows.to_send * statistics.median(rows.answered_latency_s) / max(1, min(concurrency, rows.to_send))
    return f"about {_duration(seconds)} at {concurrency} at once (rate limits can slow it)"


def _one_after_another(rows: RowsAtHand) -> str:
    if not rows.to_send:
        return "none: every row is in the cache"
    if not rows.answered_latency_s:
        return "unknown until some rows ran (try limit=5 first)"
    return f"about {_duration(rows.to_send * statistics.median(rows.answered_latency_s))}, one row after another"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_frame(routes: Sequence[Route], rows: RowsAtHand) -> object:
    """The plan as a small DataFrame (one row per way), its basis in ``attrs``."""
    import pandas as pd

    frame = pd.DataFrame([{"via": r.via, "requests": r.sends, "worst case $": r.worst_usd, "expected $": r.expected_usd,
                           "time": r.time} for r in routes]).set_index("via")
    frame.attrs.update({"runs": rows.runs, "cached": rows.cached, "prompt_tokens": rows.prompt_tokens,
                        "measured_rows": len(rows.answered_tokens)})
    return frame
