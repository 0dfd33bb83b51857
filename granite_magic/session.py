"""A kernel's state between cells: clients, conversations, the last result.

The front ends (magic, panel) describe a turn as a ``Turn``; the session runs it
on the background loop next to the live view and turns every expected failure
into ``(partial result, message)`` so the front end can show both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from . import errors
from .client import DEFAULT_BASE_URL, DEFAULT_MODEL, BaseClient, GraniteClient, Secret
from .comparison import Comparison, RunSpec
from .params import validate_params
from .protocol import Accumulator, build_messages
from .render import LiveView, status_line
from .result import Result
from .runner import BackgroundLoop
from .shapes import shape

__all__ = ["Conversation", "GridLike", "Session", "Turn", "compare", "default_session", "interpolate"]

_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_]\w*)\}\}|\{([A-Za-z_]\w*)\}")

BACKENDS = (None, "auto", "http", "local")

INTERRUPTED = "Interrupted: the request was cancelled and the partial reply is kept. Run the cell again for a full reply."


def interpolate(template: str, namespace: Mapping[str, Any]) -> str:
    """Replace ``{name}`` by the value of ``name``; leave everything else verbatim.

    Only a bare identifier that exists in ``namespace`` is replaced, so code and
    JSON with braces (``{"a": 1}``, ``{x for x in y}``, ``{unknown}``) pass through
    untouched; ``{{name}}`` gives a literal ``{name}``.
    """

    def replace(match: re.Match[str]) -> str:
        escaped, name = match.groups()
        if escaped is not None:
            return "{" + escaped + "}"
        return str(namespace[name]) if name in namespace else match.group(0)

    return _PLACEHOLDER.sub(replace, template)


@dataclass
class Turn:
    """One request as a front end describes it; params are validated on creation."""

    prompt: str
    system: str | None = None
    model: str | None = None
    base_url: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    chat: str | None = None  # the conversation to continue, or None for a stateless turn
    backend: str | None = None  # "auto" (None), "http" or "local"
    api: str = "chat"  # the HTTP request format: chat, responses or messages

    def __post_init__(self) -> None:
        self.params = validate_params(self.params)
        shape(self.api)  # refuses an unknown format before anything is sent
        if self.backend not in BACKENDS:
            raise errors.InvalidParameterError(f"backend={self.backend!r} is invalid: must be one of {', '.join(map(str, BACKENDS[1:]))}")


class GridLike(Protocol):
    """What a comparison needs from its view (the widget grid, the terminal, or nothing)."""

    async def run(self, state: Sequence[Accumulator]) -> None: ...
    def column_done(self, index: int, status: str) -> None: ...


class QuietGrid:
    async def run(self, state: Sequence[Accumulator]) -> None:
        await asyncio.Event().wait()

    def column_done(self, index: int, status: str) -> None:
        pass


@dataclass
class Conversation:
    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)


class Session:
    def __init__(self) -> None:
        self.clients: dict[tuple[str, str], GraniteClient] = {}
        self.local_clients: dict[str | None, BaseClient] = {}
        self.local_instances = 1
        self.conversations: dict[str, Conversation] = {}
        self.last: Result | Comparison | None = None
        self._key: Secret | None = None
        self.read_timeout_s = 60.0

    def set_api_key(self, key: str) -> None:
        """Keep a key for this kernel only (never written to disk or shown)."""
        self._key = Secret(key)
        for client in self.clients.values():
            client.set_api_key(key)

    def client(self, base_url: str | None = None, api: str = "chat") -> GraniteClient:
        url = (base_url or os.environ.get("GRANITE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        client = self.clients.get((url, api))
        if client is None:
            client = GraniteClient(base_url=url, read_timeout_s=self.read_timeout_s, api=api)
            if self._key is not None:
                client.set_api_key(self._key.reveal())
            self.clients[(url, api)] = client
        client.read_timeout_s = self.read_timeout_s
        return client

    def backend(self, turn: Turn) -> str:
        """``http`` or ``local``: a cell's choice, else GRANITE_BACKEND, else decided by what is at hand.

        ``auto`` uses the HTTP API when a base URL or a key is given, else the local
        model when the ``local`` extra is installed, else the HTTP API (whose
        missing-key error then names both ways forward).
        """
        from .local import local_available

        choice = turn.backend or os.environ.get("GRANITE_BACKEND") or "auto"
        if choice in ("http", "local"):
            return choice
        if choice != "auto":
            raise errors.InvalidParameterError(f"GRANITE_BACKEND={choice!r} is invalid: must be auto, http or local")
        if turn.base_url or os.environ.get("GRANITE_BASE_URL") or self._key or os.environ.get("OPENROUTER_API_KEY"):
            return "http"
        return "local" if local_available() else "http"

    def client_for(self, turn: Turn) -> BaseClient:
        if self.backend(turn) == "http":
            return self.client(turn.base_url, turn.api)
        if turn.api != "chat":
            raise errors.InvalidParameterError(f"--api {turn.api} needs the HTTP backend: the local model has no request format")
        client = self.local_clients.get(turn.model)
        if client is None:
            from .local import LocalClient

            client = self.local_clients[turn.model] = LocalClient(turn.model, instances=self.local_instances)
        return client

    def model(self, turn: Turn) -> str:
        if self.backend(turn) == "local":
            return self.client_for(turn).model
        return turn.model or os.environ.get("GRANITE_MODEL") or DEFAULT_MODEL

    def label(self, turn: Turn) -> str:
        """The model as a status line names it; says "local" when llama.cpp answers."""
        model = self.model(turn)
        return f"{model} · local llama.cpp" if self.backend(turn) == "local" else model

    def messages(self, turn: Turn) -> list[dict[str, Any]]:
        if turn.chat is None:
            return build_messages(turn.prompt, system=turn.system)
        conversation = self.conversations.setdefault(turn.chat, Conversation())
        if turn.system is not None:
            conversation.system = turn.system
        return build_messages(turn.prompt, system=conversation.system, history=conversation.messages)

    def prepare(self, turn: Turn) -> tuple[BaseClient, dict[str, Any], Accumulator]:
        client = self.client_for(turn)
        body, acc = client.prepare(messages=self.messages(turn), model=self.model(turn), **turn.params)
        return client, body, acc

    def supported_parameters(self, turn: Turn) -> tuple[str, ...] | None:
        """What the model's listing names as supported; None when the server does not say."""
        try:
            info = self.client_for(turn).model_info(self.model(turn))
        except (errors.GraniteError, OSError, ValueError):
            return None  # a server without /models: nothing is known
        if info is None or not info.supported_parameters:
            return None
        return info.supported_parameters

    def unsupported(self, turn: Turn, also: Sequence[str] = ()) -> list[str]:
        """Parameters set (or swept, ``also``) that the model's listing does not name as supported."""
        supported = self.supported_parameters(turn)
        if supported is None:
            return []
        names = list(dict.fromkeys([*turn.params, *also]))
        return [name for name in names if name not in supported]

    def start(self, turn: Turn) -> SingleJob:
        """Prepare one turn (everything is validated here, before any I/O)."""
        client, body, acc = self.prepare(turn)
        return SingleJob(turn, client, body, acc)

    def finish(self, job: SingleJob, cancelled: str = "") -> tuple[Result, str | None]:
        """The job's result and error message; a complete chat turn joins its conversation."""
        result, error = job.outcome(cancelled or INTERRUPTED)
        if error is None and job.turn.chat is not None:
            self._remember(job.turn, result)
        self.last = result
        return result, error

    def run(self, turn: Turn, view: LiveView) -> tuple[Result, str | None]:
        """Stream one turn into ``view``, blocking; Ctrl-C stops it and keeps the partial reply."""
        job = self.start(turn)
        with contextlib.suppress(KeyboardInterrupt):  # the job keeps what arrived
            job.loop.run(job.stream(view))
        return self.finish(job)

    def start_compare(self, turn: Turn, specs: Sequence[RunSpec], *, concurrency: int = 4) -> CompareJob:
        if turn.chat is not None:
            raise errors.InvalidParameterError("a comparison cannot continue a conversation (--chat): each column would fork it")
        if concurrency < 1:
            raise errors.InvalidParameterError(f"concurrency={concurrency} is out of range: must be an integer >= 1")
        columns = [self.start(replace(turn, params={**turn.params, **spec.params})) for spec in specs]
        return CompareJob(turn, list(specs), columns, concurrency)

    def finish_compare(self, job: CompareJob, cancelled: str = "") -> Comparison:
        comparison = job.outcome(cancelled or INTERRUPTED)
        self.last = comparison
        return comparison

    def compare(self, turn: Turn, specs: Sequence[RunSpec], view: GridLike | None = None, *, concurrency: int = 4) -> Comparison:
        """Run one column per spec, at most ``concurrency`` at once, all streaming into ``view``.

        A failing column keeps its partial text and does not stop the others; an
        interrupt cancels them all and keeps what each had received.
        """
        job = self.start_compare(turn, specs, concurrency=concurrency)
        with contextlib.suppress(KeyboardInterrupt):
            job.loop.run(job.stream(view or QuietGrid()))
        return self.finish_compare(job)

    def _remember(self, turn: Turn, result: Result) -> None:
        """Only a complete turn joins the history, so a failed one cannot corrupt it."""
        assert turn.chat is not None
        history = self.conversations.setdefault(turn.chat, Conversation()).messages
        history.append({"role": "user", "content": turn.prompt})
        history.append({"role": "assistant", "content": result.text})

    def reset(self, name: str | None = None) -> list[str]:
        names = list(self.conversations) if name is None else [name]
        for each in names:
            self.conversations.pop(each, None)
        return names


