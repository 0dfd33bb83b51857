"""The streaming clients: the shared surface (``BaseClient``) and HTTP (``GraniteClient``).

One ``httpx.AsyncClient`` per client; retries only before the first token;
typed errors that keep the partial reply.  All network I/O runs on the
background loop (``_runner``), so the blocking ``chat()`` works inside a
Jupyter cell and ``achat()`` works from any loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import random
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import quote

from . import _errors as errors
from ._errors import RETRYABLE_STATUS, StreamRedactor, error_for_status, parse_retry_after, redact, redact_all
from ._events import Accumulator, ErrorEvent, Progress, TextDelta, TokenLogprobs, UsageReport
from ._params import Sampling
from ._result import Result
from ._runner import BackgroundLoop, get_loop
from ._settings import Settings, check_base_url, host_of
from ._shapes import COMPLETIONS_DEFAULT_MAX_TOKENS, Request, Shape, build_messages, shape, shape_for
from ._version import __version__
from ._vocab import MAX_STEPS, SchemaMethod

if TYPE_CHECKING:
    import ssl
    from pathlib import Path

    import httpx

    from ._toolrun import ToolLoop

__all__ = ["BaseClient", "GraniteClient", "ModelInfo", "RetryPolicy", "Secret", "UpdateCallback"]

APP_URL = "https://github.com/granite-magic/granite-magic"
APP_TITLE = "granite-magic"

# Connections kept open between requests.  httpx keeps 20: a map at concurrency 64 then opened a new connection for
# most rows (about 7,000 for 10,000 rows).  How many are open at once is the caller's concurrency, not the pool's.
KEPT_ALIVE = 128
# Streams are spread over this many connection pools, the least busy first.  httpcore's pool looks at every connection
# it holds each time it places or releases a request (two system calls for each idle one), so at concurrency 64 one
# pool cost a map more CPU than reading its replies; four pools of 16 cost a sixteenth of that.  One cell after
# another still reuses the first pool's connection.
POOLS = 4

# The /models lookup only feeds a warning: it must be quick, and a failure is remembered for a while.
MODELS_TIMEOUT_S = 3.0
MODELS_FAILURE_TTL_S = 300.0

logger = logging.getLogger("granite_magic")

UpdateCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries happen only before the first token, so no text is ever sent twice."""

    max_attempts: int = 4
    # A refusal that says when to come back (429 or 503 with Retry-After) is the server pacing a batch, not failing:
    # tried more often, so that at a 20% refusal rate a row of a long map fails in about 1 of 80,000 (0.2 ** 7).
    max_paced_attempts: int = 8
    base_delay_s: float = 0.5
    multiplier: float = 2.0
    max_delay_s: float = 8.0
    max_retry_after_s: float = 60.0  # a longer Retry-After is capped: a cell should not hang for minutes

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        backoff = min(self.base_delay_s * self.multiplier ** (attempt - 1), self.max_delay_s)
        return backoff * random.uniform(0.5, 1.0)  # jitter: concurrent columns must not retry in lockstep


@dataclass(frozen=True)
class ModelInfo:
    id: str
    name: str = ""
    context_length: int | None = None
    prompt_price: float | None = None  # USD per token
    completion_price: float | None = None
    max_completion_tokens: int | None = None
    supported_parameters: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ModelInfo:
        """One entry of a ``/models`` listing; fields of the wrong type count as unknown."""
        pricing = _mapping(data.get("pricing"))
        top = _mapping(data.get("top_provider"))
        supported = data.get("supported_parameters")
        return cls(
            id=str(data.get("id", "")),
            name=str(data.get("name") or data.get("id", "")),
            context_length=_count(data.get("context_length")) or _count(top.get("context_length")),
            prompt_price=_price(pricing.get("prompt")),
            completion_price=_price(pricing.get("completion")),
            max_completion_tokens=_count(top.get("max_completion_tokens")),
            supported_parameters=tuple(str(s) for s in supported) if isinstance(supported, list) else (),
            raw=data,
        )

    def per_million(self, price: float | None) -> float | None:
        return None if price is None else price * 1_000_000


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _amount(value: Any) -> float | None:
    """A finite number of USD from a number or a numeric string; None for anything else (NaN, infinities, text)."""
    try:
        amount = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return amount if amount is not None and math.isfinite(amount) else None


def _price(value: Any) -> float | None:
    """A price or a billed cost: a finite number >= 0, else unknown (None), so that no budget is computed from it."""
    amount = _amount(value)
    return amount if amount is not None and amount >= 0 else None


