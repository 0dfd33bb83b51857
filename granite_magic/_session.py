"""A kernel's state between cells, and running a turn or a grid on the background loop.

A front end describes a request as a ``Turn`` (its values already validated);
``Session.resolve`` decides, once, where it goes (a ``Target``: backend, client,
model, API shape).  Jobs run on the background loop next to a live view and
end as ``(result, error)`` so the front end can show both; they never raise for
an expected failure, and no column of a grid outlives its job.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

from . import _errors as errors
from ._cache import RecordedClock, Recorder, Recording, RunCache, replay
from ._cache_use import CacheUse, RecordingAccumulator, cache_use
from ._client import BaseClient, GraniteClient, Secret
from ._comparison import Comparison, Run, RunSpec
from ._events import Accumulator, Event, Progress
from ._ledger import BUDGET_VARIABLE, BudgetError, Ledger, RunKind, check_budget, spent_bound, worst_case
from ._params import Sampling
from ._probe import ProbeReport, ProbeStore, probe, probe_requests
from ._requests import Conversation, build_request, check_context
from ._result import Result
from ._rows import Expect, Rows, Setting, result_frame
from ._runner import BackgroundLoop
from ._settings import Settings
from ._shapes import Api, Request, build_messages
from ._spec import spec_text
from ._structured import MOST_ATTEMPTS, finished, read_reply, repair_request, worth_repairing
from ._toolrun import ToolLoop, ToolPlan
from ._turn import Target, Turn, new_turn
from ._vocab import SchemaMethod, SchemaMode

if TYPE_CHECKING:
    from ._spec import OutputSchema

__all__ = ["CompareJob", "Conversation", "GridLike", "Job", "LiveLike", "Session", "SingleJob", "StructuredJob", "Target", "Turn", "new_turn",
           "shared_session"]

logger = logging.getLogger("granite_magic")

class LiveLike(Protocol):
    """What a single run needs from its view (the widget, the terminal, or nothing)."""

    async def run(self, acc: Progress) -> None: ...


class GridLike(Protocol):
    """What a comparison needs from its view."""

    async def run(self, state: Sequence[Progress]) -> None: ...
    def column_done(self, index: int, result: Result) -> None: ...


class QuietGrid:
    async def run(self, state: Sequence[Progress]) -> None:
        await asyncio.Event().wait()

    def column_done(self, index: int, result: Result) -> None:
        pass


class Session:
    """Clients, conversations and settings of one kernel (or one Python API call)."""

    def __init__(self, settings: Settings | None = None, *, cell_number: Callable[[], int | None] = lambda: None) -> None:
        self.settings = settings or Settings.from_env()
        self.clients: dict[tuple[Any, ...], BaseClient] = {}
        self.conversations: dict[str, Conversation] = {}
        self.last: Result | Comparison | None = None
        self.ledger = Ledger(cell_number)
        self.probes = ProbeStore()
        self.caches: dict[Path, RunCache] = {}  # one per directory: hits and misses are counted per session
        self._cache_places: dict[tuple[str, str], RunCache] = {}  # (directory as given, working directory) -> its cache
        self.budget_setting = BUDGET_VARIABLE  # where the budget was set, named in a refusal: a front end may set it its way
        self._key: Secret | None = None
        self._lookups: set[asyncio.Task[None]] = set()

    def configure(self, **changes: Any) -> None:
        """Replace settings (``%config`` traits land here); validated as a whole."""
        self.settings = replace(self.settings, **changes)

    def set_api_key(self, key: str | None) -> None:
        """Keep a key for this kernel only (never written to disk or shown); None forgets it."""
        self._key = Secret(key) if key else None
        for client in self.clients.values():
            client.set_api_key(key)

    # --- where a turn goes ----------------------------------------------------------

    def resolve(self, turn: Turn) -> Target:
        """Backend, client, model and API shape for ``turn``; raises InvalidParameterError before any I/O."""
        settings = self.settings
        api = turn.api or settings.api
        if self._backend(turn) == "http":
            if turn.template is not None:
                raise errors.InvalidParameterError(f"template={turn.template!r} chooses the local model's chat template: the "
                                                   "HTTP server applies its own", names=("template",))
            base_url = turn.base_url or settings.base_url
            timeout_s = turn.timeout_s if turn.timeout_s is not None else settings.timeout_s
            return Target(self._http_client(base_url, api, timeout_s), turn.model or settings.model, api)
        if api != "chat" and not turn.raw:  # a raw completion has no chat format to choose
            raise errors.InvalidParameterError(f"api={api!r} needs the HTTP backend: the local model has no request format",
                                               names=("api",))
        client = self._local_client(turn.model, turn.template)
        return Target(client, client.model, "chat")

    def _backend(self, turn: Turn) -> Literal["http", "local"]:
        """A turn's choice, else the setting; ``auto`` uses HTTP when a base URL or a key is given,
        else the local model when the ``local`` extra is installed, else HTTP (whose
        missing-key error then names both ways forward)."""
        from ._local import local_available

        choice = turn.backend or self.settings.backend
        if choice != "auto":
            return choice
        if turn.base_url or self.settings.base_url_from_user or self._key or os.environ.get("OPENROUTER_API_KEY"):
            return "http"
        return "local" if local_available() else "http"

    def _http_client(self, base_url: str, api: Api, timeout_s: float | None) -> BaseClient:
        s = self.settings
        key = ("http", base_url, api, s.read_timeout_s, s.connect_timeout_s, timeout_s)
        client = self.clients.get(key)
        if client is None:
            client = GraniteClient(base_url=base_url, api=api, read_timeout_s=s.read_timeout_s,
                                   connect_timeout_s=s.connect_timeout_s, timeout_s=timeout_s)
            if self._key is not None:
                client.set_api_key(self._key.reveal())
            self.clients[key] = client
        return client

    def _local_client(self, model: str | None, template: str | None = None) -> BaseClient:
        key = ("local", model, self.settings.local_instances, template)
        client = self.clients.get(key)
        if client is None:
            from ._cache_use import remembered_framing
            from ._local import LocalClient

            # without its file (a classroom replaying recordings), the framing the recordings were made in
            client = self.clients[key] = LocalClient(model, instances=self.settings.local_instances, template=template,
                                                     remembered=lambda name: remembered_framing(name, self.cache_for()))
        return client

    # --- requests ----------------------------------------------------------------------

    def conversation(self, turn: Turn) -> Conversation:
        """The conversation ``turn`` continues (a new, empty one for a stateless turn)."""
        return self.conversations.setdefault(turn.chat, Conversation()) if turn.chat is not None else Conversation()

    def request(self, turn: Turn, target: Target, extra: Sampling | None = None, *, method: SchemaMethod | None = None) -> Request:
        """What goes to ``target`` for ``turn`` (with a column's ``extra`` sampling): sent, shown and keyed as it is.
        ``method``: how a schema is asked for, when already decided (deciding may ask the server for its listing)."""
        strict = turn.strict if turn.strict is not None else self.settings.strict
        if method is None:
            method = self.schema_method(target, turn.schema_mode) if turn.schema is not None else "prompted"
        return build_request(turn, target, self.conversation(turn), strict=strict, extra=extra, schema_method=method)

    def schema_method(self, target: Target, mode: SchemaMode = "auto") -> SchemaMethod:
        """How ``target`` obtains a reply of a schema: the method ``mode`` names, if the client has it, else (``auto``)
        what the client can do with what the model's listing says, or what a probe saw (``%granite probe``): a
        response_format it honoured is trusted, one it dropped is not."""
        client = target.client
        if mode != "auto":
            if mode not in client.schema_methods():
                raise errors.InvalidParameterError(f"schema_mode={mode!r} is not available on {target.label}: it offers "
                                                   f"{' or '.join(client.schema_methods())}", names=("schema_mode",))
            return mode
        listed: tuple[str, ...] | None = client.loop.run(client.supported_parameters(target.model))
        supported = list(listed or ())
        seen = next((report.get("response_format") for report in self.probes.find(client.base_url, target.model)
                     if report.get("response_format") is not None), None)
        if seen is not None and seen.observed == "honoured":
            supported.append("response_format")
        elif seen is not None and seen.observed == "ignored":
            supported = [name for name in supported if name not in ("response_format", "structured_outputs")]
        return client.schema_method(supported)

    def start(self, turn: Turn, target: Target | None = None, *, kind: RunKind = "single") -> Job:
        """Prepare one turn (resolved here unless given); nothing is sent yet.  Refuses what the budget cannot hold."""
        target = target or self.resolve(turn)
        request = self.request(turn, target)
        use = self.cache_use(turn, target, request)
        bounds: list[float | None] = [None]
        if use is None or use.mode != "replay":
            check_context(target, request)
            bounds = self.check_budget(target, [request])
        job = SingleJob(turn, target, request, on_done=self._recorder(kind), probes=self.probes, cache=use, bound=bounds[0])
        if use is not None and use.mode == "replay":
            job.preload()  # a request never recorded is refused here, before any view is shown
        return self._structured(job, kind)

    def _structured(self, job: SingleJob, kind: RunKind) -> Job:
        """``job`` as a turn whose reply must fit its ``--schema`` (validated, repaired once), or as it is."""
        if job.turn.schema is None or job.request.structure is None:
            return job
        return StructuredJob(job, job.turn.schema, job.request.structure.method, self._repairer(kind))

    def _repairer(self, kind: RunKind) -> Callable[[SingleJob, Request], SingleJob]:
        """How a repair request becomes a run of its own: its cache entry, its budget check, its row in the ledger.
        Called on the loop, so it asks nothing of it: the listing was read for the first request."""
        def repair(first: SingleJob, request: Request) -> SingleJob:
            use = self.cache_use(first.turn, first.target, request)
            bound: float | None = None
            if (use is None or use.mode != "replay") and self.settings.budget_usd is not None:
                worst = worst_case(first.target.client.listed(request.model), [request])
                check_budget(self.ledger.total_cost, worst, self.settings.budget_usd, setting=self.budget_setting)
                bound = worst
            job = SingleJob(first.turn, first.target, request, on_done=self._recorder(kind), probes=self.probes, cache=use, bound=bound)
            job.acc.note = REPAIR_NOTE
            return job

        return repair

    def start_compare(self, turn: Turn, specs: Sequence[RunSpec], *, concurrency: int | None = None,
                      target: Target | None = None, kind: RunKind = "grid") -> CompareJob:
        """One run per spec (the turn with what the spec changes), all going to the same target (resolved here, once,
        unless given).  A grid, a lens branch (a batch of one) and a dataset's rows are all such batches.  A grid's
        few runs are prepared now; a map's rows as they are taken (``Columns``), after the budget has seen them all."""
        if turn.chat is not None:
            raise errors.InvalidParameterError("a comparison cannot continue a conversation: each column would fork it")
        if not specs:
            raise errors.InvalidParameterError("a comparison needs at least one run")
        concurrency = self.settings.concurrency if concurrency is None else concurrency
        if concurrency < 1:
            raise errors.InvalidParameterError(f"concurrency={concurrency} is out of range: must be an integer >= 1",
                                               names=("concurrency",))
        target = target or self.resolve(turn)
        method = self.schema_method(target, turn.schema_mode) if turn.schema is not None else "prompted"

        def request_of(index: int) -> Request:
            spec = specs[index]
            return self.request(_applied(spec, turn), target, spec.params, method=method)

        budget = None if (turn.cache or self.settings.cache) == "replay" else self.settings.budget_usd
        if budget is not None:  # every run's worst case, one request at a time (a map's rows are not all kept)
            requests = (request_of(index) for index in range(len(specs)))
            check_budget(self.ledger.total_cost, self.worst_case(target, requests), budget, runs=len(specs),
                         setting=self.budget_setting)
        record = self._recorder(kind)

        def make(index: int) -> Job:  # on the background loop for a map's rows: nothing here may wait on it
            spec = specs[index]  # a map's spec is made on each read: read once
            each = _applied(spec, turn)
            request = self.request(each, target, spec.params, method=method)
            use = self.cache_use(each, target, request, repeat=spec.repeat, packed=kind == "map")
            bound = worst_case(target.client.listed(request.model), [request]) if budget is not None else None
            return self._structured(SingleJob(each, target, request, on_done=record, cache=use, bound=bound), kind)

        columns = Columns(len(specs), make, request_of, keep=kind != "map")
        job = CompareJob(turn, target, self.request(turn, target, method=method).sampling, specs, columns, concurrency)
        job.probes = self.probes
        job.budget_reached = self._budget_reached
        return job

    def start_map(self, turn: Turn, prompts: Sequence[str], *, settings: Sequence[RunSpec] = (), concurrency: int | None = None,
                  target: Target | None = None) -> CompareJob:
        """One run per row's prompt (``--over``), under each of ``settings`` (a grid's columns: rows x settings, row
        by row), a batch like a grid's.  Rows meet the cache in ``auto`` mode unless the turn or the session chose a
        mode: an interrupted run, run again, re-pays no finished row."""
        if turn.cache is None and self.settings.cache == "off":
            turn = replace(turn, cache="auto")
        return self.start_compare(turn, RowSpecs(prompts, list(settings) or [RunSpec("")]), concurrency=concurrency,
                                  target=target, kind="map")

    def finish_map(self, job: CompareJob, rows: Rows, settings: Sequence[RunSpec] = (), expect: Expect | None = None) -> Any:
        """The result frame of a prompt over ``rows`` (under each of ``settings``): every row in input order, however
        it ended, scored by ``expect``, and the run's settings in ``frame.attrs`` (provenance: what a later reader
        needs to know how the column was made)."""
        schema = job.turn.schema
        fields = schema.fields() if schema is not None else None
        swept = list(dict.fromkeys(name for setting in settings for name in setting.params))
        attrs = {"prompt": job.turn.prompt, "model": job.target.model, "backend": job.target.client.kind,
                 "params": dict(job.base), "schema": spec_text(schema) if schema is not None else None, "rows": len(rows),
                 "system": job.turn.system, "fields": fields or ["reply"], "swept": swept,
                 "settings": [setting.label for setting in settings],
                 "rate_limited": job.gate.throttles if job.gate else 0,  # times the server said to slow down
                 "fewest_at_once": max(1, int(job.gate.lowest)) if job.gate else None}
        return result_frame(rows, job.outcomes(), fields, attrs, expect=expect,
                            settings=[Setting(setting.label, dict(setting.params)) for setting in settings])

    # --- record and replay -------------------------------------------------------------------

    def cache_for(self, directory: str | Path | None = None) -> RunCache:
        given = os.fspath(directory or self.settings.cache_dir)
        place = (given, os.getcwd())  # a relative directory is the working directory's
        if place not in self._cache_places:  # resolved once: a map asks for every row, and resolving reads the disk
            path = Path(given).expanduser().resolve()
            self._cache_places[place] = self.caches.setdefault(path, RunCache(path))
        return self._cache_places[place]

    def cache_use(self, turn: Turn, target: Target, request: Request, *, repeat: int = 0, packed: bool = False) -> CacheUse | None:
        """How this request meets the session's cache (None: it does not); ``packed`` for a map's rows."""
        return cache_use(turn, target, request, self.cache_for(), self.settings.cache, repeat=repeat, packed=packed)

    # --- what it costs ----------------------------------------------------------------------

    def worst_case(self, target: Target, requests: Iterable[Request]) -> float | None:
        """The most these requests can cost, from the model's listed prices; None when unknown."""
        return worst_case(target.client.loop.run(target.client.listing(target.model)), requests)

    def check_budget(self, target: Target, requests: Sequence[Request]) -> list[float | None]:
        """Refuse what the budget cannot hold; returns each request's worst case (None without a budget), which
        the ledger counts for a run whose billed cost turns out unknown."""
        budget = self.settings.budget_usd
        if budget is None:
            return [None] * len(requests)
        check_budget(self.ledger.total_cost, self.worst_case(target, requests), budget, runs=len(requests),
                     setting=self.budget_setting)
        info = target.client.loop.run(target.client.listing(target.model))  # cached by the check above
        return [worst_case(info, [request]) for request in requests]

    def probe_estimate(self, target: Target) -> float | None:
        """The most a probe of ``target`` can cost (shown before it runs)."""
        request = Request(target.model, build_messages("x" * 60), Sampling({"max_tokens": 12}))
        one = self.worst_case(target, [request])
        return None if one is None else one * probe_requests()

    def probe(self, target: Target) -> ProbeReport:
        """Measure which parameters ``target`` honours, record its runs, and remember the report."""
        supported = target.client.loop.run(target.client.supported_parameters(target.model))
        def record(result: Result) -> None:
            self.ledger.record(result, backend=target.client.kind, kind="probe", free=target.client.free)

        report = target.client.loop.run(probe(target.client, target.model, supported, record))
        self.probes.save(report)
        return report

    def _budget_reached(self) -> bool:
        budget = self.settings.budget_usd
        return budget is not None and self.ledger.total_cost >= budget

    def _recorder(self, kind: RunKind) -> Callable[[SingleJob], None]:
        def record(job: SingleJob) -> None:
            if not job.ran:  # stopped while it queued: nothing was asked, nothing to bill
                return
            result = job.outcome()[0]
            client = job.target.client
            bound = job.bound
            if bound is None and result.cost is None and result.ended == "interrupted" and not client.free:
                # An interrupted reply is billed for what was generated; until a lookup says what, count at most that.
                bound = spent_bound(client.listed(job.request.model), job.request, result.completion_tokens or result.chunks)
            index = self.ledger.record(result, backend=client.kind, kind=kind, cached=result.cached, free=client.free,
                                       bound=bound)
            if result.cost is None and not result.cached and result.generation_id:
                self._look_up_cost(job.target, result.generation_id, index)

        return record

    def _look_up_cost(self, target: Target, generation_id: str, index: int) -> None:
        """Ask for the billed cost after the run, on the loop, never blocking the cell."""
        async def look_up() -> None:
            if not await target.client.billed(target.model):  # a self-hosted server: nothing to ask, nothing to interrupt
                return
            cost = await target.client.generation_cost(generation_id)
            if cost is not None:
                self.ledger.set_cost(index, cost)

        task = asyncio.ensure_future(look_up())
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    def finish(self, job: Job) -> tuple[Result, errors.GraniteError | None]:
        """The job's result and error; a complete chat turn joins its conversation."""
        result, error = job.outcome()
        if not result.partial and job.turn.chat is not None:
            self._remember(job.turn, result)
        self.last = result
        return result, error

    def run(self, turn: Turn, view: LiveLike | None = None, target: Target | None = None) -> tuple[Result, errors.GraniteError | None]:
        """Stream one turn into ``view``, blocking; Ctrl-C stops it and keeps the partial reply."""
        job = self.start(turn, target)
        with contextlib.suppress(KeyboardInterrupt):  # the job keeps what arrived
            job.loop.run(job.stream(view))
        return self.finish(job)

    def run_tools(self, turn: Turn, target: Target, plan: ToolPlan, view: Any = None) -> tuple[Result, errors.GraniteError | None, ToolLoop]:
        """A tool-using turn: stream, run the calls (in this thread), send the results, until the model answers.

        Every step is one request in the ledger; a failure, an interrupt or ``max_steps`` ends the loop
        with what arrived kept.
        """
        tools = ToolLoop(plan, self.request(turn, target), on_call=getattr(view, "log", lambda line: None))
        request: Request | None = tools.request
        error: errors.GraniteError | None = None
        while request is not None:
            use = self.cache_use(turn, target, request, repeat=tools.steps)
            bound: float | None = None
            if use is None or use.mode != "replay":
                try:  # before every request, as the budget promises, not only the first step's
                    (bound,) = self.check_budget(target, [request])
                except BudgetError as exc:
                    if tools.steps == 0:
                        raise
                    error = BudgetError(f"{exc.message}; the tool loop stopped before step {tools.steps + 1}, "
                                        "with the calls made so far kept", setting=exc.setting)
                    break
            job = SingleJob(turn, target, request, on_done=self._recorder("tools"), probes=self.probes, cache=use, bound=bound)
            with contextlib.suppress(KeyboardInterrupt):
                job.loop.run(job.stream(_Showing(view, tools) if view is not None else None, check_support=tools.steps == 0))
            result, error = job.outcome()
            if error is not None or result.partial:
                tools.stop_at(result)
                break
            try:
                request = tools.after(result)
            except KeyboardInterrupt:  # in a tool function: the turn stops, what was done is kept
                request = None
                error = errors.GraniteError("Interrupted while a tool ran; the calls made so far are kept.")
        final = tools.final()
        if error is None and not final.partial and turn.chat is not None:
            self._remember(turn, final, added=tools.history())
        self.last = final
        return final, error, tools

    def finish_compare(self, job: CompareJob) -> Comparison:
        comparison = job.outcome()
        self.last = comparison
        return comparison

    def compare(self, turn: Turn, specs: Sequence[RunSpec], view: GridLike | None = None, *, concurrency: int | None = None) -> Comparison:
        """Run one column per spec, at most ``concurrency`` at once, all streaming into ``view``.

        A failing column keeps its partial text and does not stop the others; an
        interrupt cancels them all and keeps what each had received.
        """
        job = self.start_compare(turn, specs, concurrency=concurrency)
        with contextlib.suppress(KeyboardInterrupt):
            job.loop.run(job.stream(view or QuietGrid()))
        return self.finish_compare(job)

    def _remember(self, turn: Turn, result: Result, *, added: Sequence[dict[str, Any]] | None = None) -> None:
        """Only a complete turn joins the history, so a failed one cannot corrupt it.  ``added``: what a
        tool-using turn said after the user's message (its calls, their results, the answer)."""
        assert turn.chat is not None
        conversation = self.conversations.setdefault(turn.chat, Conversation())
        if turn.system is not None:
            conversation.system = turn.system
        conversation.messages.append({"role": "user", "content": turn.prompt})
        conversation.messages.extend(added if added is not None else [{"role": "assistant", "content": result.text}])

    def reset(self, name: str | None = None) -> list[str]:
        names = list(self.conversations) if name is None else [name]
        for each in names:
            self.conversations.pop(each, None)
        return names

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()


class SingleJob:
    """One prepared request; ``stream`` runs it on the background loop, ``outcome`` says how it ended.

    Blocking callers (the magic) and non-blocking ones (the panel's Run button)
    drive the same job; cancelling ``stream`` leaves the partial reply in ``acc``.
    After the reply, the model's listing (cached, bounded in time) is read to warn about parameters it does not
    name (``warnings``): never beside it, since some servers (llama-cpp-python's) cut a reply short when another
    request arrives.
    """

    def __init__(self, turn: Turn, target: Target, request: Request, *,
                 on_done: Callable[[SingleJob], None] | None = None, probes: ProbeStore | None = None,
                 cache: CacheUse | None = None, bound: float | None = None) -> None:
        self.turn, self.target, self.request = turn, target, request
        self.bound = bound  # the most it can cost (checked against the budget), counted while its cost is unknown
        self.probes = probes
        self.cache = cache
        self.verified: str | None = None  # with --verify: how the live reply compares with the recording
        self.recorded = False  # the live reply was stored as a recording
        self._preloaded: Recording | None = None
        self.on_done = on_done  # called once the stream has ended, however it ended (the ledger records it)
        self.acc = Accumulator(request.sampling)
        self.warnings: list[str] = []
        self._result: Result | None = None
        self._error: errors.GraniteError | None = None

    @property
    def loop(self) -> BackgroundLoop:
        return self.target.client.loop

    async def stream(self, view: LiveLike | None = None, *, check_support: bool = True) -> None:
        try:
            recording = self._look_up()
        except errors.GraniteError as exc:  # replay mode and nothing recorded (or a corrupt file): nothing is sent
            self._error, self._result = exc, self.acc.result(error=exc.message)
            if self.on_done is not None:
                self.on_done(self)
            return
        if recording is not None and self.cache is not None and self.cache.serves(recording):
            await self._replay(recording, view)
            return
        if self.cache is not None and self.cache.records(recording):
            throttled = self.acc.on_throttled  # a batch's gate listens to whichever accumulator streams
            self.acc = RecordingAccumulator(self.request.sampling, Recorder(self.cache.fields))
            self.acc.on_throttled = throttled
        companion = asyncio.ensure_future(view.run(self.acc)) if view is not None else None
        try:
            self._result = await self.target.client.stream(self.request, self.acc)
            await self._keep(recording)
        except errors.GraniteError as exc:
            self._result = exc.result or self.acc.result(error=exc.message)
            self._error = exc
        except Exception as exc:  # a bug of ours must not take the cell (or a grid's other columns) with it
            logger.exception("unexpected error while streaming")
            self._error = errors.GraniteError(f"Unexpected error in granite-magic ({type(exc).__name__}: {exc}); please report it.")
            self._result = self.acc.result(error=self._error.message)
        finally:
            if companion is not None:
                companion.cancel()
            if self.on_done is not None:
                self.on_done(self)
        if check_support:
            shown = ("logprobs", "top_logprobs") if self.acc.tokens else ()  # the probabilities came back: honoured
            self.warnings += await support_warnings(self.target, self.request.sampling, probes=self.probes, honoured=shown)

    async def answered(self, events: Sequence[Event], error: str | None) -> None:
        """An answer that came another way (a batch): taken as a live stream of it would have been (kept in the
        cache, counted in the ledger); ``error``: why the request has no answer."""
        if self.cache is not None and self.cache.records(None):
            self.acc = RecordingAccumulator(self.request.sampling, Recorder(self.cache.fields))
        for event in events:
            self.acc.feed(event)
        if error is not None:
            self._error = errors.GraniteError(error)
            self._result = self.acc.result(error=error)
        else:
            self._result = self.acc.result()
            await self._keep(None)
        if self.on_done is not None:
            self.on_done(self)

    def outcome(self) -> tuple[Result, errors.GraniteError | None]:
        if self._result is None:  # cancelled before it ended
            return self.acc.result(ended="interrupted"), None
        return self._result, self._error

    @property
    def ran(self) -> bool:
        """Whether this run happened, in part at least: its request left (or the local model began on it), or it
        was served from a recording.  One an interrupt stopped while it queued did not."""
        return self.acc.sent or self._result is not None

    # --- record and replay --------------------------------------------------------------

    def preload(self) -> None:
        """Look the recording up now (replay mode): a miss or a corrupt file raises before anything is shown."""
        self._preloaded = self._look_up()

    def _look_up(self) -> Recording | None:
        if self._preloaded is not None or self.cache is None:
            return self._preloaded
        recording, warning = self.cache.look_up()
        if warning is not None:
            self.warnings.append(warning)
        return recording

    async def _replay(self, recording: Recording, view: LiveLike | None) -> None:
        """A hit: the recorded events into a fresh accumulator, at once or at the recorded pace; nothing is sent."""
        clock = RecordedClock()
        self.acc = Accumulator(self.request.sampling, clock=clock)
        companion = asyncio.ensure_future(view.run(self.acc)) if view is not None else None
        try:
            await replay(recording, self.acc.feed, pace="original" if self.cache and self.cache.pace == "original" else "instant",
                         clock=clock)
            ended_well = recording.complete
            if self.cache is not None and self.cache.unverified:
                self.verified = "not checked: the cache is in replay mode (this is the recording)"
            self._result = dataclasses.replace(self.acc.result(), cached=True) if ended_well else self.acc.result(error="the recording is incomplete")
        finally:
            if companion is not None:
                companion.cancel()
            if self.on_done is not None:
                self.on_done(self)

    async def _keep(self, recording: Recording | None) -> None:
        """After a whole live reply: the cache keeps it and compares it (--verify)."""
        if self.cache is None or self._result is None or self._result.partial:
            return
        self.verified, warnings, self.recorded = await self.cache.keep(self.acc, recording)
        self.warnings += warnings


async def support_warnings(target: Target, sampling: Sampling, also: Sequence[str] = (),
                           probes: ProbeStore | None = None, honoured: Sequence[str] = ()) -> list[str]:
    """One line per parameter set (or swept) that the listing does not name, or that a probe saw ignored; none for
    a parameter the reply itself shows honoured (``honoured``: token probabilities that came back)."""
    names = [name for name in dict.fromkeys([*sampling, *also]) if name not in honoured]
    if not names:
        return []
    warnings = _observed_ignored(target, names, probes)
    supported = await target.client.supported_parameters(target.model)
    if supported is not None:
        warnings += [f"{name} is not in this model's supported parameters: the provider may ignore it."
                     for name in names if name not in supported]
    return warnings


def _observed_ignored(target: Target, names: Sequence[str], probes: ProbeStore | None) -> list[str]:
    if probes is None:
        return []
    warnings = []
    for report in probes.find(target.client.base_url, target.model):
        for name in names:
            seen = report.get(name)
            if seen is not None and seen.observed == "ignored":
                warnings.append(f"{name} was observed ignored by {report.provider or 'the provider'} on {report.date} "
                                f"({seen.evidence}); --strict asks for providers that honour every parameter.")
    return warnings


class CompareJob:
    """The columns of a comparison, streamed concurrently behind a semaphore."""

    def __init__(self, turn: Turn, target: Target, base: Sampling, specs: Sequence[RunSpec], columns: Columns, concurrency: int) -> None:
        self.turn, self.target, self.base, self.specs = turn, target, base, specs
        self.columns, self.concurrency = columns, concurrency
        self.warnings: list[str] = []
        self.budget_reached: Callable[[], bool] = lambda: False
        self.probes: ProbeStore | None = None
        self.skipped: set[int] = set()  # columns never started because the budget was reached
        # What the grid shows, when it is more than these columns (a lens branch beside the runs before it):
        self.shown: Sequence[Progress] | None = None
        self.first_column = 0  # where these columns start in the grid
        self._started: float | None = None
        self._ended: float | None = None
        self.gate: AdaptiveGate | None = None  # how many run at once, lowered while the server rate-limits

    @property
    def loop(self) -> BackgroundLoop:
        return self.target.client.loop

    @property
    def accumulators(self) -> Sequence[Accumulator]:
        """Each column's progress, read when it is looked at: a repaired column shows its second attempt."""
        return _Live(self.columns)

    async def stream(self, grid: GridLike) -> None:
        self._started = time.perf_counter()
        gate = self.gate = AdaptiveGate(self.concurrency)
        companion = asyncio.ensure_future(grid.run(self.shown if self.shown is not None else self.accumulators))
        swept = list(dict.fromkeys(name for spec in self.specs for name in spec.params))

        async def column(index: int) -> None:
            async with gate:
                if self.budget_reached():  # no new column once the budget is spent; those in flight finish
                    self.skipped.add(index)
                else:
                    job = self.columns[index]
                    job.acc.restart_clock()  # time a column from when it may start, not while it queued
                    job.acc.on_throttled = gate.throttled
                    await job.stream(check_support=False)
                    gate.succeeded()
            grid.column_done(self.first_column + index, self._column_outcome(index)[0])
            self.columns.ended(index)

        queue = iter(range(len(self.columns)))  # shared by the workers: each column is taken once, in order

        async def worker() -> None:
            for index in queue:
                await column(index)

        # ``concurrency`` workers, not a task a column: a map of 100,000 rows holds 64 tasks, not 100,000
        tasks = [asyncio.ensure_future(worker()) for _ in range(min(self.concurrency, len(self.columns)))]
        try:
            await asyncio.gather(*tasks)
            # after the columns, not beside them: some servers cut a reply short when another request arrives
            self.warnings += await support_warnings(self.target, self.base, swept, probes=self.probes)
        finally:
            for task in (*tasks, companion):
                task.cancel()  # whatever ended the grid, no column outlives it
            await asyncio.gather(*tasks, return_exceptions=True)
            self._ended = time.perf_counter()

    def requests(self) -> Iterator[Request]:
        """Each run's request, made one at a time (a map's are not kept)."""
        return (self.columns.request_of(index) for index in range(len(self.columns)))

    def _column_outcome(self, index: int) -> tuple[Result, str | None]:
        if index in self.skipped:
            message = "Not started: the session's budget was spent by the columns before it."
            return Accumulator(self.columns.request_of(index).sampling).result(error=message), message
        result, error = self.columns[index].outcome()
        return result, error.message if error is not None else None

    def _ran(self, index: int) -> bool:
        return self.columns.taken(index) and self.columns[index].ran

    def outcomes(self) -> list[tuple[Result | None, str | None]]:
        """Every column in order: its result and error, or no result when it never started (the budget, an interrupt)."""
        found: list[tuple[Result | None, str | None]] = []
        for index in range(len(self.columns)):
            if index in self.skipped:
                found.append((None, "not started: the session's budget was spent"))
            elif not self._ran(index):
                found.append((None, "not started: interrupted"))
            else:
                result, error = self.columns[index].outcome()
                found.append((result, error.message if error is not None else None))
        return found

    def outcome(self) -> Comparison:
        """The runs that ran (or were refused by the budget); those an interrupt stopped before they started are
        named in ``not_run``, not compared as empty replies."""
        ran = [i for i in range(len(self.columns)) if i in self.skipped or self._ran(i)]
        runs = [Run(self.specs[i], *self._column_outcome(i), verified=self.columns[i].verified) for i in ran]
        wall = None if self._started is None else (self._ended or time.perf_counter()) - self._started
        not_run = [spec.label for i, spec in enumerate(self.specs) if i not in ran]
        return Comparison(prompt=self.turn.prompt, runs=runs, wall_s=wall, base_params=dict(self.base), not_run=not_run)


class Columns(Sequence[Any]):
    """A batch's runs, each prepared when first asked for.  A grid keeps its few jobs; a map (``keep=False``) keeps
    a row's job only while it runs, then only how it ended (``EndedRun``): a map over 100,000 rows holds neither
    100,000 prepared requests and cache keys before the first is sent nor their accumulators after."""

    def __init__(self, count: int, make: Callable[[int], Job], request_of: Callable[[int], Request], *, keep: bool) -> None:
        self._count, self._make, self.request_of, self.keep = count, make, request_of, keep
        self._held: list[Any] = [None] * count  # None: not taken yet (a list, not a dict: 8 bytes a row)
        if keep:  # prepared now: a grid's mistakes are refused before its view is shown
            for index in range(count):
                self._held[index] = make(index)

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(self._count)[index]]
        index = range(self._count)[index]  # a negative index counts from the end; past it raises IndexError
        held = self._held[index]
        if held is None:
            held = self._held[index] = self._make(index)
        return held

    def taken(self, index: int) -> bool:
        """Whether the run was prepared (a map's row that no worker took was not)."""
        return self._held[index] is not None

    def release(self, index: int) -> None:
        """Forget a map's prepared run (made again when next asked for): a batch's row while it waits."""
        if not self.keep:
            self._held[index] = None

    def ended(self, index: int) -> None:
        """The run ended: a map keeps how, not the job."""
        if not self.keep and self._held[index] is not None:
            self._held[index] = EndedRun(self._held[index])