class SingleJob:
    """One prepared request; ``stream`` runs it on the background loop, ``outcome`` says how it ended.

    Blocking callers (the magic) and non-blocking ones (the panel's Run button)
    drive the same job; cancelling ``stream`` leaves the partial reply in ``acc``.
    """

    def __init__(self, turn: Turn, client: BaseClient, body: dict[str, Any], acc: Accumulator) -> None:
        self.turn, self.client, self.body, self.acc = turn, client, body, acc
        self._result: Result | None = None
        self._error: str | None = None

    @property
    def loop(self) -> BackgroundLoop:
        return self.client.loop

    async def stream(self, view: LiveView | None = None) -> None:
        companion = asyncio.ensure_future(view.run(self.acc)) if view is not None else None
        try:
            self._result = await self.client.stream_body(self.body, self.acc)
        except errors.GraniteError as exc:
            self._result = exc.result or self.acc.result(error=exc.message, partial=True)
            self._error = exc.message
        finally:
            if companion is not None:
                companion.cancel()

    @property
    def ended(self) -> bool:
        return self._result is not None

    def outcome(self, cancelled: str = INTERRUPTED) -> tuple[Result, str | None]:
        if self._result is None:  # cancelled before it ended
            return self.acc.result(error="interrupted by the user", partial=True), cancelled
        return self._result, self._error


