"""The ``%%granite`` cell magic and the ``%granite`` line magic: IPython glue.

Front end only: parse the cell (``_cell``), resolve its target once, show it,
and phrase failures with advice (``_advice``).  HTTP and JSON live below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shlex
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Bool, Dict, Enum, Float, Integer, TraitType, Unicode

from . import _errors as errors
from ._settings import BACKENDS, configurable
from ._vocab import APIS

if TYPE_CHECKING:
    from IPython.core.magic_arguments import MagicArgumentParser

    from ._cell import CellRequest
    from ._result import Result
    from ._session import CompareJob, Job, Session, Target
    from ._settings import Settings

# Loading the extension imports only this module, the grammar, the settings, the parameter table
# and the errors.  The option parser, the client, asyncio, httpx and ipywidgets are made or imported
# by the warm-up thread once the loading cell has finished, or else by the first cell.

__all__ = ["GraniteMagics", "register", "unregister"]

# How each type of Settings field becomes a %config trait, given its default and help.  Every trait may be left
# unset ("" or None): then the environment's value (for a field with an ``env``), else the field's default.
_TRAIT_TYPES: dict[str, Callable[[Any, str], TraitType[Any, Any]]] = {
    "str": lambda value, text: Unicode(value or "", help=text),
    "CacheMode": lambda value, text: Unicode(value or "", help=text),  # Settings checks it (in any case)
    "Backend": lambda value, text: Enum(BACKENDS, value, allow_none=True, help=text),
    "Api": lambda value, text: Enum(APIS, value, allow_none=True, help=text),
    "bool": lambda value, text: Bool(value, help=text),
    "int": lambda value, text: Integer(value, allow_none=True, help=text),
    "float": lambda value, text: Float(value, allow_none=True, help=text),
    "float | None": lambda value, text: Float(value, allow_none=True, help=text),
    "Sampling": lambda value, text: Dict(help=text),
}


def _settings_trait(setting: dataclasses.Field[Any]) -> TraitType[Any, Any]:
    env = setting.metadata["env"]
    default = None if setting.default is dataclasses.MISSING else setting.default
    text = setting.metadata["help"] + (f" (unset: {env}, else {'no limit' if default is None else default})" if env else "") + "."
    make = _TRAIT_TYPES.get(str(setting.type))
    if make is None:
        raise TypeError(f"Settings.{setting.name} is a {setting.type}: say in _TRAIT_TYPES which %config trait it is")
    return make(None if env else default, text).tag(config=True)


# %config trait -> the Settings field it sets: one per field (read_timeout_s is GraniteMagics.read_timeout).
TRAIT_SETTINGS = {setting.name.removesuffix("_s"): setting.name for setting in configurable()}

# A grid whose worst case is above this says so before it starts, so a large sweep never surprises.
GRID_COST_NOTICE_USD = 0.01


@magics_class
class GraniteMagics(Magics):
    # One trait per Settings field, made from the field (TRAIT_SETTINGS); then the front end's own.
    locals().update({trait: _settings_trait(setting) for trait, setting in zip(TRAIT_SETTINGS, configurable(), strict=True)})
    live = Enum(["auto", "widget", "terminal"], "auto", help="Streaming view: a widget in a kernel, printed text in a terminal.").tag(config=True)

    def __init__(self, shell: InteractiveShell | None = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._session: Session | None = None
        self._environment: dict[str, str] = {}  # the GRANITE_* variables the settings were last read with
        self.warm_up: threading.Thread | None = None  # started when the cell that loaded the extension has finished
        self._used = threading.Event()  # set by the first %%granite or %granite: the warm-up stops there
        self._refused_env: set[str] = set()  # GRANITE_* values already said to be refused
        self._reverting = False
        self.observe(self._configure, names=list(TRAIT_SETTINGS))

    @property
    def parser(self) -> MagicArgumentParser:
        return _parser()

    def start_warm_up(self, result: Any = None) -> None:
        """After the cell that loaded the extension: do in a daemon thread what the first cell would wait for."""
        if self.shell is not None:
            self.shell.events.unregister("post_run_cell", self.start_warm_up)
        if self.warm_up is None:
            self.warm_up = threading.Thread(target=self._warm_up, name="granite-magic warm-up", daemon=True)
            self.warm_up.start()

    def _warm_up(self) -> None:
        """Build the option parser, import what a cell runs (the session, both backends' clients, the views;
        ipywidgets when the view is a widget), read the CA bundle, start the background loop and send one request
        there to a server of its own on the loopback interface, so httpx's first connection (which imports its
        async backend and HTTP/1.1 parser) is not a cell's.  Once a ``%%granite`` or ``%granite`` has started,
        the remaining steps are left to it, so that a cell run at once does not also wait for work it may not need.

        Imports take CPython's per-module import locks, so a cell that starts meanwhile waits for a module half
        imported here instead of importing it twice; ``get_loop`` and ``tls_context`` make their one object under a
        lock or a cache.  Nothing here touches the session, the settings or another host."""

        def modules() -> None:
            from . import _grid, _local, _render, _session  # noqa: F401

            if self._widgets():
                import ipywidgets  # noqa: F401

        def certificates() -> None:
            from ._client import tls_context

            tls_context()

        def connection() -> None:
            from ._runner import get_loop

            get_loop().run(_first_connection())

        for step in (_parser, modules, certificates, connection):
            if self._used.is_set():
                return
            try:
                step()
            except Exception:  # the first cell does the same work and reports what fails there
                return

    @property
    def session(self) -> Session:
        if self._session is None:
            from ._session import Session

            shell = self.shell
            self._environment = _granite_environment()
            self._session = Session(self.settings(), cell_number=lambda: _cell_number(shell))
            self._session.budget_setting = self._budget_setting()
        return self._session

    def current_session(self) -> Session:
        """The session as the next cell would find it: what the panel and the Python API run in, in this kernel."""
        self._follow_environment()
        return self.session

    def _follow_environment(self) -> None:
        """``%env GRANITE_BASE_URL=...`` after loading takes effect from the next cell, as ``%config`` does."""
        if self._session is not None and (now := _granite_environment()) != self._environment:
            self._environment = now
            self._settle()

    def _settle(self) -> None:
        """The session's settings made again from the environment and ``%config``."""
        assert self._session is not None
        self._session.settings = self.settings()
        self._session.budget_setting = self._budget_setting()

    def _budget_setting(self) -> str:
        """Where this kernel's budget is set, which a refusal (a Python call's too) says to raise."""
        from ._ledger import BUDGET_VARIABLE

        return "%config GraniteMagics.budget_usd" if self.trait_values()["budget_usd"] is not None else BUDGET_VARIABLE

    def settings(self) -> Settings:
        """The environment's defaults with this kernel's ``%config`` values over them."""
        from ._params import Sampling
        from ._settings import Settings

        values = {field: getattr(self, trait) for trait, field in TRAIT_SETTINGS.items()}
        values["default_params"] = Sampling(values["default_params"])
        refused: list[str] = []  # an invalid GRANITE_* value is refused where it is set, once, and not used
        settings = Settings.from_env(refused=refused, **{k: v for k, v in values.items() if v not in ("", None)})
        for reason in refused:
            if reason not in self._refused_env:
                self._refused_env.add(reason)
                _error(reason)
        return settings

    def _configure(self, change: Any) -> None:
        """A ``%config`` value is checked where it is set: an invalid one is refused in one line and the trait keeps
        its previous value, so nothing later (a cell, ``%granite usage``) meets it."""
        if self._reverting:
            return
        try:
            _check_setting(TRAIT_SETTINGS[change["name"]], change["new"])
        except errors.InvalidParameterError as exc:
            _error(f"%config GraniteMagics.{change['name']}: {exc.message}; it stays {change['old']!r}")
            self._reverting = True
            try:
                setattr(self, change["name"], change["old"])
            finally:
                self._reverting = False
            return
        if self._session is not None:
            self._settle()

    @line_cell_magic
    def granite(self, line: str, cell: str | None = None) -> Any:
        self._used.set()
        self._follow_environment()
        if cell is None:
            return self._subcommand(line)
        return self._cell(line, cell)

    # --- the cell magic -------------------------------------------------------------

    def _cell(self, line: str, cell: str) -> None:
        from ._cell import parse_cell

        try:
            request = parse_cell(line, cell, self._namespace(), defaults=self.session.settings.default_params, parser=self.parser,
                                 history=self._typed_cells())
            target = self.session.resolve(request.turn)
            for warning in request.warnings:
                _warn(warning)
            if request.dry_run and request.over is not None:
                self._plan(request, target)
            elif request.dry_run:
                self._dry_run(request, target)
            elif request.over is not None:
                self._map(request, target)
            elif request.tools:
                self._run_tools(request, target)
            elif request.is_grid:
                self._compare(request, self._start_grid(request, target))
            else:
                self._stream(request, self.session.start(request.turn, target))
        except errors.InvalidParameterError as exc:  # budget refusals too: nothing was sent
            _error(_refused(exc))
        except errors.GraniteError as exc:  # e.g. the local model could not be loaded before anything was sent
            from ._advice import explain
            from ._result import Result

            _error(explain(exc, Result()) or exc.message)
        return None

    def _typed_cells(self) -> list[str] | None:
        manager = getattr(self.shell, "history_manager", None)
        return list(manager.input_hist_raw) if manager is not None else None

    def _namespace(self) -> dict[str, Any]:
        return self.shell.user_ns if self.shell is not None else {}

    def _dry_run(self, request: CellRequest, target: Target) -> None:
        from ._markdown import fenced, markdown_literal

        wire = self.session.request(request.turn, target)
        if request.tools:  # what the first step of the tool loop sends: tools offered, or described in the system message
            wire = self._tool_loop_for(request, target, wire).request
        text = json.dumps(target.client.describe(wire), indent=2, ensure_ascii=False)
        where = target.client.destination(wire)
        size, prompt = self._prompt_size(target, wire)
        read = f"\n\n{fenced(prompt, 'text')}" if prompt is not None else ""  # verbatim: it is what the model reads
        _display({"text/plain": f"{where}\n{size}" + (f"\n{prompt}" if prompt is not None else "") + f"\n{text}",
                  "text/markdown": f"`{where}` (dry run: nothing sent)\n\n{markdown_literal(size)}{read}\n\n{fenced(text, 'json')}"})

    def _prompt_size(self, target: Target, request: Any) -> tuple[str, str | None]:
        """What a dry run says about size and cost (the prompt's tokens, exact where the client has the tokenizer,
        and the worst case), and the exact text the model reads when the client can tell."""
        from ._ledger import prompt_token_bound

        try:
            preview = target.client.prompt_preview(request)
        except errors.GraniteError as exc:  # no model to count with (not downloaded, or replaying without it)
            return f"prompt: not counted ({exc.message})", None
        if preview is not None:
            text, tokens = preview
            how = ("as written (a raw completion: no template)" if request.raw else
                   "framed as plain text (a base model: no chat template)" if target.client.framing == "plain" else
                   "its chat template applied")
            return f"prompt: {tokens:,} tokens, counted by the model's tokenizer; the model reads exactly this, {how}:", text
        estimate = sum(map(len, request.texts)) // 4 + 4 * len(request.messages)
        size = f"prompt: about {estimate:,} tokens (an estimate: 4 characters a token), at most {prompt_token_bound(request):,}"
        worst = self.session.worst_case(target, [request])
        cost = "worst-case cost unknown (no prices listed)" if worst is None else f"worst-case cost ${worst:.6f}"
        return f"{size}; {cost} (prompt at most x input price + max tokens x output price)", None

    def _start_grid(self, request: CellRequest, target: Target) -> CompareJob:
        specs = request.plan() or []
        job = self.session.start_compare(request.turn, specs, concurrency=request.concurrency, target=target)
        worst = self.session.worst_case(target, job.requests())
        if worst is not None and worst > GRID_COST_NOTICE_USD:
            _warn(f"these {len(specs)} runs cost at most ${worst:.4f} in all (worst case: every run to its token limit).")
        return job

    def _budget_note(self) -> str | None:
        budget = self.session.settings.budget_usd
        return None if budget is None else self.session.ledger.budget_line(budget)

    def _stream(self, request: CellRequest, job: Job) -> None:
        from ._render import describe_params

        view = self._view(describe_params(job.target.label_for(job.request), job.request.sampling))
        view.monospace = request.turn.schema is not None
        view.show()
        with contextlib.suppress(KeyboardInterrupt):  # the job keeps what arrived
            job.loop.run(job.stream(view))
        result, error = self.session.finish(job)
        self._finish(request, view, result, error, warnings=job.warnings, verified=job.verified,
                     lens=job if job.request.sampling.get("logprobs") else None, recorded=job.recorded)

    def _finish(self, request: CellRequest, view: Any, result: Result, error: errors.GraniteError | None, *,
                warnings: Sequence[str] = (), verified: str | None = None, lens: Job | None = None,
                stopped: str | None = None, recorded: bool = False) -> None:
        """How a single run ends, whatever ran it (one request or a tool loop): the final view, ``-o``, the next
        cell for ``-f code``, the warnings, the drift check, the lens, and one message saying what to do."""
        from ._advice import explain

        format_problem = _parse_format(result, request.format) if result.schema_method is None else None
        if request.out:  # first: whatever showing it meets, the result is the user's
            self._namespace()[request.out] = result
        notes = [note for note in ("recorded" if recorded else None, self._budget_note()) if note]  # the status line says so
        view.finish(result, request.format, {"chat": request.turn.chat} if request.turn.chat else None, note=" · ".join(notes) or None)
        if request.format == "code" and result.value and not result.partial and self.shell is not None:
            self.shell.set_next_input(result.value, replace=False)
        for warning in warnings:
            _warn(warning)
        if verified:  # stderr is for problems: a drift check that found none is news, not a warning
            good = verified.startswith(("identical", "no recording yet"))
            print(f"granite: {verified}", file=sys.stdout if good else sys.stderr, flush=True)
        if lens is not None:
            self._show_lens(lens, result)
        message = explain(error, result) or format_problem or stopped
        if message:
            _error(message)

    def _run_tools(self, request: CellRequest, target: Target) -> None:
        """A tool-using turn: every call shown as it happens, a block per call above the answer."""
        from ._advice import cell_spelling, respell
        from ._render import describe_params
        from ._toolrun import MAX_STEPS, plan_tools

        approval = self._approver() if request.approve else None
        plan = target.client.loop.run(plan_tools(target.client, target.model, request.tools, request.tool_mode,
                                                 approve=approval, max_steps=request.max_steps or MAX_STEPS))
        title = describe_params(target.label, request.turn.sampling) + f" · tools: {', '.join(t.name for t in plan.tools)} ({plan.mode})"
        view = self._view(title)
        view.show()
        if approval is not None:
            approval.view = view  # its status line says when the cell waits for an answer
        result, error, tools = self.session.run_tools(request.turn, target, plan, view)
        stopped = respell(tools.stopped, ("max_steps", "tool_choice"), cell_spelling) if tools.stopped else None
        self._finish(request, view, result, error, stopped=stopped)

    def _tool_loop_for(self, request: CellRequest, target: Target, wire: Any) -> Any:
        from ._toolrun import ToolLoop, plan_tools

        return ToolLoop(target.client.loop.run(plan_tools(target.client, target.model, request.tools, request.tool_mode)), wire)

    def _approver(self) -> Any:
        """Ask before each call, through the notebook's (or the terminal's) input prompt."""
        from ._approve import Approval

        return Approval()

    def _show_lens(self, job: Job, result: Result) -> None:
        """Under a --probs reply: the sampler lens with branching, or one line if no probabilities came back."""
        if not result.tokens:
            if result.text:
                _warn(NO_PROBS)
            return
        if not self._widgets():  # a terminal: say where the probabilities are
            print(f"granite: {len(result.tokens)} tokens with their probabilities are in the result's .tokens and "
                  ".tokens_frame() (keep it with -o NAME)", flush=True)
            return
        import ipywidgets as w
        from IPython.display import display

        from ._branch import Branches
        from ._lens import SAMPLER_NAMES, lens_view, run_settings
        from ._params import get_param

        branches = Branches(self.session, job.turn, job.target, result)
        sampling = job.request.sampling
        # the sliders start where the run was: what was sent, else what the backend says it samples with
        stated = job.target.client.sampler_defaults()
        documented = {name: get_param(name).default for name in SAMPLER_NAMES}
        run, label = run_settings(sampling, stated if stated is not None else documented, stated=stated is not None)
        lens = lens_view(result.tokens, result.probs_kind, on_branch=branches.branch, run=run, run_label=label,
                         listed=sampling.get("top_logprobs"))
        box = w.VBox([lens, branches.widget])
        # Where widgets are not rendered (GitHub, a notebook reopened without its widget state) a line says what was
        # here, not the VBox's repr; the shaded reply above stays in the notebook either way.
        bundle = dict(box._repr_mimebundle_() or {})
        bundle["text/plain"] = (f"sampling lens over {len(result.tokens)} tokens (an interactive widget: run the cell in Jupyter "
                                "to use it; the shaded reply above is saved)")
        display(bundle, raw=True)  # type: ignore[no-untyped-call]

    def _compare(self, request: CellRequest, job: CompareJob) -> None:
        from ._grid import GridView, TerminalGridView
        from ._render import describe_params

        varied = {name for spec in job.specs for name in spec.params}  # each column says its own: not in the title
        title = describe_params(job.target.label_for(job.columns[0].request), {name: value for name, value in job.base.items() if name not in varied})
        labels = [spec.label for spec in job.specs]
        grid: GridView | TerminalGridView
        rate = self.session.settings.updates_per_second
        grid = GridView(title, labels, rate=rate) if self._widgets() else TerminalGridView(title, labels)
        grid.show()
        with contextlib.suppress(KeyboardInterrupt):  # the job keeps what arrived
            job.loop.run(job.stream(grid))
        comparison = self.session.finish_compare(job)
        grid.finish(comparison)
        if request.out:
            self._namespace()[request.out] = comparison
        for warning in job.warnings:
            _warn(warning)
        failed = [f"{run.spec.label}: {run.error}" for run in comparison.runs if run.error]
        if failed:
            _error("some columns failed; their partial text is kept.\n  " + "\n  ".join(failed))
        stopped = [run.spec.label for run in comparison.runs if run.result.ended == "interrupted"]
        if stopped or comparison.not_run:
            kept = f"{', '.join(stopped)} kept what arrived" if stopped else ""
            never = f"{', '.join(comparison.not_run)} did not start" if comparison.not_run else ""
            _error(f"Interrupted: {'; '.join(part for part in (kept, never) if part)}.")
        note = self._budget_note()
        if note:
            print(f"granite: {note}", file=sys.stderr, flush=True)

    def _map(self, request: CellRequest, target: Target) -> None:
        """A prompt over rows: the worst case said first when it is worth saying, live progress, a summary that stays,
        and the result frame (``-o``).  An interrupt keeps every finished row, here and in the cache."""
        from ._render import describe_params
        from ._rows import expect_column, read_rows, row_prompts
        from ._rowsview import RowsView, TerminalRowsView

        rows = read_rows(self._namespace()[request.over or ""], limit=request.limit, sample=request.sample)
        expect = expect_column(request.expect, rows) if request.expect is not None else None
        settings = request.plan() or []
        prompts = row_prompts(request.turn.prompt, rows, system=request.turn.system)
        job = self.session.start_map(request.turn, prompts, settings=settings,
                                     concurrency=request.concurrency, target=target)
        worst = self.session.worst_case(target, job.requests())
        if worst is not None and worst > GRID_COST_NOTICE_USD:
            asked = f"{len(rows)} rows" + (f" x {len(settings)} settings" if settings else "")
            _warn(f"these {asked} cost at most ${worst:.4f} in all (worst case: every reply to its token limit).")
        title = f"{describe_params(target.label_for(job.columns[0].request), job.base)} · over {request.over}"
        rate = self.session.settings.updates_per_second
        runs = len(job.columns)
        view = RowsView(title, runs, rate=rate) if self._widgets() else TerminalRowsView(title, runs)
        view.show()
        if request.via == "live":
            with contextlib.suppress(KeyboardInterrupt):  # every finished row is kept
                job.loop.run(job.stream(view))
        else:
            self._by_batch(request, job)
        frame = self.session.finish_map(job, rows, settings, expect)
        if request.via == "jsonl":
            from ._batchrun import pending_rows, waiting_for_file

            frame = waiting_for_file(frame, job, [row for row in pending_rows(job)], request.batch_file or "",
                                     self.session.settings.cache_dir)
        view.finish(frame)
        if request.out:
            self._namespace()[request.out] = frame
        for warning in job.warnings:
            _warn(warning)
        skipped = int((frame["_status"] == "skipped").sum())
        if skipped:
            _error(f"{skipped} of {runs} runs did not start (interrupted, or the budget was spent); run the cell again: "
                   "finished rows come from the cache, only the rest are sent.")

    def _by_batch(self, request: CellRequest, job: Any) -> None:
        """--via batch|jsonl: the rows the cache cannot answer go to a batch, and the poll's state is shown (and kept,
        as text, in the saved notebook); an interrupt stops the polling, not the batch: run the cell again."""
        from IPython.display import display

        from ._batchrun import replay_cached, run_openrouter_batch, write_jsonl

        cache_dir = self.session.settings.cache_dir
        if request.via == "jsonl":
            pending = write_jsonl(job, request.batch_file or "", cache_dir)
            job.loop.run(replay_cached(job, pending))
            name = request.out or "frame"
            said = (f"{len(pending)} rows written to {request.batch_file} ({len(job.columns) - len(pending)} from the cache): "
                    f"run `vllm run-batch -i {request.batch_file} -o out.jsonl --model {job.target.model}`, then "
                    f"`{name} = granite_magic.read_batch('out.jsonl', into={name})`")
            _display({"text/plain": said, "text/markdown": said})
            return
        handle = display({"text/plain": "batch: submitting..."}, display_id=True, raw=True)  # type: ignore[no-untyped-call]

        def shown(progress: Any) -> None:
            if handle is not None:
                handle.update({"text/plain": progress.line()}, raw=True)

        try:
            job.loop.run(run_openrouter_batch(job, cache_dir, poll_s=self.session.settings.batch_poll_s, on_progress=shown))
        except KeyboardInterrupt:
            _error("polling stopped; the batches go on: run the cell again to resume them (nothing is submitted twice).")

    def _plan(self, request: CellRequest, target: Target) -> None:
        """--over with --dry-run: what each way of running the rows would cost and take; nothing is sent."""
        import html

        from ._batchrun import plan_for
        from ._rows import read_rows, row_prompts

        rows = read_rows(self._namespace()[request.over or ""], limit=request.limit, sample=request.sample)
        prompts = row_prompts(request.turn.prompt, rows, system=request.turn.system)
        job = self.session.start_map(request.turn, prompts, settings=request.plan() or [],
                                     concurrency=request.concurrency, target=target)
        plan = job.loop.run(plan_for(job, job.concurrency))
        head = (f"{plan.attrs['runs']} runs over {request.over} ({plan.attrs['cached']} from the cache; measured on "
                f"{plan.attrs['measured_rows']} answered): what each way would cost and take. Nothing was sent.")
        _display({"text/plain": f"{head}\n{plan.to_string(na_rep='unknown')}",
                  "text/html": f"<div>{html.escape(head)}</div>{plan.to_html(escape=True, na_rep='unknown')}"})

    def _widgets(self) -> bool:
        return self.live == "widget" or (self.live == "auto" and getattr(self.shell, "kernel", None) is not None)

    def _view(self, title: str) -> Any:
        from ._render import TerminalView, WidgetView

        if self._widgets():
            return WidgetView(title, rate=self.session.settings.updates_per_second)
        return TerminalView(title)

    # --- the line magic -----------------------------------------------------------------

    def _subcommand(self, line: str) -> Any:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            _error(f"the line does not parse ({exc}): check the quotes")
            return None
        command = SUBCOMMANDS.get(words[0]) if words else None
        if command is None:
            _error(f"unknown subcommand {line.strip()!r}; use one of: {', '.join(SUBCOMMANDS)} (see %granite?)")
            return None
        try:
            return command.run(self, words[1:])
        except errors.InvalidParameterError as exc:  # e.g. a setting that a configuration file gave
            _error(exc.message)
            return None

    def _reset(self, name: str | None) -> None:
        forgotten = self.session.reset(name)
        print(f"forgot {', '.join(forgotten)}" if forgotten else "no conversations to forget")

    def _usage(self) -> None:
        print(self.session.ledger.summary(budget=self.session.settings.budget_usd))

    def _cache(self, action: str | None) -> None:
        cache = self.session.cache_for()
        if action == "clear":
            print(f"removed {cache.clear()} recordings from {errors.shown_path(cache.directory)}")
            return
        if action is not None:
            _error(f"unknown cache action {action!r}: use %granite cache or %granite cache clear")
            return
        stats = cache.stats()
        print(f"{errors.shown_path(cache.directory)}: {stats.entries} recordings, {stats.bytes / 1024:.1f} KB; this session: "
              f"{stats.hits} hits, {stats.misses} misses · mode {self.session.settings.cache}")

    def _probe(self, model: str | None) -> Any:
        from ._advice import explain
        from ._markdown import markdown_literal
        from ._probe import probe_requests, probed_parameters
        from ._result import Result
        from ._session import Turn

        try:
            target = self.session.resolve(Turn("", model=model))
            estimate = self.session.probe_estimate(target)
            cost = "unknown cost" if estimate is None else f"at most ${estimate:.6f}"
            print(f"probing {target.label}: {len(probed_parameters())} parameters with at most {probe_requests()} short "
                  f"requests ({cost}) ...", flush=True)
            report = self.session.probe(target)
        except errors.GraniteError as exc:
            _error(explain(exc, Result()) or exc.message)
            return None
        table = report.table()
        _display({"text/markdown": markdown_literal(table), "text/plain": table})
        return None

    def _credits(self) -> None:
        from ._advice import explain
        from ._result import Result
        from ._session import Turn

        try:
            target = self.session.resolve(Turn("", backend="http"))
            credits = target.client.loop.run(target.client.credits())
        except errors.GraniteError as exc:
            _error(explain(exc, Result()) or exc.message)
            return
        limit, left, used = credits["limit"], credits["limit_remaining"], credits["usage"]
        print(f"used ${used or 0:.6f}" + (f" of a ${limit:.2f} limit, ${left:.6f} left" if limit is not None else " (no limit on this key)"))

    def _models(self) -> None:
        from ._advice import explain
        from ._result import Result
        from ._session import Turn

        try:
            target = self.session.resolve(Turn(""))
            models = target.client.models()
        except errors.GraniteError as exc:
            _error(explain(exc, Result()) or exc.message)
            return
        rows = [m for m in models.values() if m.id == target.model or "granite" in m.id.lower()]
        lines = ["| model | context | USD / M input | USD / M output | declared parameters | observed (probe) |",
                 "|---|---|---|---|---|---|"]
        for info in rows:
            context = f"{info.context_length:,}" if info.context_length else "?"
            lines.append(f"| {info.id} | {context} | {_money(info.per_million(info.prompt_price))} | "
                         f"{_money(info.per_million(info.completion_price))} | {', '.join(info.supported_parameters)} | "
                         f"{self._observed(target, info.id)} |")
        table = "\n".join(lines)
        from ._markdown import markdown_literal

        _display({"text/markdown": markdown_literal(table), "text/plain": table})

    def _observed(self, target: Target, model: str) -> str:
        reports = self.session.probes.find(target.client.base_url, model)
        if not reports:
            return "not probed (%granite probe)"
        report = reports[0]
        seen = ", ".join(f"{o.parameter} {o.observed}" for o in report.observations if o.observed != "not tested")
        return f"{seen} ({report.provider}, {report.date})"

    def panel(self, prompt: str = "") -> Any:
        """A panel that starts from this kernel's settings and shares its session."""
        from ._panel import Panel

        return Panel(self.session, prompt=prompt)

    def _history(self, name: str | None) -> None:
        names = [name] if name else list(self.session.conversations)
        if not names or (name and name not in self.session.conversations):
            print("no conversation yet: use %%granite --chat [NAME]")
            return
        for each in names:
            conversation = self.session.conversations[each]
            print(f"── {each} ──")
            if conversation.system:
                print(f"[system] {conversation.system}")
            for message in conversation.messages:
                print(f"[{message['role']}] {message['content']}")

    def _ask_key(self) -> None:
        import getpass

        key = getpass.getpass("OpenRouter API key (kept for this kernel only): ").strip()
        if not key:
            print("no key entered; nothing changed")
            return
        self.session.set_api_key(key)
        print("key set for this kernel")


