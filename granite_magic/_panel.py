"""The parameter panel: tune, Run, Stop, compare seeds, copy the settings as a cell.

``Panel`` is a widget (a ``VBox``), so it can sit inside other layouts.  Every
control comes from the parameter table; the request it sends is a
``CellRequest``, the same value a ``%%granite`` cell parses into, so "Copy as
cell" is ``to_cell`` of it.  Run prepares the request in the kernel's thread (a
bad value is refused in place before anything is sent), then streams on the
background loop: the button's callback returns at once, Stop cancels the
stream, and other cells can run meanwhile.
"""

from __future__ import annotations

import html
import json
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from . import _errors as errors
from . import _params
from ._advice import ADVICE, explain, worded
from ._cell import CellRequest, to_cell
from ._comparison import Comparison, Run, RunSpec, parse_seeds, parse_sweeps
from ._grid import GridView
from ._params import Param, Sampling
from ._render import WidgetView, describe_params
from ._result import Result
from ._session import Session, Target, Turn, shared_session

if TYPE_CHECKING:
    from ._spec import OutputSchema

__all__ = ["PRESETS", "Panel", "panel"]

PRESETS: dict[str, dict[str, Any]] = {
    "precise": {"temperature": 0.2, "top_p": 0.9},
    "balanced": {"temperature": 0.7, "top_p": 0.95},
    "creative": {"temperature": 1.1, "top_p": 0.98, "presence_penalty": 0.3},
}

AGAIN = "press Run again"


@dataclass
class ParamControl:
    """One parameter's row: a "send" toggle, the value control, its range, and a flag."""

    param: Param
    send: w.Checkbox
    value: w.Widget
    flag: w.HTML
    row: w.HBox

    def raw(self) -> Any:
        if self.param.kind == "bool":  # its send toggle is its value: on sends true
            return True
        value = self.value.value
        if self.param.kind == "stop":
            return _stop_sequences(value)
        return value

    def set(self, value: Any) -> None:
        if self.param.kind == "bool":
            self.send.value = bool(value)
            return
        if self.param.kind == "stop":
            value = "\n".join(value) if isinstance(value, (list, tuple)) else str(value)
        elif self.param.kind == "logit_bias" and not isinstance(value, str):
            value = json.dumps({str(k): v for k, v in value.items()})
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


def _value_control(param: Param, tip: str) -> w.Widget:
    layout = w.Layout(width="12em")
    value: w.Widget
    if param.kind == "float" and param.minimum is not None and param.maximum is not None:
        low = float(param.minimum) + (param.step or 0.01 if param.exclusive_minimum else 0)
        start = float(param.default if param.default is not None else low)
        value = w.FloatSlider(value=start, min=low, max=float(param.maximum), step=param.step or 0.01,
                              readout_format=".2f", continuous_update=False, layout=layout, description_allow_html=False)
    elif param.kind == "int":
        start = param.start if param.start is not None else (param.default if param.default is not None else 0)
        # Not a bounded box: it would clamp a value typed past its range without a word, and Copy as cell would
        # show the clamped value. A value out of range is refused at Run, naming the control and the range.
        value = w.IntText(value=start, layout=layout)
    elif param.kind == "bool":  # the send toggle alone says it: on sends true, off sends nothing
        value = w.HTML('<span style="opacity:.7">tick to ask for it</span>', layout=layout)
    elif param.kind == "choice":
        value = w.Text(value="auto", placeholder="auto, none, required or a function", layout=layout)
    elif param.kind == "stop":
        value = w.Textarea(placeholder="one stop sequence per line (or a JSON list)", rows=2, layout=layout)
    else:
        value = w.Text(placeholder='{"token id": bias}', layout=layout)
    value.tooltip = tip
    return value


