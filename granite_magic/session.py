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
from .client import DEFAULT_BASE_URL, DEFAULT_MODEL, GraniteClient, _Secret
from .comparison import Comparison, RunSpec
from .params import validate_params
from .protocol import Accumulator, build_messages
from .render import LiveView, status_line
from .result import Result

__all__ = ["Conversation", "GridLike", "Session", "Turn", "compare", "default_session", "interpolate"]

_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_]\w*)\}\}|\{([A-Za-z_]\w*)\}")

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

    def __post_init__(self) -> None:
        self.params = validate_params(self.params)


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
        self.clients: dict[str, GraniteClient] = {}
        self.conversations: dict[str, Conversation] = {}
        self.last: Result | Comparison | None = None
        self._key: _Secret | None = None
        self.read_timeout_s = 60.0

    def set_api_key(self, key: str) -> None:
        """Keep a key for this kernel only (never written to disk or shown)."""
        self._key = _Secret(key)
        for client in self.clients.values():
            client.set_api_key(key)

    def client(self, base_url: str | None = None) -> GraniteClient:
        url = (base_url or os.environ.get("GRANITE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        client = self.clients.get(url)
        if client is None:
            client = GraniteClient(base_url=url, read_timeout_s=self.read_timeout_s)
            if self._key is not None:
                client.set_api_key(self._key.reveal())
            self.clients[url] = client
        client.read_timeout_s = self.read_timeout_s
        return client

    @staticmethod
    def model(turn: Turn) -> str:
        return turn.model or os.environ.get("GRANITE_MODEL") or DEFAULT_MODEL

    def messages(self, turn: Turn) -> list[dict[str, Any]]:
        if turn.chat is None:
            return build_messages(turn.prompt, system=turn.system)
        conversation = self.conversations.setdefault(turn.chat, Conversation())
        if turn.system is not None:
            conversation.system = turn.system
        return build_messages(turn.prompt, system=conversation.system, history=conversation.messages)

    def prepare(self, turn: Turn) -> tuple[GraniteClient, dict[str, Any], Accumulator]:
        client = self.client(turn.base_url)
        body, acc = client.prepare(messages=self.messages(turn), model=self.model(turn), **turn.params)
        return client, body, acc

    def unsupported(self, turn: Turn, also: Sequence[str] = ()) -> list[str]:
        """Parameters set (or swept, ``also``) that the model's listing does not name as supported."""
        client = self.client(turn.base_url)
        try:
            info = client.model_info(self.model(turn))
        except (errors.GraniteError, OSError, ValueError):
            return []  # a server without /models: nothing to warn about
        if info is None or not info.supported_parameters:
            return []
        names = list(dict.fromkeys([*turn.params, *also]))
        return [name for name in names if name not in info.supported_parameters]

    def run(self, turn: Turn, view: LiveView) -> tuple[Result, str | None]:
        """Stream one turn into ``view``; returns the result and an error message (or None)."""
        client, body, acc = self.prepare(turn)

        async def stream_with_view() -> Result:
            companion = asyncio.ensure_future(view.run(acc))
            try:
                return await client.stream_body(body, acc)
            finally:
                companion.cancel()

        error: str | None = None
        try:
            result = client.loop.run(stream_with_view())
        except KeyboardInterrupt:
            result, error = acc.result(error="interrupted by the user", partial=True), INTERRUPTED
        except errors.GraniteError as exc:
            result, error = exc.result or acc.result(error=exc.message, partial=True), exc.message
        if error is None and turn.chat is not None:
            self._remember(turn, result)
        self.last = result
        return result, error

    def compare(self, turn: Turn, specs: Sequence[RunSpec], view: GridLike | None = None, *, concurrency: int = 4) -> Comparison:
        """Run one column per spec, at most ``concurrency`` at once, all streaming into ``view``.

        A failing column keeps its partial text and does not stop the others; an
        interrupt cancels them all and keeps what each had received.
        """
        if turn.chat is not None:
            raise errors.InvalidParameterError("a comparison cannot continue a conversation (--chat): each column would fork it")
        if concurrency < 1:
            raise errors.InvalidParameterError(f"concurrency={concurrency} is out of range: must be an integer >= 1")
        grid = view or QuietGrid()
        prepared = [self.prepare(replace(turn, params={**turn.params, **spec.params})) for spec in specs]
        accs = [acc for _, _, acc in prepared]
        outcomes: list[tuple[Result, str | None] | None] = [None] * len(prepared)

        async def column(index: int, gate: asyncio.Semaphore) -> None:
            client, body, acc = prepared[index]
            async with gate:
                acc.restart_clock()  # time a column from when it may start, not while it queued
                try:
                    result, error = await client.stream_body(body, acc), None
                except errors.GraniteError as exc:
                    result, error = exc.result or acc.result(error=exc.message, partial=True), exc.message
            outcomes[index] = (result, error)
            grid.column_done(index, status_line(result))

        async def all_columns() -> None:
            gate = asyncio.Semaphore(concurrency)
            companion = asyncio.ensure_future(grid.run(accs))
            try:
                await asyncio.gather(*(column(i, gate) for i in range(len(prepared))))
            finally:
                companion.cancel()

        started = time.perf_counter()
        with contextlib.suppress(KeyboardInterrupt):  # unfinished columns are filled in below, partial
            prepared[0][0].loop.run(all_columns())
        wall = time.perf_counter() - started
        finished = [o or (accs[i].result(error="interrupted by the user", partial=True), INTERRUPTED) for i, o in enumerate(outcomes)]
        comparison = Comparison(
            prompt=turn.prompt, specs=list(specs), results=[r for r, _ in finished], errors=[e for _, e in finished],
            wall_s=wall, base_params=dict(turn.params),
        )
        self.last = comparison
        return comparison

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
