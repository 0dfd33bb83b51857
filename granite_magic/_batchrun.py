"""A map's rows answered by a batch instead of one live request each.

Whatever answers, a row ends as a live row would: its job takes the answer (``SingleJob.answered``: kept in the
cache, counted in the ledger), rows already in the cache are replayed and never sent, and the result frame is the
one ``finish_map`` makes for a live run.  Two sinks:

* ``batch``: the rows not yet answered are submitted to OpenRouter's Batch API in chunks, each batch
  written to a manifest in the cache directory *before* anything waits on it; polling resumes from the manifests, so
  running the same cell after a kernel restart polls what was submitted and submits nothing twice.  A batch that
  ends without answering a row (a failed request, or a failed or expired batch) leaves that row's error; running
  again submits those rows again, or ``via="live"`` sends them live (the answered rows are in the cache).
* ``jsonl``: the rows not yet answered are written as an OpenAI-format batch input file for ``vllm run-batch``; the
  manifest keeps each row's cache key and request, so ``read_batch(output, into=frame)`` can take the answers into
  the cache and the frame later, in any kernel.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _errors as errors
from ._batch import (
    MOST_PER_CALL,
    Answer,
    BatchState,
    answer_events,
    batch_body,
    batch_state,
    create_bodies,
    custom_id,
    jsonl_line,
    read_answer,
    read_answer_lines,
    results_page,
)
from ._errors import redact
from ._plan import Prices, RowsAtHand, plan, plan_frame
from ._shapes import chat_body

if TYPE_CHECKING:
    from ._client import GraniteClient
    from ._events import Event
    from ._session import Columns, CompareJob, Job, SingleJob

@dataclass(frozen=True, slots=True)  # slots: one per row of a batch
class PendingRow:
    """A row (under one setting) that needs an answer: its column in the map and its custom id.  Its job and its
    request's body are made when asked for, not kept while the batch runs (a map of 20,000 rows waits for hours)."""

    index: int
    custom_id: str
    columns: Columns

    @property
    def job(self) -> SingleJob:
        return first_attempt(self.columns[self.index])

    @property
    def body(self) -> dict[str, Any]:
        return batch_body(chat_body(self.columns.request_of(self.index)))

    async def answered(self, events: Sequence[Event], error: str | None) -> None:
        """The row's answer (or why it has none) taken as a live reply is; then only how it ended is kept."""
        await self.job.answered(events, error)
        self.columns.ended(self.index)


def first_attempt(column: Job) -> SingleJob:
    """The request a batch sends for a column (a schema's repair would be a second round: a batch has one)."""
    return column.attempts[0] if hasattr(column, "attempts") else column


def check_batchable(job: CompareJob) -> None:
    """Refuse, before anything is sent, what a batch cannot carry."""
    if job.turn.raw:
        raise errors.InvalidParameterError("a batch sends chat completions: raw=True cannot go in one; run it live")
    for report in job.probes.find(job.target.client.base_url, job.target.model) if job.probes is not None else ():
        seen = report.get("batch")
        if seen is not None and seen.observed == "rejected":
            raise errors.InvalidParameterError(f"{job.target.model} takes no batches here (probed {report.date}: "
                                               f"{seen.evidence}): run it live (via='live')", names=("via",))
    if job.target.client.kind == "local":
        raise errors.InvalidParameterError("a batch is for a server: give base_url= (vllm serves http://localhost:8000/v1) "
                                           "or backend='openrouter', and model= as the server names it")


def pending_rows(job: CompareJob) -> list[PendingRow]:
    """The columns the cache cannot answer, each with its custom id and the body a batch sends for it."""
    pending = []
    for index in range(len(job.columns)):
        single = first_attempt(job.columns[index])
        if _cached(single):
            continue  # kept: it is replayed
        key = single.cache.key if single.cache is not None else _body_key(batch_body(chat_body(single.request)))
        pending.append(PendingRow(index, custom_id(index, key), job.columns))
        job.columns.release(index)  # made again when its answer comes
    return pending


