"""Branching from the sampling lens: continue a reply from any step with another token, in a new column.

The prefix up to the chosen step plus the chosen alternative is sent as an assistant prefix: a branch is a batch
of one run (``RunSpec.prefix``) through the session's one batch driver.  The continuation streams into a grid
beside the original and the branches before it, and when it ends the grid shows the comparison (identical groups,
similarity, first divergence).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from . import _errors as errors
from ._advice import worded
from ._comparison import Comparison, Run, RunSpec
from ._params import Sampling
from ._result import Result

if TYPE_CHECKING:
    from ._events import Progress
    from ._grid import GridView
    from ._session import CompareJob, Session, Target, Turn

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
            job = self.session.start_compare(dataclasses.replace(self.turn, chat=None), [RunSpec(label, prefix=prefix)],
                                             target=self.target, kind="branch")
        except errors.InvalidParameterError as exc:  # e.g. the budget: nothing was sent
            self.message.value = f"<i>{_escape(worded(exc, None))} (nothing was sent)</i>"
            return
        self._running = True
        self.message.value = ""
        grid = self._grid([*self.labels, label])
        self.output.children = (grid.widget,)
        grid.show()
        job.shown = [*(_Finished(run.result) for run in self.runs), _Prefixed(prefix, job.columns[0].acc)]
        job.first_column = len(self.runs)
        job.loop.submit(self._drive(job, grid, prefix))

    @property
    def labels(self) -> list[str]:
        return [run.spec.label for run in self.runs]

    def _grid(self, labels: list[str]) -> GridView:
        from ._grid import GridView

        grid = GridView(f"{self.target.label} · branches", labels, rate=self.session.settings.updates_per_second, embedded=True)
        for index, run in enumerate(self.runs):
            grid.column_done(index, run.result)
        return grid

    async def _drive(self, job: CompareJob, grid: GridView, prefix: str) -> None:
        try:
            await job.stream(grid)
        finally:
            (run,) = self.session.finish_compare(job).runs
            whole = dataclasses.replace(run.result, text=prefix + run.result.text)  # compared as the whole reply it makes
            self.runs.append(dataclasses.replace(run, result=whole))
            grid.finish(Comparison(prompt=self.turn.prompt, runs=list(self.runs)))
            self._running = False

    @property
    def comparison(self) -> Comparison:
        """The original and every branch so far, as a comparison."""
        return Comparison(prompt=self.turn.prompt, runs=list(self.runs))


def _escape(text: str) -> str:
    import html

    return html.escape(text)
