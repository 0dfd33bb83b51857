"""What the session has spent: one entry per run, worst-case cost estimates, and the budget check.

Pure bookkeeping: the session records each finished run here, and asks
``check_budget`` before anything is sent.  Costs are what the provider billed
(``usage.cost`` in the stream, or looked up afterwards); the local backend costs 0.

A cost or a price is a claim from a server: only a finite number >= 0 is taken (``known_cost``); anything
else is unknown, and the ledger marks the run.  A budget counts a run of unknown cost at its upper bound (the
worst case checked before it was sent, given to ``record``); a worst case that cannot be computed (no valid
prices) refuses the request.
"""

from __future__ import annotations

import datetime
import math
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from ._errors import InvalidParameterError
from ._result import Result

if TYPE_CHECKING:
    from ._client import ModelInfo
    from ._shapes import Request

__all__ = ["BUDGET_VARIABLE", "BudgetError", "CostSource", "Ledger", "LedgerEntry", "check_budget", "known_cost", "prompt_token_bound",
           "spent_bound", "usd", "worst_case", "worst_case_cost"]

# Where an entry's cost comes from: the stream, a lookup after the run, the local backend (free), a request that
# failed before anything was generated (nothing billed), or nowhere yet (unknown: none reported, or not a valid amount).
CostSource = Literal["stream", "lookup", "local", "failed", "unknown"]
RunKind = Literal["single", "grid", "panel", "tools", "probe", "branch", "map"]

# Chat templates add a few tokens around every message (role markers, separators).
TEMPLATE_TOKENS_PER_MESSAGE = 8