def _cached(single: SingleJob) -> bool:
    try:
        single.preload()
    except errors.GraniteError:  # a replay-mode miss or a corrupt recording: the batch answers it
        return False
    return single.cache is not None and single._preloaded is not None and single.cache.serves(single._preloaded)


def _body_key(body: Mapping[str, Any]) -> str:
    from ._cache import cache_key

    return cache_key({"batch_body": body})


async def replay_cached(job: CompareJob, pending: Sequence[PendingRow]) -> None:
    """The columns the cache answers, replayed (nothing is sent)."""
    waiting = {row.index for row in pending}
    for index in range(len(job.columns)):
        if index not in waiting:
            await job.columns[index].stream(None, check_support=False)
            job.columns.ended(index)


async def take_answers(pending: Sequence[PendingRow], answers: Mapping[str, Answer], missing: str) -> int:
    """Each pending row's answer into its job; ``missing``: the error of a row the batch did not answer.  Returns
    how many rows were answered."""
    answered = 0
    for row in pending:
        answer = answers.get(row.custom_id)
        if answer is not None and answer.body is not None:
            await row.answered(answer_events(answer.body), None)
            answered += 1
        else:
            await row.answered((), answer.error if answer is not None else missing)
    return answered


# --- manifests ------------------------------------------------------------------------------------------------------


def manifest_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / "batches"


def save_manifest(folder: Path, name: str, document: Mapping[str, Any]) -> Path:
    """Written beside and moved into place, so a kernel that dies while writing leaves the old one whole."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json.gz"
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(gzip.compress(json.dumps(document, ensure_ascii=False).encode()))
    temporary.replace(path)
    return path


def load_manifests(folder: Path, kind: str) -> list[dict[str, Any]]:
    """Every readable manifest of ``kind`` in ``folder`` (an unreadable one is skipped: it cannot name a row)."""
    found = []
    for path in sorted(folder.glob("*.json.gz")) if folder.is_dir() else ():
        try:
            document = json.loads(gzip.decompress(path.read_bytes()))
        except (OSError, ValueError, EOFError):
            continue
        if isinstance(document, dict) and document.get("kind") == kind:
            found.append(document)
    return found


# --- OpenRouter's Batch API -----------------------------------------------------------------------------------------


@dataclass
class BatchProgress:
    """What a batch run shows while it waits: each batch's last state."""

    submitted_now: int = 0  # requests this run submitted (a resumed run submits none)
    resumed: int = 0  # batches found in the manifests, submitted by an earlier run
    cached: int = 0  # rows the cache answered
    states: dict[str, BatchState] | None = None
    polls: int = 0

    def summary(self) -> dict[str, Any]:
        """What a result frame keeps of the run (``attrs["batch"]``)."""
        return {"submitted": self.submitted_now, "resumed": self.resumed, "cached": self.cached, "polls": self.polls,
                "batches": {batch_id: state.status for batch_id, state in (self.states or {}).items()}}

    def line(self) -> str:
        states = list((self.states or {}).values())
        done = sum(state.completed for state in states)
        failed = sum(state.failed for state in states)
        total = sum(state.total for state in states)
        statuses = ", ".join(sorted({state.status for state in states})) or "nothing to submit"
        return (f"batch: {len(states)} batch(es), {total} request(s): {done} done, {failed} failed ({statuses}); "
                f"{self.cached} from the cache; {self.submitted_now} submitted now, {self.resumed} batch(es) resumed")