class CompareJob:
    """The columns of a comparison, streamed concurrently behind a semaphore."""

    def __init__(self, turn: Turn, specs: list[RunSpec], columns: list[SingleJob], concurrency: int) -> None:
        self.turn, self.specs, self.columns, self.concurrency = turn, specs, columns, concurrency
        self._started: float | None = None
        self._ended: float | None = None

    @property
    def loop(self) -> BackgroundLoop:
        return self.columns[0].loop

    @property
    def accumulators(self) -> list[Accumulator]:
        return [column.acc for column in self.columns]

    async def stream(self, grid: GridLike) -> None:
        self._started = time.perf_counter()
        gate = asyncio.Semaphore(self.concurrency)
        companion = asyncio.ensure_future(grid.run(self.accumulators))

        async def column(index: int) -> None:
            job = self.columns[index]
            async with gate:
                job.acc.restart_clock()  # time a column from when it may start, not while it queued
                await job.stream()
            grid.column_done(index, status_line(job.outcome()[0]))

        try:
            await asyncio.gather(*(column(i) for i in range(len(self.columns))))
        finally:
            companion.cancel()
            self._ended = time.perf_counter()

    def outcome(self, cancelled: str = INTERRUPTED) -> Comparison:
        finished = [column.outcome(cancelled) for column in self.columns]
        wall = None if self._started is None else (self._ended or time.perf_counter()) - self._started
        return Comparison(
            prompt=self.turn.prompt, specs=self.specs, results=[r for r, _ in finished], errors=[e for _, e in finished],
            wall_s=wall, base_params=dict(self.turn.params),
        )


_default_session: Session | None = None


def default_session() -> Session:
    """The session the Python API shares (the magic has its own, per kernel)."""
    global _default_session
    if _default_session is None:
        _default_session = Session()
    return _default_session


def compare(
    prompt: str,
    *,
    seeds: str | Sequence[int] = (),
    sweep: Mapping[str, Sequence[Any]] | None = None,
    repeat: int = 1,
    concurrency: int = 4,
    system: str | None = None,
    model: str | None = None,
    base_url: str | None = None,
    **params: Any,
) -> Comparison:
    """Run ``prompt`` once per seed and swept value (times ``repeat``), concurrently.

    ``compare("Name a colour", seeds="1-4", sweep={"temperature": [0, 0.7]}, max_tokens=20)``
    """
    from .comparison import parse_seeds, plan_runs
    from .params import validate

    seed_list = parse_seeds(seeds) if seeds else []
    checked = {name: [validate(name, v) for v in values] for name, values in (sweep or {}).items()}
    specs = plan_runs(seed_list, checked, repeat)
    turn = Turn(prompt=prompt, system=system, model=model, base_url=base_url, params=params)
    return default_session().compare(turn, specs, concurrency=concurrency)
