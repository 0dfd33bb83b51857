"""The streaming client: one ``httpx.AsyncClient``, retries before the first token,
typed errors that keep the partial reply.

All network I/O runs on the background loop (``runner``), so the blocking
``chat()`` works inside a Jupyter cell and ``achat()`` works from any loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import __version__, errors
from .params import validate_params
from .protocol import (
    Accumulator,
    ErrorEvent,
    build_messages,
    chat_body,
    error_for_status,
    parse_retry_after,
)
from .result import Result
from .runner import BackgroundLoop, get_loop
from .shapes import shape

if TYPE_CHECKING:
    import httpx

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MODEL", "BaseClient", "GraniteClient", "ModelInfo", "RetryPolicy"]

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_MODEL = "ibm-granite/granite-4.0-h-micro"
APP_URL = "https://github.com/granite-magic/granite-magic"
APP_TITLE = "granite-magic"

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 524, 529})

logger = logging.getLogger("granite_magic")

UpdateCallback = Callable[[Accumulator], None]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries happen only before the first token, so no text is ever sent twice."""

    max_attempts: int = 4
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
        pricing = data.get("pricing") or {}
        top = data.get("top_provider") or {}
        return cls(
            id=str(data.get("id", "")),
            name=str(data.get("name") or data.get("id", "")),
            context_length=data.get("context_length") or top.get("context_length"),
            prompt_price=_price(pricing.get("prompt")),
            completion_price=_price(pricing.get("completion")),
            max_completion_tokens=top.get("max_completion_tokens"),
            supported_parameters=tuple(data.get("supported_parameters") or ()),
            raw=data,
        )

    def per_million(self, price: float | None) -> float | None:
        return None if price is None else price * 1_000_000