def _control(param: Param) -> ParamControl:
    tip = f"{param.help} Valid: {param.range_text}. When not sent: {param.default_text}."
    value = _value_control(param, tip)
    send = w.Checkbox(value=False, description=param.name, indent=False, layout=w.Layout(width="12.5em"),
                      tooltip=f"ticked: {param.name} is sent with the request; not ticked: the provider's own ({param.default_text})")
    note = w.HTML(f'<span style="opacity:.7;font-size:80%;white-space:nowrap" title="{html.escape(tip)}">'
                  f'{html.escape(param.short_range)}</span>')
    flag = w.HTML("")
    control = ParamControl(param, send, value, flag, w.HBox([send, value, note, flag]))
    if param.kind != "bool":
        # Touching a value means "use this": it is sent from then on (untick to send nothing again).
        value.observe(lambda _: setattr(send, "value", True), names="value")
    return control


@dataclass
class HistoryEntry:
    number: int
    label: str
    outcome: Result | Comparison

    @property
    def reference(self) -> Result:
        return self.outcome if isinstance(self.outcome, Result) else self.outcome.results[0]


# Controls whose label is not the parameter's name (an error that names the parameter names the control).
_CONTROL_LABELS = {"concurrency": "at once", "seeds": "seeds", "repeat": "repeat", "sweep": "sweep", "model": "model", "raw": "raw",
                   "schema": "schema"}