async def _first_connection() -> None:
    """One HTTP request through httpx, on the background loop, to a server that lives as long as the request."""
    import asyncio

    import httpx

    from ._client import tls_context

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        async with httpx.AsyncClient(verify=tls_context(), trust_env=False, timeout=5) as http:
            await http.get(f"http://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()


def _check_setting(field: str, value: Any) -> None:
    """``InvalidParameterError`` if the ``Settings`` field would refuse ``value`` ("" and None unset it)."""
    from ._params import Sampling
    from ._settings import Settings

    if value is not None and not (isinstance(value, str) and not value):
        checked: dict[str, Any] = {field: Sampling(value) if field == "default_params" else value}
        Settings(**checked)


def _first(words: list[str]) -> str | None:
    return words[0] if words else None


class Subcommand(NamedTuple):  # not a dataclass: making one costs the extension's load a fraction of a millisecond
    """One ``%granite`` subcommand: its arguments and help (for ``%granite?``) and what it does with its words."""

    arguments: str
    help: str
    run: Callable[[GraniteMagics, list[str]], Any]


SUBCOMMANDS: dict[str, Subcommand] = {
    "models": Subcommand("", "context length, prices and supported parameters", lambda m, words: m._models()),
    "panel": Subcommand("[PROMPT]", "a widget panel: every parameter, presets, Run/Stop, seed comparison",
                        lambda m, words: m.panel(" ".join(words))),
    "history": Subcommand("[NAME]", "show a conversation (all if no name)", lambda m, words: m._history(_first(words))),
    "reset": Subcommand("[NAME]", "forget a conversation (all if no name)", lambda m, words: m._reset(_first(words))),
    "key": Subcommand("", "ask for the API key (hidden; kept for this kernel only)", lambda m, words: m._ask_key()),
    "last": Subcommand("", "the last result", lambda m, words: m.session.last),
    "usage": Subcommand("", "what this kernel's runs cost (granite_magic.usage() for a DataFrame)", lambda m, words: m._usage()),
    "credits": Subcommand("", "the key's remaining credit and limit (OpenRouter)", lambda m, words: m._credits()),
    "probe": Subcommand("[MODEL]", "measure which parameters the provider really honours", lambda m, words: m._probe(_first(words))),
    "cache": Subcommand("[clear]", "recordings on disk and this session's hits and misses; clear deletes the recordings",
                        lambda m, words: m._cache(_first(words))),
}


@functools.cache
def _parser() -> MagicArgumentParser:
    """The cell's option parser, made once, on first use (the warm-up thread or the first cell)."""
    from ._cell import build_parser

    return build_parser()


@functools.cache
def help_text() -> str:
    """``%%granite?`` and ``%granite?``: the options from the parser, the subcommands from ``SUBCOMMANDS``, the
    ``%config`` names from the traits."""
    import textwrap

    from ._cell import build_help

    rows = [f"  %granite {name} {command.arguments}".rstrip().ljust(29) + f" {command.help}" for name, command in SUBCOMMANDS.items()]
    names = ", ".join(sorted(GraniteMagics.class_trait_names(config=True)))
    config = textwrap.fill(f"Defaults: %config GraniteMagics.<name> for {names}", width=116, subsequent_indent=" " * 10)
    return "\n".join([build_help(_parser()), "", "Line magic:", *rows, "", config])


# IPython asks a magic for its help through getdoc(), so the parser is not built to load the extension.
GraniteMagics.granite.__doc__ = "Send the cell to Granite and stream the reply; %%granite? lists the options."
GraniteMagics.granite.getdoc = help_text  # type: ignore[union-attr]


def _parse_format(result: Result, fmt: str) -> str | None:
    """Fill ``result.value`` for code and json; a message if the JSON does not parse."""
    from ._markdown import extract_code, parse_json_reply

    if fmt == "code":
        result.value = extract_code(result.text)[0]
    elif fmt == "json" and result.text:
        try:
            result.value = parse_json_reply(result.text)
        except ValueError as exc:
            return f"The reply is not valid JSON ({exc}); the raw text is kept in the output and in .text."
    return None


def _money(value: float | None) -> str:
    return "?" if value is None else f"${value:.3f}"


def _display(data: dict[str, Any]) -> None:
    from ._render import display_raw

    display_raw(data)


def _error(message: str) -> None:
    print(f"granite: {message}", file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    print(f"granite: warning: {message}", file=sys.stderr, flush=True)


NO_PROBS = ("this provider returned no token probabilities; the local backend (--backend local) and servers such as "
            "llama.cpp or vLLM do.")

_registered: dict[int, GraniteMagics] = {}


def register(ipython: InteractiveShell) -> None:
    from . import _kernel

    magics = GraniteMagics(shell=ipython)
    ipython.register_magics(magics)
    _registered[id(ipython)] = magics
    if ipython.config.get("GraniteMagics") or any(os.environ.get(setting.metadata["env"] or "") for setting in configurable()):
        magics.settings()  # an invalid GRANITE_* or configured value is refused here, where it was set, in one line
    _kernel.remember(ipython, magics.current_session)
    ipython.events.register("post_run_cell", magics.start_warm_up)


def unregister(ipython: InteractiveShell) -> None:
    from . import _kernel

    _kernel.forget(ipython)
    magics = _registered.pop(id(ipython), None)
    if magics is not None:
        with contextlib.suppress(ValueError):  # already started
            ipython.events.unregister("post_run_cell", magics.start_warm_up)
        configurables: list[Any] = ipython.configurables
        if magics in configurables:
            configurables.remove(magics)
        ipython.magics_manager.registry.pop(type(magics).__name__, None)
        for kind in ("line", "cell"):
            ipython.magics_manager.magics[kind].pop("granite", None)


def _refused(exc: errors.GraniteError) -> str:
    """A refusal before anything was sent, in a cell's words, with what to do."""
    from ._advice import ADVICE, cell_spelling, worded

    advice = ADVICE.get(exc.kind)
    return f"{worded(exc, cell_spelling).rstrip('.')} (nothing was sent)" + (f". {advice}" if advice else "")


def _cell_number(shell: Any) -> int | None:
    """The ``In[N]`` of the cell running now (IPython counts the next cell from the moment one starts), or of the
    last one when none is (a panel's run)."""
    running = getattr(getattr(shell, "displayhook", None), "exec_result", None)
    if running is not None and running.execution_count is not None:
        return int(running.execution_count)
    count = getattr(shell, "execution_count", None)
    return count - 1 if isinstance(count, int) and count > 1 else None


def _granite_environment() -> dict[str, str]:
    """The ``GRANITE_*`` variables as they are now (the settings read them; only their change matters here)."""
    return {name: value for name, value in os.environ.items() if name.startswith("GRANITE_")}