async def run_openrouter_batch(job: CompareJob, cache_dir: str | Path, *, poll_s: float,
                               progress: BatchProgress | None = None,
                               on_progress: Callable[[BatchProgress], None] = lambda progress: None) -> BatchProgress:
    """Every row of ``job`` answered through OpenRouter's Batch API (the cached ones replayed), resuming the batches
    the manifests in ``cache_dir`` name; returns what was done."""
    client: GraniteClient = job.target.client  # type: ignore[assignment]
    check_batchable(job)
    pending = pending_rows(job)
    progress = progress or BatchProgress()
    progress.cached, progress.states = len(job.columns) - len(pending), {}
    await replay_cached(job, pending)
    folder = manifest_dir(cache_dir)
    resumed = _open_batches(folder, {row.custom_id for row in pending})
    progress.resumed = len(set(resumed.values()))
    rows_of: dict[str, list[PendingRow]] = {}  # batch id -> its rows
    fresh = []
    for row in pending:
        if row.custom_id in resumed:
            rows_of.setdefault(resumed[row.custom_id], []).append(row)
        else:
            fresh.append(row)
    del resumed, pending  # the rows live in ``rows_of`` now, and go with their batch
    for start in range(0, len(fresh), MOST_PER_CALL):
        chunk = fresh[start:start + MOST_PER_CALL]
        body = next(create_bodies(job.target.model, ((row.custom_id, row.body) for row in chunk)))
        state = batch_state(await client.create_batch(body))
        del body  # 5,000 requests' bodies: not held while the next chunk is made
        save_manifest(folder, state.id, {"kind": "openrouter-batch", "id": state.id, "model": job.target.model,
                                         "base_url": client.base_url, "custom_ids": [row.custom_id for row in chunk],
                                         "created": time.time(), "ended": False})
        rows_of[state.id] = chunk
        progress.submitted_now += len(chunk)
    del fresh
    try:
        await _wait_and_take(client, folder, rows_of, progress, poll_s, on_progress)
    except errors.GraniteError as exc:  # the batches were submitted and go on: nothing is lost by stopping here
        raise errors.GraniteError(f"{exc.message.rstrip('.')}; the submitted batches go on: run the same map again to "
                                  "resume them (nothing is submitted twice)") from None
    return progress


def _open_batches(folder: Path, wanted: set[str]) -> dict[str, str]:
    """custom id -> the batch an earlier run submitted it in, for the batches not yet read to the end."""
    found: dict[str, str] = {}
    for manifest in load_manifests(folder, "openrouter-batch"):
        if not manifest.get("ended"):
            found.update({identifier: manifest["id"] for identifier in manifest.get("custom_ids", ()) if identifier in wanted})
    return found


async def _wait_and_take(client: GraniteClient, folder: Path, rows_of: dict[str, list[PendingRow]], progress: BatchProgress,
                         poll_s: float, on_progress: Callable[[BatchProgress], None]) -> None:
    """Poll each batch (one request per batch per poll) until it ends, then take its answers into its rows (a batch's
    rows are let go once taken)."""
    waiting = set(rows_of)
    states = progress.states if progress.states is not None else {}
    while waiting:
        for batch_id in sorted(waiting):
            state = states[batch_id] = batch_state(await client.get_batch(batch_id))
            if state.ended:
                why = f"the batch {state.status}" + (f": {state.error}" if state.error else "") if state.status != "completed" \
                    else "the batch ended without an answer for this row"
                await _take_batch(client, batch_id, rows_of.pop(batch_id), why, read=state.status == "completed" or bool(state.completed))
                _mark_ended(folder, batch_id)
                waiting.discard(batch_id)
        progress.polls += 1
        on_progress(progress)
        if waiting:
            await asyncio.sleep(poll_s)


async def _take_batch(client: GraniteClient, batch_id: str, rows: Sequence[PendingRow], missing: str, *, read: bool) -> None:
    """An ended batch's answers taken into its rows page by page (``read``: it has some), so that no more than a page
    of answers is held at once; ``missing``: the error of a row no page answered."""
    waiting = {row.custom_id: row for row in rows}
    cursor: str | None = None
    while read:
        page, cursor = results_page(await client.batch_results(batch_id, cursor))
        # redacted by the client (a server may echo the key); an id a page answers twice is taken once
        answers = {answer.custom_id: answer for answer in map(read_answer, page) if answer is not None}
        taking = [row for identifier in answers if (row := waiting.pop(identifier, None)) is not None]
        await take_answers(taking, answers, missing)
        if cursor is None:
            break
    await take_answers(list(waiting.values()), {}, missing)