class Panel(w.VBox):  # type: ignore[misc]
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
        api: str | None = None,
        seeds: str = "1-3",
        sweep: str = "",
        mode: str = "single",
        raw: bool = False,
        schema: str = "",
        **params: Any,
    ) -> None:
        super().__init__()
        self.session = session
        self.target_fields: dict[str, Any] = {"base_url": base_url, "backend": backend, "api": api}
        Turn("", **self.target_fields)  # refuses a bad base URL, backend or API before any widget is made
        self.results: Result | Comparison | Any = None  # a Result, a Comparison, or a prompt over rows' DataFrame
        self.history: list[HistoryEntry] = []
        self.support_checked = threading.Event()
        self._task: Any = None
        self._copy_count = 0
        self._idle = threading.Event()
        self._idle.set()

        self.controls = {p.name: _control(p) for p in _params.PARAMETERS}
        # %config GraniteMagics.default_params start switched on, like the cells they apply to
        for name, value in (session.settings.default_params | Sampling(params)).items():
            self.controls[name].set(value)
        self._make_inputs(prompt, system, model, seeds, sweep, mode, raw, schema)
        self._make_buttons()
        self.children = self._layout()
        self.refresh_support()

    def _make_inputs(self, prompt: str, system: str, model: str | None, seeds: str, sweep: str, mode: str, raw: bool,
                     schema: str) -> None:
        settings = self.session.settings
        self.prompt = w.Textarea(value=prompt, placeholder="Prompt", rows=4, layout=w.Layout(width="100%"))
        self.system = w.Textarea(value=system, placeholder="System prompt (optional)", rows=2, layout=w.Layout(width="100%"))
        self.model = w.Text(value=model or "", placeholder=settings.model, description="model", layout=w.Layout(width="24em"))
        self.preset = w.Dropdown(options=["(preset)", *PRESETS], value="(preset)", description="preset", layout=w.Layout(width="14em"))
        self.mode = w.ToggleButtons(options=["single", "compare"], value=mode)
        self.schema = w.Text(value=schema, description="schema", layout=w.Layout(width="100%"),
                             placeholder="optional: fields like  sentiment positive|negative|neutral, reason  (or a class's name)")
        self.over = w.Dropdown(options=[NO_ROWS, *_tables()], value=NO_ROWS, description="over",
                               tooltip="run the prompt once per row of a table of the notebook ({column} is the row's value)",
                               layout=w.Layout(width="18em"))
        self.raw = w.Checkbox(value=raw, description="raw: continue the prompt as written (no chat template)", indent=False,
                              layout=w.Layout(width="auto"))
        self.seeds = w.Text(value=seeds, description="seeds", placeholder="1-4 or 1,2,3", layout=w.Layout(width="16em"))
        self.sweep = w.Text(value=sweep, description="sweep", placeholder="temperature=0,0.7,1.4", layout=w.Layout(width="22em"))
        self.repeat = w.IntText(value=1, description="repeat", layout=w.Layout(width="10em"))  # checked at Run, never clamped
        self.concurrency = w.IntText(value=settings.concurrency, description="at once", layout=w.Layout(width="10em"))
        self.preset.observe(self._apply_preset, names="value")
        self.model.observe(lambda _: self.refresh_support(), names="value")
        self.mode.observe(lambda _: self._show_mode(), names="value")
        self.raw.observe(lambda _: self._show_raw(), names="value")
        _after_every_cell(weakref.WeakMethod(self.refresh_tables))
        self._show_raw()

    def _make_buttons(self) -> None:
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.copy_button = w.Button(description="Copy as cell", icon="copy")
        self.cell_text = w.Textarea(rows=4, layout=w.Layout(width="100%", display="none"))
        self.clipboard = w.Output(layout=w.Layout(display="none"))  # where the copy to the clipboard runs
        self.message = w.HTML("")
        self.output = w.VBox([])
        self.history_picker = w.Dropdown(options=[], description="history", layout=w.Layout(width="30em"))
        self.show_button = w.Button(description="Show")
        self.diff_button = w.Button(description="Compare with current", layout=w.Layout(width="auto"))
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.stop())
        self.copy_button.on_click(lambda _: self._show_cell())
        self.show_button.on_click(lambda _: self._show_history())
        self.diff_button.on_click(lambda _: self._diff_history())

    def _layout(self) -> tuple[w.Widget, ...]:
        self.compare_fields = w.HBox([self.seeds, self.sweep, self.repeat, self.concurrency], layout=w.Layout(flex_flow="row wrap"))
        mode_row = w.HBox([self.mode, self.raw, self.over, self.compare_fields], layout=w.Layout(flex_flow="row wrap"))
        controls = w.VBox([w.HBox([self.model, self.preset], layout=w.Layout(flex_flow="row wrap")),
                           *(c.row for c in self.controls.values())],
                          layout=w.Layout(flex="0 0 auto"))  # never squeezed by a wide grid
        results = w.VBox([w.HBox([self.run_button, self.stop_button, self.copy_button]), self.message, self.output, self.clipboard],
                         layout=w.Layout(flex="1 1 24em", min_width="20em", overflow="auto"))
        self._show_mode()
        # In a narrow notebook the results go below the controls instead of past the right edge.
        return (self.prompt, self.system, self.schema, mode_row, w.HBox([controls, results], layout=w.Layout(flex_flow="row wrap")),
                self.cell_text, w.HBox([self.history_picker, self.show_button, self.diff_button], layout=w.Layout(flex_flow="row wrap")))

    def _show_mode(self) -> None:
        """Only what the mode uses: the seeds, sweep, repeat and at-once fields in compare mode."""
        self.compare_fields.layout.display = "" if self.mode.value == "compare" else "none"

    def refresh_tables(self) -> None:
        """The over selector lists the notebook's tables as they are now: one made after the panel is offered too,
        and the chosen one stays chosen (if it is gone, Run says so)."""
        chosen = self.over.value
        names = [NO_ROWS, *_tables()]
        self.over.options = names if chosen in names else [*names, chosen]
        self.over.value = chosen

    def _show_raw(self) -> None:
        """A raw completion has no system prompt: its box is greyed out and says so (its text is kept for later)."""
        self.system.disabled = self.raw.value
        self.system.placeholder = "No system prompt: raw continues the prompt as written" if self.raw.value else "System prompt (optional)"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        # Where widgets are not rendered (GitHub, a reopened notebook) say so, not the VBox repr.
        bundle: dict[str, Any] | None = super()._repr_mimebundle_(**kwargs)
        if bundle is not None:
            bundle["text/plain"] = "granite-magic panel (an interactive widget: run the cell in Jupyter to use it)"
        return bundle

    # --- settings --------------------------------------------------------------------

    def chosen_params(self) -> dict[str, Any]:
        """The raw values of every parameter whose "send" toggle is on."""
        return {name: c.raw() for name, c in self.controls.items() if c.send.value}

    def cell_request(self) -> CellRequest:
        """What Run would send, validated: the same value a ``%%granite`` cell parses into."""
        raw = self.raw.value
        turn = Turn(prompt=self.prompt.value.strip("\n"), system=None if raw else self.system.value or None,
                    model=self.model.value.strip() or None, sampling=Sampling(self.chosen_params()), raw=raw,
                    schema=self._schema(), **self.target_fields)
        if not turn.prompt.strip():
            raise errors.InvalidParameterError("the prompt is empty: type one above")
        over = self.over.value if self.over.value != NO_ROWS else None
        if over is not None:  # {column} is each row's value, filled per row: the prompt is kept as typed
            _namespace_rows(over)
        if self.mode.value == "single":
            return CellRequest(turn, over=over, literal=over is not None)
        request = CellRequest(
            turn, over=over, literal=over is not None,
            seeds=tuple(parse_seeds(self.seeds.value)) if self.seeds.value.strip() else (),
            sweeps=parse_sweeps(text for text in self.sweep.value.split(";") if text.strip()),
            repeat=self.repeat.value, concurrency=self.concurrency.value,
        )
        request.plan()  # refuses a grid that cannot run, here rather than on the loop
        return request

    def _schema(self) -> OutputSchema | None:
        """The schema box as a cell's ``--schema`` reads it: a field list, or the name of a class of the notebook."""
        text = self.schema.value.strip()
        if not text:
            return None
        from IPython import get_ipython

        from ._cell import Reading, read_schema

        shell = get_ipython()
        return read_schema(text, Reading(shell.user_ns if shell is not None else {}, Path.cwd()))

    def refresh_support(self) -> None:
        """Flag (in the background) the controls of parameters the model's listing does not name."""
        self.support_checked.clear()
        try:
            target = self.session.resolve(Turn("", model=self.model.value.strip() or None, **self.target_fields))
        except errors.GraniteError:
            self.support_checked.set()
            return
        target.client.loop.submit(self._flag_support(target))

    async def _flag_support(self, target: Target) -> None:
        self.model.placeholder = target.label  # the model that runs when the box is empty (the local GGUF's name, say)
        try:
            supported = await target.client.supported_parameters(target.model)
            for name, control in self.controls.items():
                control.flag_unsupported(supported is not None and name not in supported)
        finally:
            self.support_checked.set()

    def _apply_preset(self, change: Mapping[str, Any]) -> None:
        for name, value in PRESETS.get(change["new"], {}).items():
            self.controls[name].set(value)

    def copy_as_cell(self, *, insert: bool = False) -> str:
        """The %%granite cell that sends exactly the request the panel would send.

        ``insert=True``, called from a cell, also offers it as the next cell.  (The
        button cannot insert: a front end takes new cells only in reply to running
        a cell, not to a widget event, so the button shows the text to copy.)
        """
        text = to_cell(self.cell_request())
        if insert:
            from IPython import get_ipython

            shell = get_ipython()
            if shell is not None:
                shell.set_next_input(text, replace=False)
        return text

    def _show_cell(self) -> None:
        """The button: the cell goes to the clipboard (paste it into a new cell) and is shown below, selectable."""
        try:
            text = self.copy_as_cell()
        except errors.InvalidParameterError as exc:
            self._say(worded(exc, self._spell), error=True)
            return
        self.cell_text.value = text
        self.cell_text.layout.display = ""
        self._copy_count += 1
        status = f"gm-copy-{id(self)}-{self._copy_count}"
        self._say(f'<span id="{status}">Copying the cell to the clipboard...</span> It sends the same request as Run.', escaped=True)
        # A widget event cannot add a cell (front ends take new cells only in reply to running one), but the page
        # can write to the clipboard, and say whether it could, in place of the line above.
        script = (f"const s = document.getElementById({json.dumps(status)});"
                  f"navigator.clipboard.writeText({json.dumps(text)}).then("
                  "() => { if (s) s.textContent = 'Copied: paste it into a new cell (Ctrl+V).'; },"
                  "() => { if (s) s.textContent = 'The browser did not allow copying: select the cell below and copy it.'; });")
        self.clipboard.outputs = ({"output_type": "display_data", "data": {"application/javascript": script,
                                                                            "text/plain": ""}, "metadata": {}},)

    def _spell(self, name: str) -> str | None:
        """A parameter as the panel shows it: the label of its control (None: it has none, keep ``name=``)."""
        label = _CONTROL_LABELS.get(name, name if name in self.controls else None)
        return None if label is None else f"{label} "

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
            request = self.cell_request()
            target = self.session.resolve(request.turn)
            loop, view, work = self._start(request, target)
        except errors.InvalidParameterError as exc:
            advice = ADVICE.get(exc.kind)
            self._say(f"{worded(exc, self._spell)} (nothing was sent)" + (f". {advice}" if advice else ""), error=True)
            return
        self._idle.clear()
        self.output.children = (view.widget,)
        view.show()
        self._set_running(True)
        self._say("")
        self._task = loop.submit(work)

    def _start(self, request: CellRequest, target: Target) -> tuple[Any, Any, Coroutine[Any, Any, None]]:
        rate = self.session.settings.updates_per_second
        specs = request.plan()
        if request.over is not None:
            return self._start_rows(request, target, specs or [])
        if specs is None:
            job = self.session.start(request.turn, target, kind="panel")
            view = WidgetView(describe_params(target.label_for(job.request), job.request.sampling), rate=rate, embedded=True)
            view.monospace = request.turn.schema is not None
            return job.loop, view, self._drive(job.stream(view), lambda: self._finish_single(job, view))
        grid_job = self.session.start_compare(request.turn, specs, concurrency=request.concurrency, target=target)
        varied = {name for spec in specs for name in spec.params}  # each column says its own: not in the title
        shared = {name: value for name, value in grid_job.base.items() if name not in varied}
        grid = GridView(describe_params(target.label_for(grid_job.columns[0].request), shared), [s.label for s in specs], rate=rate, embedded=True)
        return grid_job.loop, grid, self._drive(grid_job.stream(grid), lambda: self._finish_grid(grid_job, grid))

    def _start_rows(self, request: CellRequest, target: Target, settings: list[RunSpec]) -> tuple[Any, Any, Coroutine[Any, Any, None]]:
        """A prompt over the chosen table's rows, as a cell's ``--over`` runs it: progress here, the frame in ``results``."""
        from ._rows import read_rows, row_prompts
        from ._rowsview import RowsView

        rows = read_rows(_namespace_rows(request.over or ""))
        prompts = row_prompts(request.turn.prompt, rows, system=request.turn.system)
        job = self.session.start_map(request.turn, prompts, settings=settings,
                                     concurrency=request.concurrency, target=target)
        title = f"{describe_params(target.label_for(job.columns[0].request), job.base)} · over {request.over}"
        view = RowsView(title, len(job.columns), rate=self.session.settings.updates_per_second, embedded=True)

        def finish() -> None:
            frame = self.session.finish_map(job, rows, settings)
            view.finish(frame)
            self.results = frame

        return job.loop, view, self._drive(job.stream(view), finish)

    async def _drive(self, stream: Coroutine[Any, Any, None], finish: Callable[[], None]) -> None:
        # ``finish`` runs after the stream has ended or been cancelled and has closed its connection;
        # whatever happens, the panel ends usable (Run enabled, Stop disabled).
        try:
            await stream
        finally:
            try:
                finish()
            except Exception as exc:  # showing the outcome failed: say so, and still become usable
                self._say(f"Could not show the result ({type(exc).__name__}: {exc}).", error=True)
            finally:
                self._set_running(False)
                self._idle.set()

    def stop(self) -> None:
        """Cancel the run in progress; what arrived is kept and shown as partial."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run has finished (for scripts and tests)."""
        return self._idle.wait(timeout)

    def _finish_single(self, job: Any, view: WidgetView) -> None:
        result, error = self.session.finish(job)
        view.finish(result)
        self._record(result, view.title)
        message = explain(error, result, again=AGAIN, interrupted="Stopped", spell=self._spell)
        self._say(" ".join([message or "", *job.warnings]).strip(), error=bool(message))

    def _finish_grid(self, job: Any, grid: GridView) -> None:
        comparison = self.session.finish_compare(job)
        grid.finish(comparison)
        labels = comparison.labels
        runs = ", ".join(labels) if len(labels) <= 4 else f"{labels[0]} ... {labels[-1]}, {len(labels)} runs"
        self._record(comparison, f"{grid.title} · {runs}")
        failed = [f"{run.spec.label}: {run.error}" for run in comparison.runs if run.error]
        lines = [*failed, *job.warnings]  # as under a cell's grid: parameters the provider may ignore
        self._say("<br>".join(html.escape(line) for line in lines), error=bool(failed), escaped=True)

    def _record(self, outcome: Result | Comparison, label: str) -> None:
        self.results = outcome
        entry = HistoryEntry(len(self.history) + 1, f"#{len(self.history) + 1} {label}", outcome)
        self.history.append(entry)
        self.history_picker.options = [(e.label, e.number) for e in reversed(self.history)]
        self.history_picker.value = entry.number

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
        if entry is not None:
            self._show_static(entry.outcome)

    def _diff_history(self) -> None:
        entry = self._picked()
        if entry is None or not self.history:
            return
        current = self.history[-1]
        runs = [Run(RunSpec(f"#{entry.number}", Sampling()), entry.reference),
                Run(RunSpec(f"#{current.number} (current)", Sampling()), current.reference)]
        self._show_static(Comparison(prompt="", runs=runs))

    def _show_static(self, outcome: Result | Comparison) -> None:
        from ._grid import comparison_bundle
        from ._render import reply_bundle

        data, metadata = comparison_bundle(outcome) if isinstance(outcome, Comparison) else reply_bundle(outcome)
        out = w.Output()
        out.outputs = ({"output_type": "display_data", "data": data, "metadata": metadata},)
        self.output.children = (out,)