def known_cost(value: Any) -> float | None:
    """``value`` as an amount of USD when it is a finite number >= 0 (a cost, a price, a budget); else None: unknown."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    amount = float(value)
    return amount if math.isfinite(amount) and amount >= 0 else None


def usd(amount: float | None, decimals: int = 6) -> str:
    """An amount as a message shows it: ``$0.000123``, ``$1,250.00``; past a billion in three digits (``$1e+308``, not
    309 of them); ``an unknown amount`` when it is not a finite number >= 0."""
    known = known_cost(amount)
    if known is None:
        return "an unknown amount"
    if known >= 1e9:
        return f"${known:.3g}"
    while known and round(known, decimals) == 0 and decimals < 10:  # $0.00001 is not "$0.00": the digits to show it
        decimals += 1
    return f"${known:,.{decimals}f}"


BUDGET_VARIABLE = "GRANITE_BUDGET_USD"  # where a budget comes from unless a front end set it its own way


class BudgetError(InvalidParameterError):
    """A request (or grid) whose worst case does not fit in what is left of the budget; nothing was sent."""

    kind = "budget"
    hint = "Set max_tokens= to lower the worst case, or raise the budget ({setting})."

    def __init__(self, message: str, *, setting: str = BUDGET_VARIABLE) -> None:
        super().__init__(message)
        self.setting = setting  # where this budget was set, which is where to raise it

    def __str__(self) -> str:
        return f"{self.message} {self.hint.format(setting=self.setting)}"


@dataclass(frozen=True, slots=True)  # slots: a map adds one per row
class LedgerEntry:
    time: str  # ISO 8601, local time with offset
    model: str | None
    backend: str
    provider: str | None
    prompt_tokens: int | None
    completion_tokens: int
    cached_tokens: int | None
    cost: float  # what was billed; 0 while it is unknown (cost_source "unknown")
    cost_source: CostSource
    cached: bool  # served from the record/replay cache: nothing was billed
    cell: int | None  # the notebook's execution count, when run from a cell
    kind: RunKind
    ended: str
    bound: float | None = None  # the most the run could cost (its worst case), which a budget counts while its cost is unknown

    @property
    def unknown(self) -> bool:
        """Billed, but no valid cost is known (none was reported, or not a finite number >= 0)."""
        return self.cost_source == "unknown" and not self.cached


class Ledger:
    """Every run of a session, in order; safe to record into from the background loop."""

    def __init__(self, cell_number: Callable[[], int | None] = lambda: None) -> None:
        self._entries: list[LedgerEntry] = []
        self._lock = threading.Lock()
        self._cell_number = cell_number

    def record(self, result: Result, *, backend: str, kind: RunKind, cached: bool = False, free: bool = False,
               bound: float | None = None) -> int:
        """Add a finished run of ``backend`` (a name, as the table shows it; ``free``: it runs on this machine and
        costs nothing); returns its index (for a cost looked up later).  ``bound``: the most the run could cost, which
        the budget counts while its cost is unknown.  A billed cost that is not a finite number >= 0 is unknown."""
        billed = known_cost(result.cost)
        # A request refused before the model read it (an HTTP error, a dropped connection) generated nothing to bill.
        began = bool(result.chunks or result.tool_calls or result.usage.completion_tokens or result.usage.prompt_tokens)
        source: CostSource = "local" if free else "stream" if billed is not None else "unknown" if began else "failed"
        cost = 0.0 if cached or free else (billed or 0.0)
        entry = LedgerEntry(
            # interned: the rows of a map that end in the same second share one string
            time=sys.intern(datetime.datetime.now().astimezone().isoformat(timespec="seconds")), model=result.model, backend=backend,
            provider=result.provider, prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.completion_tokens,
            cached_tokens=result.usage.cached_tokens, cost=cost, cost_source=source, cached=cached,
            cell=self._cell_number(), kind=kind, ended=result.ended, bound=known_cost(bound),
        )
        with self._lock:
            self._entries.append(entry)
            return len(self._entries) - 1

    def set_cost(self, index: int, cost: float) -> None:
        """A cost the stream did not carry, looked up after the run (ignored unless a finite number >= 0)."""
        known = known_cost(cost)
        if known is None:
            return
        with self._lock:
            self._entries[index] = replace(self._entries[index], cost=known, cost_source="lookup")

    @property
    def entries(self) -> list[LedgerEntry]:
        with self._lock:
            return list(self._entries)

    @property
    def total_cost(self) -> float:
        """What a budget counts as spent: the billed costs, and a run of unknown cost at its bound when one was given."""
        return sum((entry.bound or 0.0) if entry.unknown else entry.cost for entry in self.entries)

    def budget_line(self, budget: float) -> str:
        """The status line's account of the budget: ``$0.001234 of $0.50 budget spent``, and how many runs' costs
        are not known (counted at their bound, or not at all)."""
        unknown = f" ({_unknown_runs(self.entries)})" if any(entry.unknown for entry in self.entries) else ""
        return f"{usd(self.total_cost)} of {usd(budget, 2)} budget spent{unknown}"

    def totals(self) -> dict[str, Any]:
        entries = self.entries
        return {
            "runs": len(entries),
            "prompt_tokens": sum(e.prompt_tokens or 0 for e in entries),
            "completion_tokens": sum(e.completion_tokens for e in entries),
            "cost": sum(e.cost for e in entries),
            "unknown_cost_runs": sum(e.unknown for e in entries),
            "cached_runs": sum(e.cached for e in entries),
        }

    def to_dataframe(self) -> Any:
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("usage() needs pandas: pip install pandas (or read Ledger.entries)") from None
        columns = list(LedgerEntry.__dataclass_fields__)
        return pd.DataFrame([[getattr(e, c) for c in columns] for e in self.entries], columns=columns)

    def summary(self, *, budget: float | None = None, last: int = 10) -> str:
        totals = self.totals()
        head = (f"{totals['runs']} runs · {totals['prompt_tokens']:,} prompt + {totals['completion_tokens']:,} completion tokens"
                f" · {usd(totals['cost'])}")
        if budget is not None:
            head += f" of a {usd(budget, 2)} budget ({usd(max(0.0, budget - self.total_cost))} left)"
        if totals["unknown_cost_runs"]:
            head += f" · {_unknown_runs(self.entries)}"
        entries = self.entries
        rows = [f"  {e.time[11:19]}  cell {e.cell if e.cell is not None else '-':>4}  {e.kind:<6} {e.backend:<5} "
                f"{(e.model or '?')[:40]:<40} {e.completion_tokens:>6} tok  "
                f"{'cost unknown' if e.unknown else usd(e.cost)}{' (cached)' if e.cached else ''}"
                for e in entries[-last:]]
        by_model = _grouped(entries, lambda e: (e.model or "?")[:40])
        by_cell = _grouped(entries, lambda e: f"cell {e.cell}" if e.cell is not None else "outside a cell")[-last:]
        earlier = f"the last {last} of {len(entries)} runs" if len(entries) > last else "runs"
        return "\n".join([head, "by model:", *by_model, f"by cell{' (the last ' + str(last) + ')' if len(by_cell) == last else ''}:",
                          *by_cell, f"{earlier}:", *rows])


def _grouped(entries: Sequence[LedgerEntry], key: Callable[[LedgerEntry], str]) -> list[str]:
    """One line per group, in order of first appearance: its runs, tokens and cost."""
    groups: dict[str, list[LedgerEntry]] = {}
    for entry in entries:
        groups.setdefault(key(entry), []).append(entry)
    lines = []
    for name, members in groups.items():
        tokens = sum((e.prompt_tokens or 0) + e.completion_tokens for e in members)
        unknown = sum(e.unknown for e in members)
        cost = usd(sum(e.cost for e in members)) + (f" + {unknown} unknown" if unknown else "")
        lines.append(f"  {name:<40} {len(members):>4} run{'s' if len(members) != 1 else ' '} {tokens:>9,} tok  {cost}")
    return lines


def _unknown_runs(entries: Sequence[LedgerEntry]) -> str:
    count = sum(entry.unknown for entry in entries)
    bounded = sum(entry.unknown and entry.bound is not None for entry in entries)
    counted = "" if not bounded else ", counted at its worst case" if count == 1 else f", {bounded} counted at their worst case"
    return f"{count} run{'s' if count != 1 else ''} without a valid reported cost{counted}"


def prompt_token_bound(request: Request) -> int:
    """At most this many prompt tokens: a byte-level tokenizer never makes more tokens than UTF-8 bytes,
    plus what the chat template adds around each message (a raw prompt has none).  Deliberately an upper bound."""
    size = sum(len(text.encode()) for text in request.texts)
    return size + TEMPLATE_TOKENS_PER_MESSAGE * len(request.messages)


def worst_case_cost(prompt_tokens: int, max_tokens: int | None, prompt_price: float | None,
                    completion_price: float | None, max_output: int | None) -> float | None:
    """Prompt tokens x input price + max tokens x output price; None when a price or the output bound is unknown."""
    output = max_tokens if max_tokens is not None else max_output
    prompt_price, completion_price = known_cost(prompt_price), known_cost(completion_price)
    if prompt_price is None or completion_price is None or output is None:
        return None
    return known_cost(prompt_tokens * prompt_price + output * completion_price)  # prices near 1e308 overflow: unknown


def worst_case(info: ModelInfo | None, requests: Iterable[Request]) -> float | None:
    """The most ``requests`` can cost at the prices of the model's listing ``info``; None when unknown."""
    if info is None:
        return None
    costs = [worst_case_cost(prompt_token_bound(r), r.sampling.get("max_tokens"), info.prompt_price,
                             info.completion_price, info.max_completion_tokens or info.context_length) for r in requests]
    return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)


