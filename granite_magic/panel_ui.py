"""The parameter panel: tune, Run, Stop, compare seeds, copy the settings as a cell.

(The module is not called ``panel`` so that it never shadows the ``granite_magic.panel()`` function.)

Every control comes from the parameter table.  Run prepares the request in the
kernel's thread (so a bad value is refused in place before anything is sent),
then streams on the background loop: the button's callback returns at once,
Stop cancels the stream, and other cells can run meanwhile.
"""

from __future__ import annotations

import html
import json
import shlex
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import errors
from .client import DEFAULT_MODEL
from .comparison import Comparison, RunSpec, parse_seeds, parse_sweep, plan_runs
from .grid import GridView
from .params import PARAMETERS, Param
from .render import WidgetView, describe_params
from .result import Result
from .session import Session, Turn

if TYPE_CHECKING:
    import ipywidgets

__all__ = ["PRESETS", "Panel", "panel"]

PRESETS: dict[str, dict[str, Any]] = {
    "precise": {"temperature": 0.2, "top_p": 0.9},
    "balanced": {"temperature": 0.7, "top_p": 0.95},
    "creative": {"temperature": 1.1, "top_p": 0.98, "presence_penalty": 0.3},
}

STOPPED = "Stopped: the partial reply is kept. Press Run for a full reply."

# Starting values for parameters whose "default" is the provider's own (nothing to show).
_STARTING_VALUE = {"seed": 1, "max_tokens": 256}
_INT_CEILING = {"top_k": 1000, "max_tokens": 131_000}


@dataclass
class ParamControl:
    """One parameter's row: a "send" toggle, the value control, its range, and a flag."""

    param: Param
    send: ipywidgets.Checkbox
    value: ipywidgets.Widget
    flag: ipywidgets.HTML
    row: ipywidgets.HBox

    def raw(self) -> Any:
        value = self.value.value
        if self.param.kind == "stop":
            return _stop_sequences(value)
        return value

    def set(self, value: Any) -> None:
        if self.param.kind == "stop":
            value = "\n".join(value) if isinstance(value, (list, tuple)) else str(value)
        elif self.param.kind == "logit_bias" and not isinstance(value, str):
            value = json.dumps(value)
        self.value.value = value
        self.send.value = True

    def flag_unsupported(self, unsupported: bool) -> None:
        self.flag.value = (
            '<span style="color:#b26a00" title="not supported: the model\'s listing does not name this parameter, '
            'so the provider may ignore it">⚠</span>' if unsupported else ""
        )


def _stop_sequences(text: str) -> list[str] | str:
    """One stop sequence per line, or a JSON list (for sequences with newlines)."""
    text = text.strip("\n")
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return text
        return parsed if isinstance(parsed, list) else text
    return [line for line in text.split("\n") if line]


def _control(param: Param) -> ParamControl:
    import ipywidgets as w

    tip = f"{param.help} Valid: {param.range_text}. When not sent: {param.default_text}."
    layout = w.Layout(width="15em")
    value: w.Widget
    if param.kind == "float" and param.minimum is not None and param.maximum is not None:
        low = float(param.minimum) + (param.step or 0.01 if param.exclusive_minimum else 0)
        start = float(param.default if param.default is not None else low)
        value = w.FloatSlider(value=start, min=low, max=float(param.maximum), step=param.step or 0.01,
                              readout_format=".2f", continuous_update=False, layout=layout, description_allow_html=False)
    elif param.kind == "int":
        start = _STARTING_VALUE.get(param.name, param.default if param.default is not None else 0)
        if param.minimum is not None:
            value = w.BoundedIntText(value=start, min=int(param.minimum), max=_INT_CEILING.get(param.name, 2**31 - 1), layout=layout)
        else:
            value = w.IntText(value=start, layout=layout)
    elif param.kind == "stop":
        value = w.Textarea(placeholder="one stop sequence per line (or a JSON list)", rows=2, layout=layout)
    else:
        value = w.Text(placeholder='{"token id": bias}', layout=layout)
    value.tooltip = tip
    send = w.Checkbox(value=False, description=param.name, indent=False, tooltip=f"send {param.name} (off: {param.default_text})",
                      layout=w.Layout(width="11em"))
    note = w.HTML(f'<span style="opacity:.7;font-size:80%;white-space:nowrap" title="{html.escape(tip)}">'
                  f'{html.escape(param.short_range)}</span>')
    flag = w.HTML("")
    return ParamControl(param, send, value, flag, w.HBox([send, value, note, flag]))


