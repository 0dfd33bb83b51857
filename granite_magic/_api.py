"""The Python API's functions beside the client: ``compare`` and ``map`` with their async twins."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import _grid  # noqa: F401  (registers how a Comparison draws itself as HTML)
from ._batch import check_via
from ._batchrun import (
    BatchProgress,
    plan_for,
    read_batch_output,
    replay_cached,
    run_openrouter_batch,
    waiting_for_file,
    write_jsonl,
)
from ._comparison import Comparison, RunSpec, parse_seeds, plan_runs
from ._kernel import session_for
from ._params import validate
from ._probe import ProbeReport
from ._rows import Expect, Rows, expect_column, read_rows, row_prompts
from ._session import CompareJob, QuietGrid, Session, Turn, new_turn, shared_session
from ._settings import Settings
from ._spec import output_schema

__all__ = ["acompare", "amap", "compare", "map", "probe", "usage"]


def _session(concurrency: int | None = None) -> Session:
    """The session a Python call runs in: in an IPython where the extension is loaded, the magic's (its ``%config``
    settings over the environment's, its ledger and budget, so ``%granite usage`` counts the call), else the API's
    own (settings from the environment, read on each call).  ``concurrency`` is checked here, before anything is sent;
    each call gives it to its run, so that it changes no setting."""
    if concurrency is not None:
        Settings(concurrency=concurrency)  # refused in one line naming it
    ipython = sys.modules.get("IPython")  # a program that never imported IPython has no shell: not imported for it
    return session_for(ipython.get_ipython() if ipython is not None else None) or shared_session()


def _prepare(prompt: str, seeds: str | Sequence[int], sweep: Mapping[str, Sequence[Any]] | None, repeat: int,
             concurrency: int | None, params: Mapping[str, Any], **target: Any) -> tuple[Session, Turn, list[RunSpec]]:
    """What both twins do before running: the grid planned and the turn validated, before anything is sent."""
    seed_list = parse_seeds(seeds) if seeds else []
    checked = {name: [validate(name, v) for v in values] for name, values in (sweep or {}).items()}
    specs = plan_runs(seed_list, checked, repeat)
    return _session(concurrency), new_turn(prompt, params, **target), specs


def compare(
    prompt: str,
    *,
    seeds: str | Sequence[int] = (),
    sweep: Mapping[str, Sequence[Any]] | None = None,
    repeat: int = 1,
    concurrency: int | None = None,
    system: str | None = None,
    model: str | None = None,
    base_url: str | None = None,
    backend: str | None = None,
    api: str | None = None,
    verify: bool = False,
    template: str | None = None,
    raw: bool = False,
    schema: Any = None,
    schema_mode: str = "auto",
    **params: Any,
) -> Comparison:
    """Run ``prompt`` once per seed and swept value (times ``repeat``), concurrently.

    ``compare("Name a colour", seeds="1-4", sweep={"temperature": [0, 0.7]}, max_tokens=20)``
    takes the same target arguments as a single turn (``model``, ``base_url``,
    ``backend``, ``api``, ``system``; ``template``, the local model's chat template; ``raw=True``, the prompt continued
    as written; ``schema``, a field list, class or JSON Schema the reply must fit: each run's ``Result.value``).  ``verify=True`` runs live and compares each run with its recording
    (when the cache is in replay mode, nothing runs live: the recordings are shown, marked not checked).
    """
    session, turn, specs = _prepare(prompt, seeds, sweep, repeat, concurrency, params, system=system, model=model,
                                    base_url=base_url, backend=backend, api=api, verify=verify, template=template, raw=raw,
                                    schema=output_schema(schema) if schema is not None else None, schema_mode=schema_mode)
    return session.compare(turn, specs, concurrency=concurrency)


async def acompare(
    prompt: str,
    *,
    seeds: str | Sequence[int] = (),
    sweep: Mapping[str, Sequence[Any]] | None = None,
    repeat: int = 1,
    concurrency: int | None = None,
    system: str | None = None,
    model: str | None = None,
    base_url: str | None = None,
    backend: str | None = None,
    api: str | None = None,
    verify: bool = False,
    template: str | None = None,
    raw: bool = False,
    schema: Any = None,
    schema_mode: str = "auto",
    **params: Any,
) -> Comparison:
    """Awaitable twin of ``compare()``, usable from any event loop."""
    session, turn, specs = _prepare(prompt, seeds, sweep, repeat, concurrency, params, system=system, model=model,
                                    base_url=base_url, backend=backend, api=api, verify=verify, template=template, raw=raw,
                                    schema=output_schema(schema) if schema is not None else None, schema_mode=schema_mode)
    job = session.start_compare(turn, specs, concurrency=concurrency)
    await job.loop.run_async(job.stream(QuietGrid()))
    return session.finish_compare(job)


def map(
    over: Any,
    prompt: str,
    *,
    schema: Any = None,
    schema_mode: str = "auto",
    limit: int | None = None,
    sample: int | None = None,
    seeds: str | Sequence[int] = (),
    sweep: Mapping[str, Sequence[Any]] | None = None,
    expect: str | Callable[[Mapping[str, Any], Any], Any] | None = None,
    concurrency: int | None = None,
    system: str | None = None,
    model: str | None = None,
    base_url: str | None = None,
    backend: str | None = None,
    api: str | None = None,
    via: str = "live",
    batch_file: str | None = None,
    poll_s: float | None = None,
    dry_run: bool = False,
    **params: Any,
) -> Any:
    """``prompt`` once per row of ``over`` (a DataFrame, a Series, a list of dicts or a list of strings), ``{column}``
    filled from the row (``{item}`` for strings; ``{first name}`` for a column so named; rows with no value there
    refuse the run, before anything is sent): a DataFrame with one row per input row in input order, its columns, the reply
    (``reply``, or the ``schema``'s fields), and ``_status``, ``_error``, ``_attempts``, ``_cost``, ``_latency_s``,
    ``_method``.  One bad row never fails the run; rows are cached, so a rerun after an interrupt (which returns the
    rows finished so far) re-pays none of them.  ``limit``/``sample`` try a few rows first.  ``seeds``/``sweep`` run
    every row under each setting (the index is then the row and the setting), and ``expect`` (a column, or a function
    of the row and its answer) scores each reply in ``_score``; ``granite_magic.setting_summary(frame)``
    gives each setting's accuracy with a 95% interval.

    ``via`` says what answers the rows: ``"live"`` (one request each, ``concurrency`` at once), ``"batch"`` (or
    ``"openrouter-batch"``: OpenRouter's Batch API at its batch price: submitted once, polled every ``poll_s`` seconds (default: the ``batch_poll_s`` setting, 30), resumed by running
    the same call again, even after a kernel restart) or ``"jsonl"`` (an input file for ``vllm run-batch`` written
    to ``batch_file``; ``read_batch(output, into=frame)`` takes the answers back).  Whatever answers, the frame is
    the same, and rows already in the cache are never sent again.  ``dry_run=True`` sends nothing: it compares
    what each way would cost and take for these rows (measured on the rows already answered, when there are some)."""
    from . import _dask  # imports no dask: a Dask DataFrame's partitions each go through this function, on its workers
    if _dask.is_dask_frame(over):
        return _dask.map_dask(map, settings=_session(concurrency).settings,
                              **{name: value for name, value in locals().items() if name != "_dask"})
    run = _RowsRun.prepared(over, prompt, locals())
    try:
        done = run.job.loop.run(run.work())
    except KeyboardInterrupt:
        if not run.keeps_what_finished:
            raise
        done = None  # the rows finished so far are the result; the others say they did not run (a batch goes on)
    return run.result(done)


async def amap(
    over: Any,
    prompt: str,
    *,
    schema: Any = None,
    schema_mode: str = "auto",
    limit: int | None = None,
    sample: int | None = None,
    seeds: str | Sequence[int] = (),
    sweep: Mapping[str, Sequence[Any]] | None = None,
    expect: str | Callable[[Mapping[str, Any], Any], Any] | None = None,
    concurrency: int | None = None,
    system: str | None = None,
    model: str | None = None,
    base_url: str | None = None,
    backend: str | None = None,
    api: str | None = None,
    via: str = "live",
    batch_file: str | None = None,
    poll_s: float | None = None,
    dry_run: bool = False,
    **params: Any,
) -> Any:
    """Awaitable twin of ``map()`` (the same arguments, ``via`` and ``dry_run`` included), usable from any event loop;
    cancelling it stops the rows as an interrupt stops ``map``'s."""
    run = _RowsRun.prepared(over, prompt, locals())
    return run.result(await run.job.loop.run_async(run.work()))


class _RowsRun:
    """A map's rows answered one way (``via``) or costed (``dry_run``), apart from how the caller waits: ``work`` runs
    on the loop (an interrupt stops it), ``result`` makes the frame of whatever finished.  ``map`` and ``amap`` differ
    only in how they wait."""

    def __init__(self, session: Session, job: CompareJob, rows: Rows, settings: Sequence[RunSpec], scorer: Expect | None,
                 via: str, batch_file: str | None, poll_s: float | None, dry_run: bool) -> None:
        self.session, self.job, self.rows, self.settings, self.scorer = session, job, rows, settings, scorer
        self.via, self.batch_file, self.dry_run = via, batch_file, dry_run
        self.cache_dir = session.settings.cache_dir
        self.poll_s = session.settings.batch_poll_s if poll_s is None else poll_s
        self.progress = BatchProgress()
        # the file is written before anything waits: what is in it is known even if the kernel stops next
        self.pending = write_jsonl(job, batch_file, self.cache_dir) if via == "jsonl" and not dry_run and batch_file else None
        # an estimate and a file's replayed rows stop whole on an interrupt; live rows and batches keep what finished
        self.keeps_what_finished = not dry_run and via != "jsonl"

    @classmethod
    def prepared(cls, over: Any, prompt: str, arguments: Mapping[str, Any]) -> _RowsRun:
        """Everything checked and planned before anything is sent, from ``map``'s (or ``amap``'s) arguments."""
        via = check_via(arguments["via"], arguments["batch_file"])
        target = {name: arguments[name] for name in ("system", "model", "base_url", "backend", "api")}
        session, turn, rows, prompts = _prepare_rows(over, prompt, arguments["schema"], arguments["schema_mode"],
                                                     arguments["limit"], arguments["sample"], arguments["concurrency"],
                                                     arguments["params"], **target)
        settings, scorer = _settings(arguments["seeds"], arguments["sweep"]), _expect(arguments["expect"], rows)
        job = session.start_map(turn, prompts, settings=settings, concurrency=arguments["concurrency"])
        return cls(session, job, rows, settings, scorer, via, arguments["batch_file"], arguments["poll_s"], arguments["dry_run"])

    async def work(self) -> Any:
        if self.dry_run:
            return await plan_for(self.job, self.job.concurrency)
        if self.pending is not None:
            await replay_cached(self.job, self.pending)
        elif self.via != "live":
            await run_openrouter_batch(self.job, self.cache_dir, poll_s=self.poll_s, progress=self.progress)
        else:
            await self.job.stream(QuietGrid())
        return None

    def result(self, done: Any) -> Any:
        if self.dry_run:
            return done
        frame = self.session.finish_map(self.job, self.rows, self.settings, self.scorer)
        if self.pending is not None:
            assert self.batch_file is not None  # check_via
            return waiting_for_file(frame, self.job, self.pending, self.batch_file, self.cache_dir)
        if self.via != "live":
            frame.attrs.update(via=self.via, batch=self.progress.summary())
        return frame


def read_batch(output: str, *, into: Any, errors: str | None = None) -> Any:
    """``into`` (the frame ``map(..., via="jsonl")`` returned) with the answers of a batch output file (and an
    errors file, as OpenAI writes failures apart) joined by ``custom_id``: each answered row's reply, validated
    against the map's schema, and kept in the cache, so that running the map again re-pays none of them."""
    return read_batch_output(into, [path for path in (output, errors) if path])


def _settings(seeds: str | Sequence[int], sweep: Mapping[str, Sequence[Any]] | None) -> list[RunSpec]:
    """The settings every row runs under: the grid ``compare`` would plan (nothing: the turn's own)."""
    if not seeds and not sweep:
        return []
    checked = {name: [validate(name, v) for v in values] for name, values in (sweep or {}).items()}
    return plan_runs(parse_seeds(seeds) if seeds else [], checked)


def _expect(expect: str | Callable[[Mapping[str, Any], Any], Any] | None, rows: Rows) -> Expect | None:
    if expect is None or callable(expect):
        return expect
    return expect_column(expect, rows)


def _prepare_rows(over: Any, prompt: str, schema: Any, schema_mode: str, limit: int | None, sample: int | None,
                  concurrency: int | None, params: Mapping[str, Any], **target: Any) -> tuple[Session, Turn, Rows, list[str]]:
    """What both twins do before sending: the rows read, every row's prompt made, the turn validated."""
    rows = read_rows(over, limit=limit, sample=sample)
    prompts = row_prompts(prompt, rows, system=target.get("system"))
    turn = new_turn(prompt, params, schema=output_schema(schema) if schema is not None else None, schema_mode=schema_mode,
                    **target)
    return _session(concurrency), turn, rows, prompts


def usage() -> Any:
    """What this kernel's runs have cost, one row per run (a pandas DataFrame), as ``%granite usage`` sums it up."""
    return _session().ledger.to_dataframe()


def probe(model: str | None = None, *, base_url: str | None = None, backend: str | None = None) -> ProbeReport:
    """Which parameters ``model`` really honours (as ``%granite probe``); the report is remembered for later warnings."""
    session = _session()
    return session.probe(session.resolve(new_turn("", {}, model=model, base_url=base_url, backend=backend)))
