"""The side-by-side grid: live columns while streaming, then the comparison summary.

Everything is our own HTML with every piece of model text passed through
``html.escape``: the grid is one ``text/html`` output (one comm message per
refresh however many columns stream), and nothing the model wrote can become
markup.
"""

from __future__ import annotations

import asyncio
import html
import json
import sys
from collections.abc import Sequence
from typing import Any

from ._comparison import Comparison
from ._events import Progress
from ._markdown import fenced, markdown_literal
from ._render import METADATA_KEY, ThrottledOutput, live_status, live_text, status_line
from ._result import Result
from ._settings import UPDATES_PER_SECOND

__all__ = ["GridView", "TerminalGridView", "comparison_bundle", "comparison_html", "comparison_markdown"]

_STYLE = """<style>
.gm-grid{display:grid;gap:8px;grid-template-columns:repeat(var(--gm-cols),minmax(11em,1fr));overflow-x:auto}
.gm-col{border:1px solid #8884;border-radius:4px;padding:6px;min-width:0}
.gm-label{font-weight:600;margin-bottom:4px}
.gm-text{white-space:pre-wrap;word-wrap:break-word;font-family:var(--jp-content-font-family,inherit)}
.gm-status{font-size:85%;opacity:.75;margin-top:4px}
.gm-error{color:#b00020;font-size:85%;margin-top:4px}
.gm-summary{margin-top:8px;white-space:pre-wrap}
.gm-diff del{background:#ff000026;text-decoration:line-through}
.gm-diff ins{background:#00aa0033;text-decoration:none}
.gm-matrix td,.gm-matrix th{padding:2px 6px;text-align:right}
.gm-fields td,.gm-fields th{padding:2px 6px;text-align:left;vertical-align:top}
</style>"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _column(label: str, text: str, status: str, error: str | None = None) -> str:
    error_html = f'<div class="gm-error">{_e(error)}</div>' if error else ""
    return (f'<div class="gm-col"><div class="gm-label">{_e(label)}</div><div class="gm-text">{_e(text)}</div>'
            f'<div class="gm-status">{_e(status)}</div>{error_html}</div>')


def _grid(columns: Sequence[str]) -> str:
    return f'{_STYLE}<div class="gm-grid" style="--gm-cols:{max(1, len(columns))}">{"".join(columns)}</div>'


def live_grid_html(labels: Sequence[str], accs: Sequence[Progress], done: Sequence[str | None]) -> str:
    columns = [_column(label, live_text(acc), status or live_status(acc)) for label, acc, status in zip(labels, accs, done, strict=True)]
    return _grid(columns)


def live_grid_text(labels: Sequence[str], accs: Sequence[Progress]) -> str:
    return "\n".join(f"{label}: {acc.chunks} chunks" for label, acc in zip(labels, accs, strict=True))


def comparison_html(comp: Comparison) -> str:
    columns = [
        _column(run.spec.label, run.result.text, f"{status_line(run.result)} · group {comp.group_of(i) + 1}", run.error)
        for i, run in enumerate(comp.runs)
    ]
    return (_grid(columns) + _fields_html(comp) + f'<div class="gm-summary">{_e(comp.summary)}</div>' + _matrix_html(comp)
            + _diffs_html(comp))


def _fields_html(comp: Comparison) -> str:
    """With ``--schema``: one row per field, each run's value in its column, and whether they all agree."""
    if not comp.field_agreement:
        return ""
    labels = [label for label, _ in comp.field_agreement[0].values]
    head = "".join(f"<th>{_e(label)}</th>" for label in labels)
    rows = "".join(
        f"<tr><th>{_e(f.name)}</th>" + "".join(f"<td>{_e(_shown(value))}</td>" for _, value in f.values)
        + f"<td>{'✓ agree' if f.agree else f'✗ {f.distinct} distinct'}</td></tr>"
        for f in comp.field_agreement)
    return f'<table class="gm-fields"><tr><th>field</th>{head}<th></th></tr>{rows}</table>'


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _matrix_html(comp: Comparison) -> str:
    if len(comp.results) < 2:
        return ""
    head = "".join(f"<th>{_e(label)}</th>" for label in comp.labels)
    rows = "".join(
        f"<tr><th>{_e(label)}</th>" + "".join(f"<td>{value:.2f}</td>" for value in row) + "</tr>"
        for label, row in zip(comp.labels, comp.similarity_matrix, strict=True)
    )
    return f'<details><summary>similarity matrix</summary><table class="gm-matrix"><tr><th></th>{head}</tr>{rows}</table></details>'


def _diffs_html(comp: Comparison) -> str:
    blocks = []
    for i, label in enumerate(comp.labels):
        if i == comp.reference or comp.divergences[i] is None:
            continue
        pieces = []
        for op, words in comp.diff(i):
            tag = {"equal": None, "delete": "del", "insert": "ins"}[op]
            pieces.append(f"<{tag}>{_e(words)}</{tag}>" if tag else _e(words))
        blocks.append(f'<div class="gm-diff"><b>{_e(label)}</b> vs {_e(comp.labels[comp.reference])}: {" ".join(pieces)}</div>')
    return f"<details><summary>word diffs</summary>{''.join(blocks)}</details>" if blocks else ""


