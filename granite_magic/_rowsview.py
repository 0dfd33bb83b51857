"""A prompt over rows as a person follows it: live progress (rows done, failed and cached, rows a second, cost so far,
time left, the last replies), then a static summary that stays in the saved notebook (how many rows ended how, the
cost, the first rows of the result).

The counts come from each row's end (``row_done``), so a refresh reads a few numbers, not every row; the widget is
refreshed at most ``rate`` times a second however fast rows end.
"""

from __future__ import annotations

import asyncio
import html
import json
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from ._events import Progress
from ._render import ThrottledOutput
from ._result import Result
from ._rows import STATUSES, disagreeing_rows, row_status, setting_summary
from ._settings import UPDATES_PER_SECOND

__all__ = ["RowsProgress", "RowsView", "TerminalRowsView", "summary_bundle"]

LAST_REPLIES = 3  # shown under the progress line
SHOWN_ROWS = 5  # of the result frame, in the saved summary
SHOWN_DISAGREEMENTS = 10  # row labels named
# A map's view refreshes at most this often, whatever the streaming view's rate: each refresh resends the whole view
# to the front end, and a row count changing faster than this is not read anyway.
MOST_UPDATES_PER_SECOND = 10.0


class RowsProgress:
    """What the rows have done so far: counts by status, cost, and the last few replies."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter()
        self.cost = 0.0
        self.last: deque[str] = deque(maxlen=LAST_REPLIES)

    def row_done(self, result: Result) -> None:
        status = row_status(result, result.error)
        self.counts[status] += 1
        self.cost += result.cost or 0.0
        if result.text:
            self.last.append(result.text.strip().replace("\n", " ")[:120])

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        """``12 of 40 rows · 1 failed · 3 cached · 2.1 rows/s · $0.000120 · about 13 s left``."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        failed = self.counts["error"] + self.counts["invalid"]
        parts = [f"{self.done} of {self.total} rows"]
        parts += [f"{failed} failed"] if failed else []
        parts += [f"{self.counts['cached']} cached"] if self.counts["cached"] else []
        parts += [f"{rate:.1f} rows/s", f"${self.cost:.6f}"]
        if self.done and self.done < self.total:
            parts.append(f"about {(self.total - self.done) / rate:.0f} s left")
        return " · ".join(parts)


class RowsView(ThrottledOutput):
    """The live view in a notebook: a progress bar and line, and the last few replies."""

    def __init__(self, title: str, total: int, *, rate: float = UPDATES_PER_SECOND, embedded: bool = False) -> None:
        super().__init__(rate=min(rate, MOST_UPDATES_PER_SECOND), embedded=embedded)
        self.title = title
        self.progress_state = RowsProgress(total)

    def show(self) -> None:
        self.show_widget(self.outputs(()))

    def row_done(self, index: int, result: Result) -> None:
        self.progress_state.row_done(result)

    column_done = row_done  # what a batch's driver calls as each run ends

    def progress(self, state: Sequence[Progress]) -> int:
        return self.progress_state.done

    def outputs(self, state: Sequence[Progress]) -> tuple[dict[str, Any], ...]:
        done = self.progress_state
        last = "".join(f'<div style="opacity:.75;white-space:nowrap;overflow:hidden;text-overflow:ellipsis">{html.escape(text)}</div>'
                       for text in done.last)
        bar = f'<progress value="{done.done}" max="{max(done.total, 1)}" style="width:100%"></progress>'
        body = f"<b>{html.escape(self.title)}</b>{bar}<div>{html.escape(done.line())}</div>{last}"
        return ({"output_type": "display_data", "data": {"text/html": body, "text/plain": done.line()}, "metadata": {}},)

    def finish(self, frame: Any) -> None:
        data, metadata = summary_bundle(self.title, frame, time.monotonic() - self.progress_state.started)
        self.replace_with(data, metadata)


class TerminalRowsView:
    """Terminal IPython: the progress line every few seconds, then the summary."""

    PRINT_S = 2.0

    def __init__(self, title: str, total: int, *, stream: Any = None) -> None:
        self.title = title
        self.stream = stream or sys.stdout
        self.progress_state = RowsProgress(total)

    def show(self) -> None:
        print(f"{self.title} · {self.progress_state.total} rows", file=self.stream, flush=True)

    async def run(self, state: Sequence[Progress]) -> None:
        while True:
            await asyncio.sleep(self.PRINT_S)
            print(f"  {self.progress_state.line()}", file=self.stream, flush=True)

    def row_done(self, index: int, result: Result) -> None:
        self.progress_state.row_done(result)

    column_done = row_done

    def finish(self, frame: Any) -> None:
        data, _ = summary_bundle(self.title, frame, time.monotonic() - self.progress_state.started)
        print(data["text/plain"], file=self.stream, flush=True)


def _settings_parts(frame: Any) -> tuple[str, str]:
    """With settings (``--seeds``/``--sweep``): one row per setting (its score with a 95% interval, the agreement
    across seeds, cost, latency) and the rows where the settings disagree; nothing otherwise."""
    if not frame.attrs.get("settings"):
        return "", ""
    summary = setting_summary(frame).round(3)
    disagree = disagreeing_rows(frame)
    shown = ", ".join(map(str, disagree[:SHOWN_DISAGREEMENTS])) + (" ..." if len(disagree) > SHOWN_DISAGREEMENTS else "")
    line = f"rows where the settings disagree: {len(disagree)} of {frame.attrs.get('rows')}" + (f" ({shown})" if disagree else "")
    return (f'{summary.to_html(escape=True, na_rep="")}<div>{html.escape(line)}</div>',
            f"\n\n{summary.to_string(na_rep='')}\n{line}")


def summary_bundle(title: str, frame: Any, wall_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """What stays in the saved notebook: rows by status, the cost and time, and the first rows of the result."""
    counts = frame["_status"].value_counts().to_dict() if len(frame) else {}
    ended = " · ".join(f"{counts[status]} {status}" for status in STATUSES if counts.get(status))
    cost = float(frame["_cost"].fillna(0).sum()) if len(frame) else 0.0
    line = f"{len(frame)} rows · {ended} · ${cost:.6f} · {wall_s:.1f} s"
    if frame.attrs.get("rate_limited"):
        line += (f" · rate limited {frame.attrs['rate_limited']} times: down to {frame.attrs.get('fewest_at_once')} at once, "
                 "then back up")
    import pandas as pd

    head = frame.head(SHOWN_ROWS)
    with pd.option_context("display.max_colwidth", 80):  # a long reply is cut in the summary, whole in the frame
        table = head.to_html(escape=True)
        plain = f"{title}\n{line}\n{head.to_string()}"
    settings_html, settings_plain = _settings_parts(frame)
    data = {"text/html": f"<b>{html.escape(title)}</b><div>{html.escape(line)}</div>{settings_html}{table}",
            "text/plain": plain + settings_plain}
    fields = list(frame.attrs.get("fields") or ["reply"])
    shown = [str(row["reply"]) if fields == ["reply"] else json.dumps({name: row[name] for name in fields}, default=str)
             for _, row in head.iterrows() if row["_status"] not in ("error", "skipped")]
    metadata = {"granite_magic": {"rows": {"total": len(frame), "statuses": counts, "cost": cost, "wall_s": wall_s,
                                           "backend": frame.attrs.get("backend"), "prompt": frame.attrs.get("prompt"),
                                           "replies": shown}}}  # the first rows' answers, as the summary shows them
    return data, metadata