NO_ROWS = "(no table)"  # the "over" selector's first choice: one prompt, not one per row


def _after_every_cell(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    """Call ``method`` after every cell the notebook runs, while its panel lives (a panel closed and dropped is not
    kept alive by this, and its hook does nothing)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        return

    def after(*_: Any) -> None:
        live = method()
        if live is not None:
            live()

    shell.events.register("post_run_cell", after)


def _user_namespace() -> dict[str, Any]:
    from IPython import get_ipython

    shell = get_ipython()
    return shell.user_ns if shell is not None else {}


def _tables() -> list[str]:
    """The notebook's variables a prompt can go over: DataFrames, Series, and lists of strings or of dicts (not
    IPython's own, such as ``In``, the list of the cells' sources)."""
    from IPython import get_ipython

    from ._rows import looks_like_rows

    shell = get_ipython()
    hidden = shell.user_ns_hidden if shell is not None else {}
    return sorted(name for name, value in _user_namespace().items()
                  if not name.startswith("_") and name not in hidden and looks_like_rows(value))


def _namespace_rows(name: str) -> Any:
    value = _user_namespace().get(name)
    if value is None:
        raise errors.InvalidParameterError(f"over={name!r}: the notebook no longer defines {name}", names=("over",))
    return value


def panel(prompt: str = "", **kwargs: Any) -> Panel:
    """Show a parameter panel (the same as ``%granite panel``), sharing the magic's session if loaded."""
    from IPython import get_ipython

    from ._kernel import session_for

    session = session_for(get_ipython()) or shared_session()
    return Panel(session, prompt=prompt, **kwargs)