def _mark_ended(folder: Path, batch_id: str) -> None:
    path = folder / f"{batch_id}.json.gz"
    try:
        document = json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, ValueError, EOFError):
        return
    save_manifest(folder, batch_id, {**document, "ended": True})


# --- JSONL files for vllm run-batch ---------------------------------------------------------------------------------


def write_jsonl(job: CompareJob, path: str | Path, cache_dir: str | Path) -> list[PendingRow]:
    """The rows the cache cannot answer, as an OpenAI-format batch input file at ``path``; a manifest in the cache
    directory keeps what ``read_batch`` needs to take the answers back (each row's cache key and request)."""
    check_batchable(job)
    pending = pending_rows(job)
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as file:
        for row in pending:
            file.write(jsonl_line(row.custom_id, row.body) + "\n")
    rows = {row.custom_id: _keyed(row) for row in pending}
    save_manifest(manifest_dir(cache_dir), _jsonl_name(target.resolve()),
                  {"kind": "jsonl", "file": str(target.resolve()), "rows": rows, "created": time.time()})
    return pending


def _keyed(row: PendingRow) -> dict[str, Any]:
    """What a manifest keeps of a row written to a file: its cache key and request fields."""
    cache = row.job.cache
    row.columns.release(row.index)
    return {"key": cache.key if cache else None, "fields": cache.fields if cache else None}


def read_lines(paths: Iterable[str | Path]) -> Iterable[str]:
    for path in paths:
        with Path(path).expanduser().open(encoding="utf-8") as file:
            yield from file


def waiting_for_file(frame: Any, job: CompareJob, pending: Sequence[PendingRow], batch_file: str | Path,
                     cache_dir: str | Path) -> Any:
    """The frame of a map whose unanswered rows went to a batch file: those rows say where they wait, and
    ``attrs["batch"]`` says what ``read_batch`` needs."""
    where = Path(batch_file).expanduser().resolve()
    column = frame.columns.get_loc("_error")
    for row in pending:
        frame.iloc[row.index, column] = (f"waiting in {where.name}: run `vllm run-batch -i {where.name} -o out.jsonl "
                                         f"--model ...`, then read_batch('out.jsonl', into=frame)")
    ids: list[str | None] = [None] * len(frame)
    for row in pending:
        ids[row.index] = row.custom_id
    method = getattr(job.columns[0], "method", None)  # a schema's: how the requests in the file ask for it
    frame.attrs["via"] = "jsonl"
    frame.attrs["batch"] = {"file": str(where), "cache_dir": str(Path(cache_dir).expanduser().resolve()),
                            "manifest": str(manifest_dir(cache_dir) / f"{_jsonl_name(where)}.json.gz"), "custom_ids": ids,
                            "method": method}
    return frame


def _jsonl_name(file: Path) -> str:
    return f"jsonl-{_body_key({'file': str(file)})[:16]}"