def _price(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


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
    """What every backend shares: the background loop, request preparation, and the
    blocking/awaitable twins.  A backend implements ``stream_body`` and ``_fetch_models``.
    """

    model: str
    base_url: str
    _loop: BackgroundLoop | None = None

    @property
    def loop(self) -> BackgroundLoop:
        if self._loop is None:
            self._loop = get_loop()
        return self._loop

    @property
    def requires_key(self) -> bool:
        return False

    @property
    def target(self) -> str:
        """Where requests go, for people: ``POST https://…/chat/completions``."""
        raise NotImplementedError

    @property
    def has_key(self) -> bool:
        return False

    def set_api_key(self, key: str | None) -> None:
        pass

    def prepare(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        system: str | None = None,
        model: str | None = None,
        **params: Any,
    ) -> tuple[dict[str, Any], Accumulator]:
        """Validate and build the request body; nothing is sent.  Raises before any I/O."""
        sampling = validate_params(params)
        if messages is None:
            if prompt is None:
                raise errors.InvalidParameterError("give a prompt or messages")
            messages = build_messages(prompt, system=system)
        body = self.body(model or self.model, messages, sampling)
        return body, Accumulator(sampling)

    def body(self, model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        """The request body in this client's format (chat completions unless a backend says otherwise)."""
        return chat_body(model, messages, params)

    def chat(self, prompt: str | None = None, *, on_update: UpdateCallback | None = None, **kwargs: Any) -> Result:
        """Send one chat turn and block until the reply is complete.

        Ctrl-C (a kernel interrupt) cancels the request at once and raises
        ``GenerationInterrupted`` whose ``result`` holds the partial reply.
        """
        body, acc = self.prepare(prompt, **kwargs)
        try:
            return self.loop.run(self.stream_body(body, acc, on_update))
        except errors.GenerationInterrupted:
            raise
        except KeyboardInterrupt:
            raise errors.GenerationInterrupted(acc.result(error="interrupted by the user", partial=True)) from None

    async def achat(self, prompt: str | None = None, *, on_update: UpdateCallback | None = None, **kwargs: Any) -> Result:
        """Awaitable twin of ``chat()``, usable from any event loop."""
        body, acc = self.prepare(prompt, **kwargs)
        return await self.loop.run_async(self.stream_body(body, acc, on_update))

    async def stream_body(self, body: Mapping[str, Any], acc: Accumulator, on_update: UpdateCallback | None = None) -> Result:
        """Run one prepared request on the background loop; raises GraniteError carrying the partial result."""
        raise NotImplementedError

    def models(self, *, refresh: bool = False) -> dict[str, ModelInfo]:
        return self.loop.run(self._fetch_models(refresh))

    async def amodels(self, *, refresh: bool = False) -> dict[str, ModelInfo]:
        return await self.loop.run_async(self._fetch_models(refresh))

    def model_info(self, model: str | None = None) -> ModelInfo | None:
        """The listing for ``model`` (default: the client's), or None if it is not listed."""
        return self.models().get(model or self.model)

    async def _fetch_models(self, refresh: bool) -> dict[str, ModelInfo]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class GraniteClient(BaseClient):
    """Chat with Granite (or any OpenAI-compatible model) over a streaming HTTP API.

    ``api_key`` defaults to ``OPENROUTER_API_KEY``, ``base_url`` to
    ``GRANITE_BASE_URL`` or OpenRouter, ``model`` to ``GRANITE_MODEL`` or Granite 4.0 Micro.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        read_timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        api: str = "chat",
        loop: BackgroundLoop | None = None,
    ) -> None:
        self.shape = shape(api)  # chat, responses or messages: how bodies are built and streams decoded
        key = api_key if api_key is not None else os.environ.get("OPENROUTER_API_KEY")
        self._key = Secret(key) if key else None
        self.base_url = (base_url or os.environ.get("GRANITE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.model = model or os.environ.get("GRANITE_MODEL") or DEFAULT_MODEL
        self.read_timeout_s = read_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry = retry or RetryPolicy()
        self._loop = loop
        self._http_client: httpx.AsyncClient | None = None
        self._models: dict[str, ModelInfo] | None = None

    def __repr__(self) -> str:
        key = "set" if self._key else "not set"
        return f"GraniteClient(base_url={self.base_url!r}, model={self.model!r}, api={self.shape.name!r}, api_key={key})"

    @property
    def api(self) -> str:
        return self.shape.name

    @property
    def endpoint(self) -> str:
        return self.base_url + self.shape.path

    @property
    def target(self) -> str:
        return f"POST {self.endpoint}"

    def body(self, model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        return self.shape.body(model, messages, params)

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def set_api_key(self, key: str | None) -> None:
        self._key = Secret(key) if key else None

    @property
    def requires_key(self) -> bool:
        """OpenRouter needs a key; local servers (Ollama, vLLM, llama.cpp) usually do not."""
        return (urlsplit(self.base_url).hostname or "").endswith("openrouter.ai")

    # --- the request -----------------------------------------------------------

    async def stream_body(self, body: Mapping[str, Any], acc: Accumulator, on_update: UpdateCallback | None = None) -> Result:
        """Run one prepared request on the current (background) loop; the core of every call."""
        try:
            await self._with_retries(body, acc, on_update)
        except errors.GraniteError as exc:
            exc.result = acc.result(error=exc.message, partial=True)
            raise
        return acc.result()

    async def _with_retries(self, body: Mapping[str, Any], acc: Accumulator, on_update: UpdateCallback | None) -> None:
        if self.requires_key and self._key is None:
            raise errors.MissingKeyError()
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._attempt(body, acc, on_update)
                return
            except _Retry as retry:
                if acc.has_output or attempt >= self.retry.max_attempts:
                    raise retry.error from None
                delay = self.retry.delay(attempt, retry.retry_after)
                logger.info("attempt %d failed (%s); retrying in %.2f s", attempt, retry.error.message, delay)
                await asyncio.sleep(delay)

    async def _attempt(self, body: Mapping[str, Any], acc: Accumulator, on_update: UpdateCallback | None) -> None:
        import httpx

        http = self._http()
        try:
            timeout = httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s)  # per request: settings may change
            async with http.stream("POST", self.endpoint, json=body, headers=self._headers(), timeout=timeout) as response:
                acc.generation_id = response.headers.get("x-generation-id") or acc.generation_id
                if response.status_code != 200:
                    await self._raise_for_status(response, str(body.get("model")))
                await self._read_stream(response, acc, on_update)
        except httpx.TimeoutException as exc:
            raise self._timeout_error(exc, acc) from None
        except (httpx.TransportError, httpx.StreamError) as exc:
            dropped = errors.ConnectionDroppedError(self._dropped_message(exc, acc))
            raise _Retry(dropped) from None

    async def _read_stream(self, response: httpx.Response, acc: Accumulator, on_update: UpdateCallback | None) -> None:
        decoder = self.shape.decoder()
        # Read to the end even after [DONE]: a fully read body returns the connection to the pool.
        async for chunk in response.aiter_bytes():
            seen = acc.chunks
            for event in decoder.feed(chunk):
                acc.feed(event)
                if isinstance(event, ErrorEvent):
                    self._raise_stream_error(event, acc)
            if on_update is not None and acc.chunks != seen:
                on_update(acc)
        for event in decoder.close():
            acc.feed(event)
            if isinstance(event, ErrorEvent):
                self._raise_stream_error(event, acc)
        if acc.finish is None and not acc.done:
            raise _Retry(errors.ConnectionDroppedError(
                "The stream ended before the reply was complete (no finish reason, no [DONE])."
                + _kept(acc) + " Run the cell again to retry."
            ))

    def _raise_stream_error(self, event: ErrorEvent, acc: Accumulator) -> None:
        status = event.code if isinstance(event.code, int) else None
        error = errors.StreamError(
            f"The provider reported an error during the reply: {_sentence(event.message)}{_kept(acc)} Run the cell again to retry.",
            status=status, code=event.code, metadata=event.metadata,
        )
        if status in RETRYABLE_STATUS or event.code == "server_error":
            raise _Retry(error)
        raise error

    async def _raise_for_status(self, response: httpx.Response, model: str) -> None:
        error = error_for_status(response.status_code, await response.aread(), model=model)
        if response.status_code in RETRYABLE_STATUS:
            raise _Retry(error, parse_retry_after(response.headers.get("retry-after")))
        raise error

    def _timeout_error(self, exc: Exception, acc: Accumulator) -> errors.GraniteError | _Retry:
        import httpx

        if isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
            return _Retry(errors.ConnectionDroppedError(f"Could not connect to {self.base_url} in time. Check the network or the base URL."))
        return errors.StallError(
            f"No data arrived for {self.read_timeout_s:g} s, so the request was stopped.{_kept(acc)} "
            "The provider may be overloaded: run the cell again, or raise the read timeout."
        )

    def _dropped_message(self, exc: Exception, acc: Accumulator) -> str:
        import httpx

        if isinstance(exc, httpx.ConnectError):
            return f"Could not connect to {self.base_url} ({type(exc).__name__}). Check the network and the base URL."
        return f"The connection dropped during the reply ({type(exc).__name__}).{_kept(acc)} Run the cell again to retry."

    # --- metadata ----------------------------------------------------------------

    async def _fetch_models(self, refresh: bool) -> dict[str, ModelInfo]:
        import httpx

        if self._models is None or refresh:
            try:
                response = await self._http().get(self.base_url + "/models", headers=self._headers())
            except httpx.HTTPError as exc:
                raise errors.ConnectionDroppedError(f"Could not read {self.base_url}/models ({type(exc).__name__}).") from None
            if response.status_code != 200:
                raise error_for_status(response.status_code, response.content, model=self.model)
            data = response.json().get("data") or []
            self._models = {info.id: info for info in map(ModelInfo.from_api, data)}
        return self._models

    # --- plumbing ------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        import httpx

        if self._http_client is None:
            timeout = httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s)
            http = httpx.AsyncClient(timeout=timeout, headers={"User-Agent": f"granite-magic/{__version__}"})
            # A client dropped without close() (common in notebooks) must still close its sockets,
            # and on the loop that owns them, not in whichever thread the garbage collector runs.
            finalizer = weakref.finalize(self, _close_soon, self.loop, http)
            finalizer.atexit = False
            self._http_client = http
        return self._http_client

    def _headers(self) -> dict[str, str]:
        headers = {"HTTP-Referer": APP_URL, "X-Title": APP_TITLE, "X-OpenRouter-Title": APP_TITLE}
        if self._key is not None:
            headers["Authorization"] = "Bearer " + self._key.reveal()
        return headers

    def close(self) -> None:
        if self._http_client is not None:
            self.loop.run(self.aclose())

    async def aclose(self) -> None:
        client, self._http_client = self._http_client, None
        if client is not None:
            await self.loop.run_async(client.aclose())


def _close_soon(loop: BackgroundLoop, http: httpx.AsyncClient) -> None:
    if not loop.loop.is_closed():
        loop.submit(http.aclose())


def _kept(acc: Accumulator) -> str:
    if not acc.has_output:
        return ""
    return f" The partial reply ({acc.chunks} chunks) is kept."


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."
