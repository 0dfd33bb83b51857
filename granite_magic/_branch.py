"""Branching from the sampling lens: continue a reply from any step with another token, in a new column.

The prefix up to the chosen step plus the chosen alternative is sent as an assistant prefix
(``Turn.prefix``); the continuation streams into a grid beside the original, and when it
ends the grid shows the comparison (identical groups, similarity, first divergence).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from . import _errors as errors
from ._comparison import Comparison, Run, RunSpec
from ._params import Sampling
from ._result import Result

if TYPE_CHECKING:
    from ._events import Progress
    from ._grid import GridView
    from ._session import Session, SingleJob, Target, Turn

__all__ = ["Branches"]


class _Finished:
    """A finished reply seen as progress, so a grid can show it beside live columns."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self.text = result.text
        self.chunks = result.chunks
        self.elapsed_s = result.duration_s or 0.0
        self.has_output = bool(result.text)
        self.usage = result.usage
        self.ttft_s = result.ttft_s
        self.note: str | None = None


class _Prefixed:
    """A branch's live progress shown after the prefix it continues."""

    def __init__(self, prefix: str, live: Progress) -> None:
        self.prefix, self.live = prefix, live

    def __getattr__(self, name: str) -> Any:
        return getattr(self.live, name)

    @property
    def text(self) -> str:
        return self.prefix + self.live.text


class Branches:
    """The branches of one reply; ``branch(step, text)`` is the lens's ``on_branch``."""

    def __init__(self, session: Session, turn: Turn, target: Target, original: Result) -> None:
        import ipywidgets as w

        self.session, self.turn, self.target, self.original = session, turn, target, original
        self.runs: list[Run] = [Run(RunSpec("original", Sampling()), original)]
        self.output = w.VBox([])
        self.message = w.HTML("")
        self.widget = w.VBox([self.message, self.output])
        self._running = False

    def branch(self, step: int, text: str) -> None:
        """Continue the reply from ``tokens[:step]`` followed by ``text``; returns at once, streams on the loop."""
        if self._running:
            self.message.value = "<i>A branch is still streaming: wait for it to finish.</i>"
            return
        prefix = "".join(t.text for t in self.original.tokens[:step]) + text
        label = f"branch at token {step + 1}: {text!r}"
        try:
            job = self.session.start(dataclasses.replace(self.turn, prefix=prefix, chat=None), self.target, kind="branch")
        except errors.InvalidParameterError as exc:  # e.g. the budget: nothing was sent
            self.message.value = f"<i>{_escape(str(exc))} (nothing was sent)</i>"
            return
        self._running = True
        self.message.value = ""
        grid = self._grid([*self.labels, label])
        self.output.children = (grid.widget,)
        grid.show()
        state: list[Progress] = [*(_Finished(run.result) for run in self.runs), _Prefixed(prefix, job.acc)]
        job.loop.submit(self._drive(job, grid, state, prefix, label))

    @property
    def labels(self) -> list[str]:
        return [run.spec.label for run in self.runs]

    def _grid(self, labels: list[str]) -> GridView:
        from ._grid import GridView

        grid = GridView(f"{self.target.label} · branches", labels, rate=self.session.settings.updates_per_second, embedded=True)
        for index, run in enumerate(self.runs):
            grid.column_done(index, run.result)
        return grid

    async def _drive(self, job: SingleJob, grid: GridView, state: list[Progress], prefix: str, label: str) -> None:
        import asyncio

        companion = asyncio.ensure_future(grid.run(state))
        try:
            await job.stream(check_support=False)
        finally:
            companion.cancel()
            result, error = self.session.finish(job)
            whole = dataclasses.replace(result, text=prefix + result.text)  # compared as the whole reply it makes
            self.runs.append(Run(RunSpec(label, Sampling()), whole, error.message if error is not None else None))
            grid.finish(Comparison(prompt=self.turn.prompt, runs=list(self.runs)))
            self._running = False

    @property
    def comparison(self) -> Comparison:
        """The original and every branch so far, as a comparison."""
        return Comparison(prompt=self.turn.prompt, runs=list(self.runs))


def _escape(text: str) -> str:
    import html

    return html.escape(text)