def spent_bound(info: ModelInfo | None, request: Request, completion_tokens: int) -> float | None:
    """The most a reply stopped after ``completion_tokens`` can have cost: the prompt at most, and those tokens."""
    if info is None:
        return None
    return worst_case_cost(prompt_token_bound(request), completion_tokens, info.prompt_price, info.completion_price, None)


def check_budget(spent: float, worst: float | None, budget: float | None, *, runs: int = 1,
                 setting: str = BUDGET_VARIABLE) -> None:
    """Refuse (BudgetError, nothing sent) unless what was spent plus the worst case fits in the budget (set by
    ``setting``, which the refusal says to raise)."""
    refusal = _over_budget(spent, worst, budget, "this request" if runs == 1 else f"these {runs} runs")
    if refusal is not None:
        raise BudgetError(refusal, setting=setting)


def _over_budget(spent: float, worst: float | None, budget: float | None, what: str) -> str | None:
    """Why what was spent plus the worst case of ``what`` does not fit in the budget, or None when it does."""
    if budget is None:
        return None
    if known_cost(budget) is None:
        return f"budget_usd={budget!r} is not an amount (a finite number >= 0), so nothing is sent"
    worst = known_cost(worst)
    if worst is None:
        return (f"a budget of {usd(budget, 2)} is set, but the worst-case cost of {what} is unknown "
                "(the model's prices or its output limit are not listed, or not valid amounts)")
    if known_cost(spent) is None:
        return f"a budget of {usd(budget, 2)} is set, but what was spent ({spent!r}) is not an amount"
    if spent + worst > budget:
        return f"the budget would not hold: {usd(spent)} spent + {usd(worst)} worst case for {what} > {usd(budget, 2)} budget"
    return None