def read_batch_output(into: Any, paths: Sequence[str | Path]) -> Any:
    """``into`` with the answers in ``paths`` (output and errors files) joined by custom id (see ``read_batch``)."""
    from ._cache import Recorder, RunCache
    from ._events import Accumulator
    from ._rows import reply_columns, row_columns
    from ._spec import output_schema
    from ._structured import finished

    batch = into.attrs.get("batch") if hasattr(into, "attrs") else None
    if not isinstance(batch, Mapping) or not isinstance(batch.get("custom_ids"), list):
        raise errors.InvalidParameterError("into= must be the frame map(..., via='jsonl') returned (its attrs name the batch)",
                                           names=("into",))
    manifest = _read_manifest(Path(batch["manifest"]))
    answers, unreadable = read_answer_lines(redact(line) for line in read_lines(paths))  # key-shaped text too
    cache = RunCache(batch["cache_dir"])
    schema = output_schema(into.attrs["schema"]) if into.attrs.get("schema") else None
    fields = into.attrs.get("fields") if schema is not None else None
    frame = into.copy()
    answered = 0
    for position, identifier in enumerate(batch["custom_ids"]):
        if identifier is None:
            continue
        answer = answers.get(identifier)
        events = answer_events(answer.body) if answer is not None and answer.body is not None else []
        acc = Accumulator()
        for event in events:
            acc.feed(event)
        error = None if events else answer.error if answer is not None else f"no answer in {', '.join(Path(p).name for p in paths)}"
        result = acc.result(error=error) if error else acc.result()
        if error is None:
            answered += 1
            _keep(cache, manifest.get("rows", {}).get(identifier), events, Recorder)
            if schema is not None:
                result = finished(result, schema, batch.get("method") or "prompted", 1)
        columns = {**reply_columns(result, fields), **row_columns(result, error), "_latency_s": None}
        for name, value in columns.items():
            frame.iloc[position, frame.columns.get_loc(name)] = value
    frame.attrs["batch"] = {**batch, "read": [str(p) for p in paths], "answered": answered, "unreadable": unreadable}
    return frame


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, ValueError, EOFError) as exc:
        raise errors.GraniteError(f"The batch's manifest {path} cannot be read ({type(exc).__name__}): the answers can "
                                  "still be joined by running the map again with via='live' (it re-pays what is not cached).") from None
    return document if isinstance(document, dict) else {}


def _keep(cache: Any, row: Any, events: Sequence[Any], recorder: Any) -> None:
    """An answer kept in the cache under its row's key (in the kernel's pack, as a map's rows are), so that a live run
    of the same row is served from it."""
    if not isinstance(row, Mapping) or not row.get("key") or not isinstance(row.get("fields"), Mapping):
        return
    kept = recorder(row["fields"])
    for event in events:
        kept.add(event)
    cache.append(row["key"], kept.recording())


# --- the plan: what each way would cost and take ----------------------------------------------------------------------


def rows_at_hand(job: CompareJob) -> RowsAtHand:
    """What is known of a map's runs before any is sent: which the cache answers (and how long and fast those
    replies were), and the prompts of the rest."""
    from ._cache import Recording
    from ._events import UsageReport
    from ._ledger import prompt_token_bound

    pending = pending_rows(job)
    waiting = {row.index for row in pending}
    recordings = [first_attempt(column)._preloaded for index, column in enumerate(job.columns) if index not in waiting]
    answered = [recording for recording in recordings if isinstance(recording, Recording)]
    tokens = [event.usage.completion_tokens for recording in answered for _, event in recording.events
              if isinstance(event, UsageReport) and event.usage.completion_tokens]
    requests = [job.columns.request_of(row.index) for row in pending]
    limit = first_attempt(job.columns[0]).request.sampling.get("max_tokens")
    return RowsAtHand(runs=len(job.columns), cached=len(job.columns) - len(pending),
                      prompt_tokens=sum(sum(map(len, r.texts)) // 4 + 4 * len(r.messages) for r in requests),
                      prompt_bound=sum(prompt_token_bound(r) for r in requests), max_tokens=limit,
                      answered_tokens=tokens, answered_latency_s=[r.duration_s for r in answered if r.duration_s])


async def plan_for(job: CompareJob, concurrency: int) -> Any:
    """``map(..., dry_run=True)``: the ways open to the job's target, compared for its rows (nothing is sent)."""
    client = job.target.client
    rows = rows_at_hand(job)
    info = await client.listing(job.target.model) if client.kind != "local" else None
    prices = Prices(info.prompt_price, info.completion_price, info.max_completion_tokens or info.context_length) if info else None
    backend = "local" if client.kind == "local" else "openrouter" if await client.billed(job.target.model) else "server"
    return plan_frame(plan(rows, prices, concurrency=concurrency, backend=backend), rows)