class EndedRun:
    """A map's row once it ended, as ``Columns`` keeps it: the outcome, without request, accumulator or recording."""

    __slots__ = ("error", "result", "verified")
    ran = True

    def __init__(self, job: Job) -> None:
        self.result, self.error = job.outcome()
        self.verified = job.verified

    def outcome(self) -> tuple[Result, errors.GraniteError | None]:
        return self.result, self.error


class RowSpecs(Sequence[RunSpec]):
    """A map's runs, row by row under each setting, each made when asked for (a label a row is not kept)."""

    def __init__(self, prompts: Sequence[str], settings: Sequence[RunSpec]) -> None:
        self.prompts, self.settings = prompts, settings

    def __len__(self) -> int:
        return len(self.prompts) * len(self.settings)

    @overload
    def __getitem__(self, index: int) -> RunSpec: ...
    @overload
    def __getitem__(self, index: slice) -> list[RunSpec]: ...
    def __getitem__(self, index: int | slice) -> RunSpec | list[RunSpec]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        row, at = divmod(range(len(self))[index], len(self.settings))
        setting = self.settings[at]
        return RunSpec(f"row {row + 1}" + (f" · {setting.label}" if setting.label else ""), setting.params, setting.repeat,
                       prompt=self.prompts[row])


class AdaptiveGate:
    """How many runs of a batch are in flight: at most ``limit``, halved when the server rate-limits one (at most once
    per ``Retry-After``: the refusals of one crowded moment are one signal, not many), raised again by one for every
    run that ends (additive increase, multiplicative decrease).  The refused run waits as the server said and is sent
    again by the client, so no run fails for rate limiting alone while its retries remain; the others go on, fewer at
    once.  Waiting runs start in the order they came (first in, first out), each woken only when a place is free:
    a batch of 10,000 rows costs a few operations a row, not one per waiting row each time a row ends."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.window = float(limit)
        self.lowest = float(limit)  # how far it fell (the summary says so)
        self.throttles = 0
        self._in_flight = 0
        self._calm_at = 0.0  # before this (loop time), a refusal belongs to the last halving
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def allowed(self) -> int:
        return max(1, int(self.window))

    async def __aenter__(self) -> None:
        if self._in_flight < self.allowed and not self._waiting:
            self._in_flight += 1
            return
        place = asyncio.get_running_loop().create_future()
        self._waiting.append(place)
        try:
            await place  # ``_wake`` counts the run in flight as it hands over the place
        except asyncio.CancelledError:
            if place.done() and not place.cancelled():  # handed a place as it was cancelled: pass it on
                self._in_flight -= 1
                self._wake()
            else:
                self._waiting.remove(place)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting and self._in_flight < self.allowed:
            place = self._waiting.popleft()
            if not place.done():
                self._in_flight += 1
                place.set_result(None)

    def throttled(self, delay: float) -> None:
        """The server rate-limited a run, which will try again in ``delay`` seconds: halve, once per such wait."""
        self.throttles += 1
        now = asyncio.get_running_loop().time()
        if now < self._calm_at:
            return
        self.window = max(1.0, self.window / 2)
        self.lowest = min(self.lowest, self.window)
        self._calm_at = now + delay

    def succeeded(self) -> None:
        self.window = min(float(self.limit), self.window + 1)
        self._wake()


REPAIR_NOTE = "the reply did not fit the schema: asked again with what is wrong"


class StructuredJob:
    """A turn whose reply must fit a schema (``--schema``): the first request, and one repair when the reply does not
    fit.  Each attempt is a ``SingleJob`` of its own (its cache entry, budget check and ledger row); the view follows
    whichever is streaming, and the outcome is the last reply with its validated value, method and attempts."""

    def __init__(self, first: SingleJob, schema: OutputSchema, method: SchemaMethod,
                 repair: Callable[[SingleJob, Request], SingleJob]) -> None:
        self.attempts = [first]
        self.schema, self.method, self._repair = schema, method, repair
        self._error: errors.GraniteError | None = None  # a repair the budget refused

    turn = property(lambda self: self.attempts[0].turn)
    target = property(lambda self: self.attempts[0].target)
    request = property(lambda self: self.attempts[0].request)
    loop = property(lambda self: self.attempts[0].loop)
    acc = property(lambda self: self.attempts[-1].acc)
    verified = property(lambda self: self.attempts[-1].verified)
    recorded = property(lambda self: any(job.recorded for job in self.attempts))
    ran = property(lambda self: any(job.ran for job in self.attempts))
    warnings = property(lambda self: [warning for job in self.attempts for warning in job.warnings])

    def preload(self) -> None:
        self.attempts[0].preload()

    async def stream(self, view: LiveLike | None = None, *, check_support: bool = True) -> None:
        job = self.attempts[0]
        await job.stream(view, check_support=check_support)
        while len(self.attempts) < MOST_ATTEMPTS:
            result, error = job.outcome()
            if error is not None or result.partial:
                return
            _, problems = read_reply(result.text, self.schema)
            if not worth_repairing(result, problems):
                return
            try:
                job = self._repair(job, repair_request(job.request, result.text, problems))
            except BudgetError as exc:
                self._error = BudgetError(f"{exc.message}; the reply that does not fit the schema was not repaired",
                                          setting=exc.setting)
                return
            self.attempts.append(job)
            await job.stream(view, check_support=False)

    def outcome(self) -> tuple[Result, errors.GraniteError | None]:
        result, error = self.attempts[-1].outcome()
        earlier = [job.outcome()[0] for job in self.attempts[:-1]]
        return finished(result, self.schema, self.method, len(self.attempts), earlier), error or self._error


Job = SingleJob | StructuredJob  # one turn's run, as the front ends drive it


class _Live(Sequence[Accumulator]):
    """The columns' accumulators as they are now (a column's attempt may change while the grid is shown)."""

    def __init__(self, columns: Sequence[Any]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [column.acc for column in self.columns[index]]
        return self.columns[index].acc


class _Showing:
    """A live view shown a tool step's visible progress (prompted mode hides the ``<tool_call>`` blocks)."""

    def __init__(self, view: Any, tools: ToolLoop) -> None:
        self.view, self.tools = view, tools

    async def run(self, acc: Progress) -> None:
        assert isinstance(acc, Accumulator)
        await self.view.run(self.tools.visible(acc))


def _applied(spec: RunSpec, turn: Turn) -> Turn:
    """The turn a run of a batch sends: ``turn`` with what ``spec`` changes of it besides sampling."""
    if not spec.turn_changes:
        return turn
    return replace(turn, prompt=spec.prompt if spec.prompt is not None else turn.prompt,
                   prefix=spec.prefix if spec.prefix is not None else turn.prefix)


_shared: Session | None = None


def shared_session(**overrides: Any) -> Session:
    """The session of the Python API (and of a panel made without the magic).

    Clients, and so loaded local models and open connections, are kept between
    calls; the settings are read from the environment again on each call, so
    changing ``GRANITE_BASE_URL`` between two calls is honoured.
    """
    global _shared
    settings = Settings.from_env(**overrides)
    if _shared is None:
        _shared = Session(settings)
    else:
        _shared.settings = settings
    return _shared