class Secret:
    """Holds the key so that no repr, str or traceback local ever shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


class _Retry(Exception):
    def __init__(self, error: errors.GraniteError, retry_after: float | None = None) -> None:
        self.error = error
        self.retry_after = retry_after


class BaseClient:
    """What every backend shares: the background loop, building a ``Request``, and the
    blocking/awaitable twins.  A backend implements ``stream``, ``describe`` and ``_fetch_models``.
    """

    model: str
    base_url: str
    _loop: BackgroundLoop | None = None

    @property
    def loop(self) -> BackgroundLoop:
        if self._loop is None:
            self._loop = get_loop()
        return self._loop

    # --- what this backend can do: the session and the front ends ask these, never which class it is ---

    #: A name for records (the ledger's column, a recording's description); nothing branches on it.
    kind: ClassVar[str] = "?"
    #: Documents go in the chat template's own slot (else they travel in the system message).
    documents_in_template: ClassVar[bool] = False
    #: The backend counts a prompt exactly and refuses one too long for its context by itself.
    counts_prompt_tokens: ClassVar[bool] = False
    #: Runs cost nothing: the model runs on this machine.
    free: ClassVar[bool] = False
    #: The reply's length when none is asked for (None: the provider's own). A request carries it, so it is shown
    #: in the title, sent, and keyed like any ``max_tokens``.
    default_max_tokens: ClassVar[int | None] = None
    #: It continues a prompt as written (``--raw``: a completions endpoint, or the local model without its template).
    completes_raw: ClassVar[bool] = False

    @property
    def framing(self) -> str:
        """How the prompt is made: ``template`` (chat turns, the model's own template or the provider's), or ``plain``
        for a base model prompted as ``Question:`` / ``Answer:`` text, which never learnt a chat or tool convention
        (prompted tools then come with a worked example of each call)."""
        return "template"

    @property
    def requires_key(self) -> bool:
        return False

    async def billed(self, model: str) -> bool:
        """Whether runs of ``model`` are billed, so that a cost the stream did not carry is worth looking up."""
        return False

    @property
    def host(self) -> str:
        """Where the replies come from, as a recording names it: a host name, never a port, a path or credentials."""
        return ""

    def label(self, model: str, *, raw: bool = False) -> str:
        """The model as a status line names it, and a raw completion (``--raw``) as one."""
        return model + (RAW_WORDS if raw else "")

    def routing(self, *, strict: bool) -> dict[str, Any]:
        """Top-level request fields that choose who answers (OpenRouter's ``provider``); none by default."""
        return {}

    def default_tool_mode(self, supported: Sequence[str] | None) -> Literal["native", "prompted"]:
        """How tools are offered under ``--tool-mode auto``: natively when the listing names ``tools``."""
        return "native" if supported is not None and "tools" in supported else "prompted"

    def schema_method(self, supported: Sequence[str] | None) -> SchemaMethod:
        """How a reply of a schema is obtained (``--schema``), given the model's listed parameters: in the prompt
        alone, checked here, unless the backend can do better."""
        return "prompted"

    def schema_methods(self) -> tuple[SchemaMethod, ...]:
        """The methods this backend can be asked for by ``--schema-mode`` (the prompt is always one)."""
        return ("prompted",)

    def model_file(self) -> tuple[str, Path | None] | None:
        """The model's weights as a file on this machine: its name, and its path when it is here; None when the
        model runs elsewhere.  The cache keys a local run on the file's fingerprint, not its name."""
        return None

    def sampler_defaults(self) -> dict[str, Any] | None:
        """What the backend samples with when a request does not set a parameter; None: the API's documented
        defaults (the parameter table's), which a self-hosted server may not follow."""
        return None

    def prompt_preview(self, request: Request) -> tuple[str, int] | None:
        """The exact prompt text and its token count, when the backend can tell (it has the tokenizer)."""
        return None

    def destination(self, request: Request) -> str:
        """Where ``request`` goes, for people: ``POST https://…/chat/completions``."""
        raise NotImplementedError

    @property
    def has_key(self) -> bool:
        return False

    def set_api_key(self, key: str | None) -> None:
        pass

    def secrets(self) -> tuple[str, ...]:
        """What must never be written anywhere (the API key), for stores that scrub what they keep."""
        return ()

    def request(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        system: str | None = None,
        model: str | None = None,
        sampling: Sampling | None = None,
        raw: bool = False,
        **params: Any,
    ) -> Request:
        """What would be sent, validated; nothing is sent.  Raises before any I/O.

        Sampling parameters come either as keyword arguments (validated here) or
        as a ready ``Sampling`` (validated where it was made).  ``raw=True`` continues ``prompt`` as written
        (a completion: no chat turns, no template), so it takes no ``messages`` or ``system``.
        """
        if sampling is None:
            sampling = Sampling(params)
        elif params:
            raise errors.InvalidParameterError(f"give sampling= or parameters ({', '.join(params)}), not both")
        if raw:
            return Request(model or self.model, (), self.with_default_length(sampling, raw=True), prompt=self._raw_prompt(prompt, messages, system))
        if messages is None:
            if prompt is None:
                raise errors.InvalidParameterError("give a prompt or messages")
            messages = build_messages(prompt, system=system)
        return Request(model or self.model, tuple(messages), self.with_default_length(sampling))

    def _raw_prompt(self, prompt: str | None, messages: Sequence[Mapping[str, Any]] | None, system: str | None) -> str:
        if not self.completes_raw:
            raise errors.InvalidParameterError(f"raw=True needs a completions endpoint, and {self.kind} has none", names=("raw",))
        if prompt is None or messages is not None or system is not None:
            raise errors.InvalidParameterError("raw=True continues one prompt as written: give prompt, without messages or system",
                                               names=("raw",))
        return prompt

    def with_default_length(self, sampling: Sampling, *, raw: bool = False) -> Sampling:
        """``sampling`` with this backend's ``default_max_tokens`` when it asks for no length, and for a raw completion
        (which the completions API would stop at 16 tokens) ``COMPLETIONS_DEFAULT_MAX_TOKENS``."""
        limit = self.default_max_tokens or (COMPLETIONS_DEFAULT_MAX_TOKENS if raw else None)
        if limit is None or "max_tokens" in sampling:
            return sampling
        return sampling | Sampling._trusted({"max_tokens": limit})

    def describe(self, request: Request) -> dict[str, Any]:
        """Exactly what this backend would send for ``request`` (shown by ``--dry-run``)."""
        raise NotImplementedError

    def chat(self, prompt: str | None = None, *, on_update: UpdateCallback | None = None, tools: Sequence[Any] = (),
             tool_mode: str = "auto", approve: Callable[[Any], bool] | None = None, max_steps: int = MAX_STEPS,
             schema: Any = None, schema_mode: str = "auto", **kwargs: Any) -> Result:
        """Send one chat turn and block until the reply is complete.

        ``tools``: functions (or ``(json_schema_tool, function)`` pairs, or ``Tool`` objects) the model may
        call; the calls run here, their results go back, until the model answers (``result.tool_calls``
        lists them).  ``schema``: a field list (``"sentiment positive|negative, reason"``), a dataclass, TypedDict,
        pydantic model or JSON Schema dict the reply must fit: ``result.value`` is the validated object (repaired once
        by sending what is wrong back), ``result.schema_method`` says how it was obtained (``schema_mode`` names one:
        ``grammar``, ``provider`` or ``prompted``).  Ctrl-C (a kernel
        interrupt) cancels the request at once and raises ``GenerationInterrupted`` whose ``result`` holds the
        partial reply.
        """
        request = self.request(prompt, **kwargs)
        if schema is not None:
            return self.loop.run(self._structured(request, schema, schema_mode, tools, on_update))
        if tools:
            return self._chat_with_tools(request, tools, tool_mode, approve, max_steps, on_update)
        acc = Accumulator(request.sampling)
        try:
            return self.loop.run(self.stream(request, acc, on_update))
        except errors.GenerationInterrupted:
            raise
        except KeyboardInterrupt:
            raise errors.GenerationInterrupted(acc.result(ended="interrupted")) from None

    async def achat(self, prompt: str | None = None, *, on_update: UpdateCallback | None = None, tools: Sequence[Any] = (),
                    tool_mode: str = "auto", approve: Callable[[Any], bool] | None = None, max_steps: int = MAX_STEPS,
                    schema: Any = None, schema_mode: str = "auto", **kwargs: Any) -> Result:
        """Awaitable twin of ``chat()``, usable from any event loop (tool functions run in the awaiting thread)."""
        request = self.request(prompt, **kwargs)
        if schema is not None:
            return await self.loop.run_async(self._structured(request, schema, schema_mode, tools, on_update))
        if not tools:
            return await self.loop.run_async(self.stream(request, Accumulator(request.sampling), on_update))
        loop = await self._tool_loop(request, tools, tool_mode, approve, max_steps)
        step: Request | None = loop.request
        while step is not None:
            result = await self.loop.run_async(self.stream(step, Accumulator(step.sampling), on_update))
            step = loop.after(result)
        return loop.final()

    async def _structured(self, request: Request, given: Any, mode: str, tools: Sequence[Any],
                          on_update: UpdateCallback | None) -> Result:
        """A reply that must fit a schema: asked by the method this backend has for it, checked, repaired once."""
        from ._spec import output_schema
        from ._structured import MOST_ATTEMPTS, finished, read_reply, repair_request, structured_request, worth_repairing

        schema = output_schema(given)  # refused before anything is sent
        if tools or request.raw:
            raise errors.InvalidParameterError("schema= asks for one JSON reply: it cannot go with tools= or raw=True",
                                               names=("schema",))
        method = await self._schema_method(request.model, mode)
        request = structured_request(request, schema, method)
        results: list[Result] = []
        while True:
            results.append(await self.stream(request, Accumulator(request.sampling), on_update))
            _, problems = read_reply(results[-1].text, schema)
            if not worth_repairing(results[-1], problems) or len(results) == MOST_ATTEMPTS:
                return finished(results[-1], schema, method, len(results), results[:-1])
            request = repair_request(request, results[-1].text, problems)

    async def _schema_method(self, model: str, mode: str) -> SchemaMethod:
        if mode == "auto":
            return self.schema_method(await self.supported_parameters(model))
        for method in self.schema_methods():
            if method == mode:
                return method
        raise errors.InvalidParameterError(f"schema_mode={mode!r} is not available here: {self.kind} offers "
                                           f"{' or '.join(self.schema_methods())}", names=("schema_mode",))

    def _chat_with_tools(self, request: Request, tools: Sequence[Any], mode: str, approve: Callable[[Any], bool] | None,
                         max_steps: int, on_update: UpdateCallback | None) -> Result:
        loop = self.loop.run(self._tool_loop(request, tools, mode, approve, max_steps))
        step: Request | None = loop.request
        while step is not None:
            acc = Accumulator(step.sampling)
            try:
                result = self.loop.run(self.stream(step, acc, on_update))
            except KeyboardInterrupt:
                raise errors.GenerationInterrupted(acc.result(ended="interrupted")) from None
            step = loop.after(result)
        return loop.final()

    async def _tool_loop(self, request: Request, tools: Sequence[Any], mode: str, approve: Callable[[Any], bool] | None,
                         max_steps: int) -> ToolLoop:
        from ._toolrun import ToolLoop, plan_tools
        from ._tools import as_tools

        if request.raw:
            raise errors.InvalidParameterError("raw=True continues the prompt as written, with no chat turn, so tools cannot go "
                                               "with it: leave out tools= or raw=True", names=("raw", "tools"))
        return ToolLoop(await plan_tools(self, request.model, as_tools(tools), mode, approve=approve, max_steps=max_steps), request)

    async def stream(self, request: Request, acc: Accumulator, on_update: UpdateCallback | None = None) -> Result:
        """Run one request on the background loop; raises GraniteError carrying the partial result."""
        raise NotImplementedError

    def models(self, *, refresh: bool = False) -> dict[str, ModelInfo]:
        return self.loop.run(self._fetch_models(refresh))

    async def amodels(self, *, refresh: bool = False) -> dict[str, ModelInfo]:
        return await self.loop.run_async(self._fetch_models(refresh))

    def model_info(self, model: str | None = None) -> ModelInfo | None:
        """The listing for ``model`` (default: the client's), or None if it is not listed."""
        return self.models().get(model or self.model)

    def listed(self, model: str) -> ModelInfo | None:
        """The model's listing if it has been read already; never a request (for code on the loop that cannot wait)."""
        return None

    async def listing(self, model: str) -> ModelInfo | None:
        """The model's listing, or None when it is not known.  Never raises, never waits long:
        the listing only feeds warnings and estimates, so no failure of it may reach the user."""
        try:
            models = await asyncio.wait_for(self._fetch_models(False), MODELS_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.info("model listing unavailable", exc_info=True)
            self._listing_failed()
            return None
        return models.get(model)

    async def supported_parameters(self, model: str) -> tuple[str, ...] | None:
        """What the model's listing names as supported; None when unknown."""
        info = await self.listing(model)
        return info.supported_parameters if info is not None and info.supported_parameters else None

    async def _fetch_models(self, refresh: bool) -> dict[str, ModelInfo]:
        raise NotImplementedError

    async def generation_cost(self, generation_id: str) -> float | None:
        """The billed cost of a finished generation, when the backend can tell; never raises."""
        return None

    async def credits(self) -> dict[str, float | None]:
        """Remaining credit and limit of the key; only an HTTP API that has keys can tell."""
        raise errors.InvalidParameterError("credits are a property of an OpenRouter key: this backend has none")

    def _listing_failed(self) -> None:
        """Remember that the listing failed (or took too long), so later cells do not wait for it again."""

    def close(self) -> None:
        pass


class GraniteClient(BaseClient):
    """Chat with Granite (or any OpenAI-compatible model) over a streaming HTTP API.

    ``api_key`` defaults to ``OPENROUTER_API_KEY``, ``base_url`` to
    ``GRANITE_BASE_URL`` or OpenRouter, ``model`` to ``GRANITE_MODEL`` or Granite 4.0 Micro.
    ``read_timeout_s`` ends a stream with no new event for that long; ``timeout_s``
    (off by default) bounds a whole reply.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        read_timeout_s: float = Settings.read_timeout_s,
        connect_timeout_s: float = Settings.connect_timeout_s,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
        api: str = "chat",
        loop: BackgroundLoop | None = None,
    ) -> None:
        settings = Settings.from_env(base_url=base_url, model=model, api=api, read_timeout_s=read_timeout_s,
                                     connect_timeout_s=connect_timeout_s, timeout_s=timeout_s, only=("base_url", "model"))
        self.shape = shape(settings.api)  # chat, responses or messages: how bodies are built and streams decoded
        key = api_key if api_key is not None else os.environ.get("OPENROUTER_API_KEY")
        self._key = Secret(key) if key else None
        self.base_url = check_base_url(settings.base_url)
        self.model = settings.model
        self.read_timeout_s = settings.read_timeout_s
        self.connect_timeout_s = settings.connect_timeout_s
        self.timeout_s = settings.timeout_s
        self.retry = retry or RetryPolicy()
        self._loop = loop
        self._pools: list[httpx.AsyncClient] = []  # the first also sends every small request (listing, probes)
        self._busy = [0] * POOLS  # streams in flight in each pool
        self._models: dict[str, ModelInfo] | None = None
        self._models_failed_at: float | None = None
        self._models_reading: asyncio.Future[dict[str, ModelInfo]] | None = None  # one listing request at a time
        self._streams = _Streams()

    def __repr__(self) -> str:
        key = "set" if self._key else "not set"
        return f"GraniteClient(base_url={self.base_url!r}, model={self.model!r}, api={self.shape.name!r}, api_key={key})"

    kind: ClassVar[str] = "http"
    completes_raw: ClassVar[bool] = True  # POST /completions: OpenRouter, vLLM, llama.cpp's and Ollama's servers

    async def billed(self, model: str) -> bool:
        """Whether the model's listing has a price (OpenRouter's when the listing is unavailable): self-hosted servers
        list none and have no ``/generation`` to ask, so they are never asked after a run."""
        info = await self.listing(model)
        if info is None or info.prompt_price is None or info.completion_price is None:
            return self._is_openrouter
        return info.prompt_price > 0 or info.completion_price > 0

    @property
    def host(self) -> str:
        return host_of(self.base_url)

    def listed(self, model: str) -> ModelInfo | None:
        return (self._models or {}).get(model)

    def routing(self, *, strict: bool) -> dict[str, Any]:
        """``--strict``: only providers that honour every parameter sent (OpenRouter's ``require_parameters``)."""
        return {"provider": {"require_parameters": True}} if strict else {}

    def schema_method(self, supported: Sequence[str] | None) -> SchemaMethod:
        """By the provider when the model's listing says it honours ``response_format`` (or ``structured_outputs``)
        and the API has a field for it (Anthropic's Messages API has none); else in the prompt.  OpenRouter's listing
        of Granite 4.0 Micro names neither: a schema sent there would be dropped without a word."""
        honours = supported is not None and bool({"response_format", "structured_outputs"} & set(supported))
        return "provider" if honours and self.api in ("chat", "responses") else "prompted"

    def schema_methods(self) -> tuple[SchemaMethod, ...]:
        return ("provider", "prompted") if self.api in ("chat", "responses") else ("prompted",)

    @property
    def api(self) -> str:
        return self.shape.name

    def destination(self, request: Request) -> str:
        return f"POST {self.base_url}{shape_for(self.shape, request).path}"

    def describe(self, request: Request) -> dict[str, Any]:
        return shape_for(self.shape, request).body(request)

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def set_api_key(self, key: str | None) -> None:
        self._key = Secret(key) if key else None

    def secrets(self) -> tuple[str, ...]:
        return (self._key.reveal(),) if self._key else ()

    @property
    def requires_key(self) -> bool:
        """OpenRouter needs a key; local servers (Ollama, vLLM, llama.cpp) usually do not."""
        return self._is_openrouter

    @property
    def _is_openrouter(self) -> bool:
        return self.host.endswith("openrouter.ai")

    def _redact(self, text: str) -> str:
        return redact(text, [self._key.reveal()] if self._key else [])

    # --- the request -----------------------------------------------------------

    async def stream(self, request: Request, acc: Accumulator, on_update: UpdateCallback | None = None) -> Result:
        """Run one request on the current (background) loop; the core of every call."""
        form = shape_for(self.shape, request)  # the client's API, or completions for a raw prompt
        body = form.body(request)
        asked_again = False
        try:
            while True:
                async with self._streams.slot() as slot:
                    try:
                        watch = _Watch(self.read_timeout_s, self.timeout_s)
                        await watch.run(self._with_retries(form, body, acc, on_update, watch, slot))
                        break
                    except errors.StreamClosedError:
                        if asked_again or not slot.overlapped:
                            raise
                self._streams.one_at_a_time = True
                asked_again = True
                acc.start_over(ONE_AT_A_TIME_NOTE)  # sent again once the others have finished, from the beginning
                if on_update is not None:
                    on_update(acc)
        except errors.GraniteError as exc:
            exc.result = acc.result(error=exc.message)
            exc.model = exc.model or request.model
            exc.__context__ = None  # the httpx error it replaced holds the request, Authorization header and all
            raise
        return acc.result()

    async def _with_retries(self, form: Shape, body: Mapping[str, Any], acc: Accumulator, on_update: UpdateCallback | None, watch: _Watch,
                            slot: _Slot) -> None:
        if self.requires_key and self._key is None:
            raise errors.MissingKeyError()
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._attempt(form, body, acc, on_update, watch)
                return
            except _Retry as retry:
                # A reply cut short while another request was in flight is sent again one at a time, by ``stream``.
                cut_by_another = isinstance(retry.error, errors.StreamClosedError) and slot.overlapped
                attempts = self.retry.max_attempts if retry.retry_after is None else self.retry.max_paced_attempts
                if acc.has_output or attempt >= attempts or cut_by_another:
                    raise retry.error from None
                delay = self.retry.delay(attempt, retry.retry_after)
                acc.note = _retry_note(retry, delay, attempt, attempts)
                if acc.on_throttled is not None and getattr(retry.error, "status", None) in (429, 503):
                    acc.on_throttled(delay)
                if on_update is not None:
                    on_update(acc)
                logger.info("attempt %d failed (%s); retrying in %.2f s", attempt, retry.error.message, delay)
                watch.pause()
                await asyncio.sleep(delay)

    async def _attempt(self, form: Shape, body: Mapping[str, Any], acc: Accumulator, on_update: UpdateCallback | None, watch: _Watch) -> None:
        import httpx

        try:
            timeout = httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s)  # per request: settings may change
            acc.sent = True
            with self._least_busy() as http:
                async with http.stream("POST", self.base_url + form.path, json=body, headers=self._headers(), timeout=timeout) as response:
                    acc.generation_id = response.headers.get("x-generation-id") or acc.generation_id
                    if response.status_code != 200:
                        await self._raise_for_status(response, str(body.get("model")), _sent_parameters(body))
                    _check_content_type(response.headers.get("content-type", ""))
                    watch.saw_event()
                    await self._read_stream(form, response, acc, on_update, watch)
        except httpx.TimeoutException as exc:
            raise self._timeout_error(exc) from None
        except httpx.DecodingError as exc:
            raise errors.ProtocolError(f"The response body could not be decoded ({self._redact(str(exc))[:120]}).") from None
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise _Retry(errors.ConnectionDroppedError(self._dropped_message(exc))) from None

    async def _read_stream(self, form: Shape, response: httpx.Response, acc: Accumulator, on_update: UpdateCallback | None, watch: _Watch) -> None:
        decoder = form.decoder()
        redactor = StreamRedactor(self.secrets())  # a server that streams the key back as text shows no key
        try:
            # Read to the end even after [DONE]: a fully read body returns the connection to the pool.
            async for chunk in response.aiter_bytes():
                events = decoder.feed(chunk)
                if events:
                    watch.saw_event()
                    seen = acc.chunks
                    self._feed(_trusted(events, redactor), acc)
                    if on_update is not None and acc.chunks != seen:
                        on_update(acc)
            self._feed(_trusted(decoder.close(), redactor), acc)
        finally:  # however the reply ends, the text held back to see whether it was the key is kept, or redacted
            held = redactor.flush()
            if held:
                acc.feed(TextDelta(held))
        for error in decoder.recovered:  # the reply finished after it: kept whole, and the error said once
            logger.warning("The provider reported an error but the reply finished, and it is kept: %s",
                           self._redact(error.message.strip()))
        if acc.finish is None:  # [DONE] alone is not a finish: llama-cpp-python's server sends it when it cuts a reply
            raise _Retry(errors.StreamClosedError(
                "The server closed the stream before the reply finished (no finish reason); the text so far is kept."))

    def _feed(self, events: Sequence[Any], acc: Accumulator) -> None:
        for event in events:
            acc.feed(event)
            if isinstance(event, ErrorEvent):
                self._raise_stream_error(event, acc)

    def _raise_stream_error(self, event: ErrorEvent, acc: Accumulator) -> None:
        status = event.code if isinstance(event.code, int) else None
        message = self._redact(event.message.strip())
        error = errors.StreamError(
            f"The provider reported an error{' during the reply' if acc.has_output else ''}: {message}",
            status=status, code=event.code, metadata=event.metadata,
        )
        if event.transient:
            raise _Retry(error)
        raise error

    async def _raise_for_status(self, response: httpx.Response, model: str, sent: Sequence[str] = ()) -> None:
        body = await response.aread()
        error = error_for_status(response.status_code, body, model=model, secrets=[self._key.reveal()] if self._key else [])
        if response.status_code == 404 and "requested parameters" in error.message:
            error = errors.ModelNotFoundError(
                f"No provider of {model!r} honours every parameter sent ({', '.join(sent) or 'none'}), and strict=True asked "
                "for that (HTTP 404).", status=404, code=error.code, model=model)
            error.names = ("strict",)
        if response.status_code in RETRYABLE_STATUS:
            raise _Retry(error, parse_retry_after(response.headers.get("retry-after")))
        raise error

    def _timeout_error(self, exc: Exception) -> errors.GraniteError | _Retry:
        import httpx

        if isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
            return _Retry(errors.ConnectionDroppedError(f"Could not connect to {self.base_url} within {self.connect_timeout_s:g} s."))
        return errors.StallError(f"No data arrived for {self.read_timeout_s:g} s, so the request was stopped.")

    def _dropped_message(self, exc: Exception) -> str:
        import httpx

        if isinstance(exc, httpx.ConnectError):
            return f"Could not connect to {self.base_url} ({type(exc).__name__})."
        return f"The connection dropped during the reply ({type(exc).__name__})."

    # --- metadata ----------------------------------------------------------------

    async def _fetch_models(self, refresh: bool) -> dict[str, ModelInfo]:
        if self._models is not None and not refresh:
            return self._models
        failed = self._models_failed_at
        if not refresh and failed is not None and time.monotonic() - failed < MODELS_FAILURE_TTL_S:
            raise errors.ConnectionDroppedError(f"The model listing at {self.base_url}/models failed recently; not asked again yet.")
        if self._models_reading is None or self._models_reading.done():
            self._models_reading = asyncio.ensure_future(self._read_models())
            # a read whose waiters all stopped waiting still fails quietly: its failure is remembered, not logged
            self._models_reading.add_done_callback(_retrieved)
        try:  # shielded: a caller that stops waiting does not cancel the read that others wait for
            self._models = await asyncio.shield(self._models_reading)
        except errors.GraniteError as exc:
            self._models_failed_at = time.monotonic()
            exc.__context__ = None  # the httpx error it replaced holds the request, Authorization header and all
            raise
        return self._models

    def _listing_failed(self) -> None:
        self._models_failed_at = time.monotonic()

    async def generation_cost(self, generation_id: str) -> float | None:
        """OpenRouter's ``GET /generation?id=``: the billed cost when the stream carried none."""
        data = await self._get_json("/generation", {"id": generation_id})
        record = data.get("data") if isinstance(data, dict) else None
        return _price(record.get("total_cost")) if isinstance(record, dict) else None

    async def credits(self) -> dict[str, float | None]:
        """Remaining credit and limit of the key (OpenRouter's ``GET /key``); raises GraniteError."""
        data = await self._get_json("/key", {}, quiet=False)
        record = data.get("data") if isinstance(data, dict) else None
        if not isinstance(record, dict):
            raise errors.ProtocolError(f"The key information at {self.base_url}/key has no data.")
        return {name: _amount(record.get(name)) for name in ("limit", "limit_remaining", "usage")}

    # --- batches (OpenRouter's Batch API) --------------------------------------------------

    async def create_batch(self, body: Mapping[str, Any]) -> Any:
        """``POST /batches``: the batch object (status ``validating``); raises GraniteError.  Sent once, never
        retried here: a create that timed out may have been made, and a second would pay for the rows twice."""
        return await self._batch_call("POST", "/batches", body=body)

    async def get_batch(self, batch_id: str) -> Any:
        """``GET /batches/{id}``: its status and request counts (an ended batch's inline ``results`` are left out:
        they are read page by page from ``/results``, and a poll should not hold 5,000 answers)."""
        return await self._batch_call("GET", f"/batches/{quote(batch_id, safe='')}", without=("results",))

    async def batch_results(self, batch_id: str, cursor: str | None = None) -> Any:
        """``GET /batches/{id}/results``: one page of an ended batch's answers."""
        params = {"cursor": cursor} if cursor else {}
        return await self._batch_call("GET", f"/batches/{quote(batch_id, safe='')}/results", params=params)

    async def _batch_call(self, method: str, path: str, *, body: Mapping[str, Any] | None = None,
                          params: Mapping[str, str] | None = None, without: Sequence[str] = ()) -> Any:
        import httpx

        try:
            async with self._streams.slot():
                # the body as written: its keys' order is part of the protocol (endpoint and model before requests)
                content = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
                headers = {**self._headers(), **({"Content-Type": "application/json"} if content is not None else {})}
                response = await self._http().request(method, self.base_url + path, params=dict(params or {}),
                                                      content=content, headers=headers)
            if response.status_code not in (200, 201, 202):
                raise error_for_status(response.status_code, response.content, model=self.model,
                                       secrets=[self._key.reveal()] if self._key else [])
            # whatever the server says may echo the key (a reply's text, an error, garbage): it is never kept
            data = json.loads(response.content, object_hook=_without_rows) if "results" in without else response.json()
            if isinstance(data, dict):
                data = {name: value for name, value in data.items() if name not in without}
            data = redact_all(data, [self._key.reveal()] if self._key else [])
        except httpx.HTTPError as exc:
            failure: errors.GraniteError = errors.ConnectionDroppedError(
                f"Could not reach {self.base_url}{path} ({type(exc).__name__}).")
        except ValueError:
            failure = errors.ProtocolError(f"The answer of {self.base_url}{path} is not JSON.")
        else:
            return data
        # Raised outside the handler, so without a context: the httpx error holds the request and its Authorization.
        raise failure

    async def _get_json(self, path: str, params: Mapping[str, str], *, quiet: bool = True) -> Any:
        """A small GET on the API; None (quiet) or a GraniteError for any failure."""
        import httpx

        try:
            async with self._streams.slot():
                response = await asyncio.wait_for(
                    self._http().get(self.base_url + path, params=dict(params), headers=self._headers()), MODELS_TIMEOUT_S)
            if response.status_code != 200:
                raise error_for_status(response.status_code, response.content, model=self.model,
                                       secrets=[self._key.reveal()] if self._key else [])
            return response.json()
        except (errors.GraniteError, httpx.HTTPError, ValueError, asyncio.TimeoutError) as exc:
            if quiet:
                return None
            failure = exc if isinstance(exc, errors.GraniteError) else errors.ConnectionDroppedError(
                f"Could not read {self.base_url}{path} ({type(exc).__name__}).")
        # Raised outside the handler, so without a context: the httpx error holds the request and its Authorization.
        raise failure

    async def _read_models(self) -> dict[str, ModelInfo]:
        import httpx

        try:
            async with self._streams.slot():
                response = await self._http().get(self.base_url + "/models", headers=self._headers())
            if response.status_code != 200:
                raise error_for_status(response.status_code, response.content, model=self.model,
                                       secrets=[self._key.reveal()] if self._key else [])
            listing = response.json()
        except httpx.DecodingError:
            raise errors.ProtocolError(f"The model listing at {self.base_url}/models could not be decoded.") from None
        except httpx.HTTPError as exc:
            raise errors.ConnectionDroppedError(f"Could not read {self.base_url}/models ({type(exc).__name__}).") from None
        except ValueError:
            raise errors.ProtocolError(f"The model listing at {self.base_url}/models is not JSON.") from None
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            raise errors.ProtocolError(f"The model listing at {self.base_url}/models has no list of models.")
        return {info.id: info for info in (ModelInfo.from_api(entry) for entry in data if isinstance(entry, dict))}

    # --- plumbing ------------------------------------------------------------------

    def _http(self, pool: int = 0) -> httpx.AsyncClient:
        import httpx

        while len(self._pools) <= pool:
            timeout = httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s)
            http = httpx.AsyncClient(timeout=timeout, headers={"User-Agent": f"granite-magic/{__version__}"}, verify=tls_context(),
                                     limits=httpx.Limits(max_connections=None, max_keepalive_connections=KEPT_ALIVE // POOLS))
            # A client dropped without close() (common in notebooks) must still close its sockets,
            # and on the loop that owns them, not in whichever thread the garbage collector runs.
            finalizer = weakref.finalize(self, _close_soon, self.loop, http)
            finalizer.atexit = False
            self._pools.append(http)
        return self._pools[pool]

    @contextlib.contextmanager
    def _least_busy(self) -> Iterator[httpx.AsyncClient]:
        pool = min(range(POOLS), key=self._busy.__getitem__)  # ties: the first, whose connection is kept
        self._busy[pool] += 1
        try:
            yield self._http(pool)
        finally:
            self._busy[pool] -= 1

    def _headers(self) -> dict[str, str]:
        headers = {"HTTP-Referer": APP_URL, "X-Title": APP_TITLE, "X-OpenRouter-Title": APP_TITLE}
        if self._key is not None:
            headers["Authorization"] = "Bearer " + self._key.reveal()
        return headers

    def close(self) -> None:
        if self._pools:
            self.loop.run(self.aclose())

    async def aclose(self) -> None:
        pools, self._pools = self._pools, []
        for client in pools:
            await self.loop.run_async(client.aclose())


RAW_WORDS = " · raw completion"  # what a status line adds for --raw
ONE_AT_A_TIME_NOTE = ("the server cut this reply short when another request arrived (llama-cpp-python's server does): "
                      "asking again, one request at a time")


class _Slot:
    """One request in flight on a client: whether another was in flight at any moment of its life."""

    def __init__(self, streams: _Streams) -> None:
        self._streams = streams
        self._others_at_start = streams.active
        self._started_at = streams.started

    @property
    def overlapped(self) -> bool:
        return self._others_at_start > 0 or self._streams.started > self._started_at + 1


class _Streams:
    """The requests a client has in flight to its server.

    Some servers cut a streaming reply short whenever another request arrives (llama-cpp-python's server, by its
    ``interrupt_requests`` setting, on by default): it ends the stream with ``[DONE]`` and no finish reason.  When
    that is seen while another request was in flight, the client sends one request at a time from then on, and the
    cut reply is asked again.  Every request of the client (streams, listings, lookups) takes a slot.
    """

    def __init__(self) -> None:
        self.active = 0
        self.started = 0
        self.one_at_a_time = False
        self._changed: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[_Slot]:
        if self._changed is None:
            self._changed = asyncio.Condition()
        changed = self._changed
        async with changed:
            await changed.wait_for(lambda: not self.one_at_a_time or self.active == 0)
            slot = _Slot(self)
            self.active += 1
            self.started += 1
        try:
            yield slot
        finally:
            self.active -= 1
            async with changed:
                changed.notify_all()


class _Watch:
    """Stall and deadline for one reply, checked beside the reading task.

    A stall is "no new event for ``read_timeout_s``", not "no new byte": a server
    that trickles keep-alive bytes forever is still stalled.  The check costs
    nothing per token: the reader only records a time, and this task wakes once
    per ``read_timeout_s``.
    """

    def __init__(self, read_timeout_s: float, timeout_s: float | None) -> None:
        self.read_timeout_s = read_timeout_s
        now = time.monotonic()
        self.deadline = None if timeout_s is None else now + timeout_s
        self.timeout_s = timeout_s
        self.last_event: float | None = None  # None: not streaming (connecting, or waiting to retry)

    def saw_event(self) -> None:
        self.last_event = time.monotonic()

    def pause(self) -> None:
        self.last_event = None

    async def run(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self._next_check())
                if done:
                    task.result()  # raises what the work raised
                    return
                self._check()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _next_check(self) -> float:
        now = time.monotonic()
        checks = [self.read_timeout_s if self.last_event is None else self.last_event + self.read_timeout_s - now]
        if self.deadline is not None:
            checks.append(self.deadline - now)
        return max(0.0, min(checks))

    def _check(self) -> None:
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            raise errors.DeadlineError(f"The reply took longer than the time limit of {self.timeout_s:g} s, so it was stopped.")
        if self.last_event is not None and now - self.last_event >= self.read_timeout_s:
            raise errors.StallError(f"No new data arrived for {self.read_timeout_s:g} s, so the request was stopped.")


def _trusted(events: Sequence[Any], redactor: StreamRedactor) -> list[Any]:
    """``events`` as a reply may keep them from a server it cannot trust: text through ``redactor`` (a delta held back
    whole stays, empty: it arrived), token probabilities dropped once the key has been in the text (their texts would
    spell it: the reply's text shows unshaded instead), and a billed cost that is not a finite number >= 0 unknown."""
    trusted: list[Any] = []
    for event in events:
        if isinstance(event, TextDelta):
            event = TextDelta(redactor.text(event.text))
        elif isinstance(event, TokenLogprobs) and redactor.touched:
            continue
        elif isinstance(event, UsageReport) and event.usage.cost is not None:
            event = UsageReport(replace(event.usage, cost=_price(event.usage.cost)))
        trusted.append(event)
    return trusted


def _sent_parameters(body: Mapping[str, Any]) -> list[str]:
    """The sampling parameters in a body, by the table's names (for a --strict refusal)."""
    from ._params import PARAMETERS

    names = {p.wire_name(target) or p.name: p.name for p in PARAMETERS for target in ("chat", "responses", "messages")}
    return sorted({names[key] for key in body if key in names})


def _check_content_type(content_type: str) -> None:
    """An event stream, or no type at all; anything else (a web page, a JSON document) is not a reply."""
    kind = content_type.split(";")[0].strip().lower()
    if kind and kind != "text/event-stream":
        raise errors.ProtocolError(
            f"The server answered with {kind} instead of an event stream (text/event-stream): "
            "the base URL may point to a web page rather than an OpenAI-compatible API."
        )


def _without_rows(document: dict[str, Any]) -> dict[str, Any] | None:
    """A batch's result row dropped as soon as it is decoded (``json.loads``' ``object_hook`` is called for every
    object, innermost first): an ended batch's object may carry its 5,000 answers, which a poll does not need."""
    return None if "custom_id" in document else document


def _retry_note(retry: _Retry, delay: float, attempt: int, attempts: int) -> str:
    reason = "rate limited" if isinstance(retry.error, errors.RateLimitError) else "failed"
    return f"{reason}, retrying in {delay:.0f} s (attempt {attempt + 1} of {attempts})"


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default certificate checks (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), made once for every client:
    reading the CA bundle takes tens of milliseconds, which the extension's warm-up pays instead of a first cell."""
    import httpx

    return httpx.create_ssl_context()


def _close_soon(loop: BackgroundLoop, http: httpx.AsyncClient) -> None:
    if not loop.loop.is_closed():
        loop.submit(http.aclose())


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a finished future's exception as seen (asyncio would log it as never retrieved)."""
    if not future.cancelled():
        future.exception()