@dataclass
class HistoryEntry:
    number: int
    label: str
    outcome: Result | Comparison

    @property
    def reference(self) -> Result:
        return self.outcome if isinstance(self.outcome, Result) else self.outcome.results[0]


class Panel:
    """The widget panel; ``results`` holds the last run's Result or Comparison."""

    def __init__(
        self,
        session: Session,
        *,
        prompt: str = "",
        system: str = "",
        model: str | None = None,
        base_url: str | None = None,
        backend: str | None = None,
        api: str = "chat",
        seeds: str = "1-3",
        sweep: str = "",
        mode: str = "single",
        concurrency: int = 4,
        rate: float = 15.0,
        **params: Any,
    ) -> None:
        import ipywidgets as w

        self.session = session
        self.base_url = base_url
        self.backend = backend
        self.api = api
        self.rate = rate
        self.results: Result | Comparison | None = None
        self.history: list[HistoryEntry] = []
        self._task: Any = None
        self._idle = threading.Event()
        self._idle.set()

        self.controls = {p.name: _control(p) for p in PARAMETERS}
        for name, value in params.items():
            if name not in self.controls:
                raise errors.InvalidParameterError(f"unknown parameter {name!r}")
            if value is not None:
                self.controls[name].set(value)
        self.prompt = w.Textarea(value=prompt, placeholder="Prompt", rows=4, layout=w.Layout(width="100%"))
        self.system = w.Textarea(value=system, placeholder="System prompt (optional)", rows=2, layout=w.Layout(width="100%"))
        self.model = w.Text(value=model or "", placeholder=DEFAULT_MODEL, description="model", layout=w.Layout(width="24em"))
        self.preset = w.Dropdown(options=["(preset)", *PRESETS], value="(preset)", description="preset", layout=w.Layout(width="14em"))
        self.mode = w.ToggleButtons(options=["single", "compare"], value=mode)
        self.seeds = w.Text(value=seeds, description="seeds", placeholder="1-4 or 1,2,3", layout=w.Layout(width="16em"))
        self.sweep = w.Text(value=sweep, description="sweep", placeholder="temperature=0,0.7,1.4", layout=w.Layout(width="22em"))
        self.repeat = w.BoundedIntText(value=1, min=1, max=8, description="repeat", layout=w.Layout(width="10em"))
        self.concurrency = w.BoundedIntText(value=concurrency, min=1, max=16, description="at once", layout=w.Layout(width="10em"))
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.copy_button = w.Button(description="Copy as cell", icon="copy")
        self.cell_text = w.Textarea(rows=4, layout=w.Layout(width="100%", display="none"))
        self.message = w.HTML("")
        self.output = w.VBox([])
        self.history_picker = w.Dropdown(options=[], description="history", layout=w.Layout(width="30em"))
        self.show_button = w.Button(description="Show")
        self.diff_button = w.Button(description="Compare with current")

        self.preset.observe(self._apply_preset, names="value")
        self.model.observe(lambda _: self.refresh_support(), names="value")
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.stop())
        self.copy_button.on_click(lambda _: self._show_cell())
        self.show_button.on_click(lambda _: self._show_history())
        self.diff_button.on_click(lambda _: self._diff_history())

        compare_row = w.HBox([self.mode, self.seeds, self.sweep, self.repeat, self.concurrency])
        controls = w.VBox([w.HBox([self.model, self.preset]), *(c.row for c in self.controls.values())],
                          layout=w.Layout(flex="0 0 auto"))  # never squeezed by a wide grid
        self.widget = w.VBox([
            self.prompt, self.system, compare_row,
            w.HBox([controls, w.VBox([w.HBox([self.run_button, self.stop_button, self.copy_button]), self.message, self.output],
                                      layout=w.Layout(flex="1 1 0%", min_width="20em", overflow="auto"))]),
            self.cell_text, w.HBox([self.history_picker, self.show_button, self.diff_button]),
        ])
        self.refresh_support()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        # Where widgets are not rendered (GitHub, a reopened notebook) say so, not the VBox repr.
        bundle: dict[str, Any] = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = "granite-magic panel (an interactive widget: run the cell in Jupyter to use it)"
        return bundle

    # --- settings --------------------------------------------------------------------

    def chosen_params(self) -> dict[str, Any]:
        """The raw values of every parameter whose "send" toggle is on."""
        return {name: c.raw() for name, c in self.controls.items() if c.send.value}

    def request(self) -> tuple[Turn, list[RunSpec] | None]:
        """The turn and (in compare mode) the grid; raises InvalidParameterError with the range."""
        turn = Turn(
            prompt=self.prompt.value.strip("\n"),
            system=self.system.value or None,
            model=self.model.value.strip() or None,
            base_url=self.base_url,
            params=self.chosen_params(),
            backend=self.backend,
            api=self.api,
        )
        if not turn.prompt.strip():
            raise errors.InvalidParameterError("the prompt is empty: type one above")
        if self.mode.value == "single":
            return turn, None
        sweep = dict(parse_sweep(text) for text in self.sweep.value.split(";") if text.strip())
        seeds = parse_seeds(self.seeds.value) if self.seeds.value.strip() else []
        return turn, plan_runs(seeds, sweep, self.repeat.value)

    def refresh_support(self) -> None:
        """Flag the controls of parameters the model's listing does not name."""
        turn = Turn(prompt="", model=self.model.value.strip() or None, base_url=self.base_url, backend=self.backend)
        supported = self.session.supported_parameters(turn)
        for name, control in self.controls.items():
            control.flag_unsupported(supported is not None and name not in supported)

    def _apply_preset(self, change: Mapping[str, Any]) -> None:
        for name, value in PRESETS.get(change["new"], {}).items():
            self.controls[name].set(value)

    def copy_as_cell(self, *, insert: bool = False) -> str:
        """The %%granite cell that sends exactly the request the panel would send.

        ``insert=True``, called from a cell, also offers it as the next cell.  (The
        button cannot insert: a front end takes new cells only in reply to running
        a cell, not to a widget event, so the button shows the text to copy.)
        """
        text = self._cell_text()
        if insert:
            from IPython import get_ipython

            shell = get_ipython()
            if shell is not None:
                shell.set_next_input(text, replace=False)
        return text

    def _cell_text(self) -> str:
        turn, specs = self.request()
        words = ["%%granite"]
        if turn.model:
            words += ["-m", turn.model]
        if turn.system:
            words += ["-s", turn.system]
        if turn.base_url:
            words += ["--base-url", turn.base_url]
        if turn.backend:
            words += ["--backend", turn.backend]
        if turn.api != "chat":
            words += ["--api", turn.api]
        grid_seeds = specs is not None and bool(self.seeds.value.strip())
        for name, value in turn.params.items():
            if name == "seed" and grid_seeds:
                continue  # every column's seed comes from --seeds
            option = self.controls[name].param.option
            if name == "stop":
                for sequence in value:
                    words += [option, sequence]
            else:
                words += [option, json.dumps(value) if name == "logit_bias" else repr(value)]
        if specs is not None:
            words += _grid_options(self)
        if "{" in turn.prompt:
            words.append("--no-interpolate")
        return " ".join(shlex.quote(w) if i else w for i, w in enumerate(words)) + "\n" + turn.prompt

    def _show_cell(self) -> None:
        try:
            self.cell_text.value = self.copy_as_cell()
        except errors.InvalidParameterError as exc:
            self._say(str(exc), error=True)
            return
        self.cell_text.layout.display = ""
        self._say("Copy the cell below into a new cell (or run p.copy_as_cell(insert=True)): it sends the same request.")

    # --- running -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return not self._idle.is_set()

    def run(self) -> None:
        """Start a run and return at once; it streams on the background loop."""
        if self.running:
            self._say("Already running: press Stop first.", error=True)
            return
        try:
            turn, specs = self.request()
            job, view, coro = self._start(turn, specs)
        except errors.InvalidParameterError as exc:
            self._say(f"{exc} (nothing was sent)", error=True)
            return
        self._idle.clear()
        self.output.children = (view.widget,)
        view.show()
        self._set_running(True)
        self._say("")
        self._task = job.loop.submit(coro)

    def _start(self, turn: Turn, specs: list[RunSpec] | None) -> tuple[Any, WidgetView | GridView, Any]:
        title = describe_params(self.session.label(turn), turn.params)
        if specs is None:
            job = self.session.start(turn)
            view = WidgetView(title, rate=self.rate, embedded=True)
            return job, view, self._drive(job.stream(view), lambda: self._finish_single(job, view))
        grid_job = self.session.start_compare(turn, specs, concurrency=self.concurrency.value)
        grid = GridView(title, [s.label for s in specs], rate=self.rate, embedded=True)
        return grid_job, grid, self._drive(grid_job.stream(grid), lambda: self._finish_grid(grid_job, grid))

    async def _drive(self, stream: Any, finish: Any) -> None:
        # ``finish`` runs after the stream has ended or been cancelled and has closed its connection.
        try:
            await stream
        finally:
            finish()

    def stop(self) -> None:
        """Cancel the run in progress; what arrived is kept and shown as partial."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run has finished (for scripts and tests)."""
        return self._idle.wait(timeout)

    def _finish_single(self, job: Any, view: WidgetView) -> None:
        result, error = self.session.finish(job, cancelled=STOPPED)
        view.finish(result)
        self._record(result, view.title)
        self._say(error or "", error=bool(error))

    def _finish_grid(self, job: Any, grid: GridView) -> None:
        comparison = self.session.finish_compare(job, cancelled=STOPPED)
        grid.finish(comparison)
        self._record(comparison, grid.title + f" · {len(comparison.results)} runs")
        failed = [f"{label}: {error}" for label, error in zip(comparison.labels, comparison.errors, strict=True) if error]
        self._say("<br>".join(html.escape(f) for f in failed), error=bool(failed), escaped=True)

    def _record(self, outcome: Result | Comparison, label: str) -> None:
        self.results = outcome
        entry = HistoryEntry(len(self.history) + 1, f"#{len(self.history) + 1} {label}", outcome)
        self.history.append(entry)
        self.history_picker.options = [(e.label, e.number) for e in reversed(self.history)]
        self.history_picker.value = entry.number
        self._set_running(False)
        self._idle.set()

    def _set_running(self, running: bool) -> None:
        self.run_button.disabled = running
        self.stop_button.disabled = not running

    def _say(self, text: str, *, error: bool = False, escaped: bool = False) -> None:
        body = text if escaped else html.escape(text)
        self.message.value = f'<div style="color:{"#b00020" if error else "inherit"}">{body}</div>' if text else ""

    # --- history ---------------------------------------------------------------------------

    def _picked(self) -> HistoryEntry | None:
        number = self.history_picker.value
        return next((e for e in self.history if e.number == number), None)

    def _show_history(self) -> None:
        entry = self._picked()
        if entry is None:
            return
        self._show_static(entry.outcome)

    def _diff_history(self) -> None:
        entry = self._picked()
        if entry is None or not self.history:
            return
        current = self.history[-1]
        comparison = Comparison(
            prompt="", specs=[RunSpec(f"#{entry.number}", {}), RunSpec(f"#{current.number} (current)", {})],
            results=[entry.reference, current.reference], errors=[None, None],
        )
        self._show_static(comparison)

    def _show_static(self, outcome: Result | Comparison) -> None:
        import ipywidgets as w

        from .grid import comparison_bundle
        from .render import reply_bundle

        data, metadata = comparison_bundle(outcome) if isinstance(outcome, Comparison) else reply_bundle(outcome)
        out = w.Output()
        out.outputs = ({"output_type": "display_data", "data": data, "metadata": metadata},)
        self.output.children = (out,)


def _grid_options(panel: Panel) -> list[str]:
    words = []
    if panel.seeds.value.strip():
        words += ["--seeds", panel.seeds.value.strip().replace(" ", "")]
    for text in panel.sweep.value.split(";"):
        if text.strip():
            words += ["--sweep", text.strip().replace(" ", "")]
    if panel.repeat.value != 1:
        words += ["--repeat", str(panel.repeat.value)]
    words += ["--concurrency", str(panel.concurrency.value)]
    return words


def panel(prompt: str = "", **kwargs: Any) -> Panel:
    """Show a parameter panel (the same as ``%granite panel``), sharing the magic's session if loaded."""
    from IPython import get_ipython

    from .session import default_session

    shell = get_ipython()
    magics = next((c for c in getattr(shell, "configurables", []) if type(c).__name__ == "GraniteMagics"), None)
    session = magics.session if magics is not None else default_session()
    return Panel(session, prompt=prompt, **kwargs)