def comparison_markdown(comp: Comparison) -> str:
    """The fallback for front ends that show Markdown but not our HTML (and for GitHub)."""
    parts = []
    for run in comp.runs:
        error = f"\n\n> {markdown_literal(run.error)}" if run.error else ""
        status = markdown_literal(status_line(run.result))
        parts.append(f"**{markdown_literal(run.spec.label)}** · {status}\n\n{fenced(run.result.text, 'text')}{error}")
    return "\n\n".join(parts) + "\n\n" + fenced(comp.summary, "text")


def comparison_bundle(comp: Comparison) -> tuple[dict[str, Any], dict[str, Any]]:
    plain = "\n\n".join(f"[{label}]\n{text}" for label, text in zip(comp.labels, comp.texts, strict=True))
    data = {"text/html": comparison_html(comp), "text/markdown": comparison_markdown(comp), "text/plain": f"{plain}\n\n{comp.summary}"}
    return data, {METADATA_KEY: {"comparison": comp.to_dict()}}


class GridView(ThrottledOutput):
    """Columns streaming side by side in one widget."""

    def __init__(self, title: str, labels: Sequence[str], *, rate: float = UPDATES_PER_SECOND, embedded: bool = False) -> None:
        super().__init__(rate=rate, embedded=embedded)
        self.title = title
        self.labels = list(labels)
        self.done: list[str | None] = [None] * len(labels)  # a final status once a column ends

    def show(self) -> None:
        waiting = f'<div class="gm-status">{_e("▌ waiting to start")}</div>'
        columns = "".join(f'<div class="gm-col"><div class="gm-label">{_e(label)}</div>{waiting}</div>' for label in self.labels)
        html_text = f'<b>{_e(self.title)}</b>{_STYLE}<div class="gm-grid" style="--gm-cols:{max(1, len(self.labels))}">{columns}</div>'
        self.show_widget(({"output_type": "display_data", "data": {"text/html": html_text, "text/plain": self.title},
                           "metadata": {}},))

    def progress(self, state: Sequence[Progress]) -> int:
        return sum(acc.chunks for acc in state) + sum(status is not None for status in self.done)

    def outputs(self, state: Sequence[Progress]) -> tuple[dict[str, Any], ...]:
        data = {"text/html": f"<b>{_e(self.title)}</b>" + live_grid_html(self.labels, state, self.done),
                "text/plain": live_grid_text(self.labels, state)}
        return ({"output_type": "display_data", "data": data, "metadata": {}},)

    def column_done(self, index: int, result: Result) -> None:
        self.done[index] = status_line(result)

    def finish(self, comp: Comparison) -> None:
        self.replace_with(*comparison_bundle(comp))


class TerminalGridView:
    """Terminal IPython: a line as each column starts streaming, the tokens so far every few seconds, a line as
    each column ends, then every text and the summary."""

    CHECK_S = 0.25  # how often the columns are looked at
    PROGRESS_S = 5.0  # how often a line of tokens so far is printed while any column streams

    def __init__(self, title: str, labels: Sequence[str], *, stream: Any = None) -> None:
        self.title = title
        self.labels = list(labels)
        self.stream = stream or sys.stdout
        self._ended: set[int] = set()

    def show(self) -> None:
        print(f"{self.title} · {len(self.labels)} runs", file=self.stream, flush=True)

    async def run(self, state: Sequence[Progress]) -> None:
        started: set[int] = set()
        since_progress = 0.0
        while True:
            await asyncio.sleep(self.CHECK_S)
            for index, live in enumerate(state):
                if index not in started and live.ttft_s is not None:
                    started.add(index)
                    print(f"  {self.labels[index]}: streaming (first token after {live.ttft_s:.2f} s)", file=self.stream, flush=True)
            since_progress += self.CHECK_S
            streaming = [i for i in started if i not in self._ended]
            if streaming and since_progress >= self.PROGRESS_S:
                since_progress = 0.0
                parts = [f"{self.labels[i]} {state[i].usage.completion_tokens or state[i].chunks} tokens" for i in sorted(streaming)]
                print("  ... " + " · ".join(parts), file=self.stream, flush=True)

    def column_done(self, index: int, result: Result) -> None:
        self._ended.add(index)
        print(f"  {self.labels[index]}: {status_line(result)}", file=self.stream, flush=True)

    def finish(self, comp: Comparison) -> None:
        for label, text in zip(comp.labels, comp.texts, strict=True):
            print(f"\n[{label}]\n{text}", file=self.stream)
        print(f"\n{comp.summary}", file=self.stream, flush=True)


Comparison.html_renderer = comparison_html
