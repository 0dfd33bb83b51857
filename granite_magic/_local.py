"""The embedded local backend: Granite (or any GGUF model) run by llama.cpp in this process.

Why in-process rather than llama.cpp's own OpenAI-compatible server: there is
no second process to start, find a port for, supervise and shut down with the
kernel, and Stop can end generation between two tokens instead of waiting for
a socket close to be noticed.  The client receives the messages and the
validated ``Sampling`` (its llama.cpp names come from the parameter table), never
an HTTP body.  llama-cpp-python's streaming chunks already have the
chat-completions shape, so they go through the same ``chunk_events`` decoder as
the HTTP stream and fill the same ``Accumulator`` and ``Result``.

Generation runs on a dedicated executor (its threads release the GIL inside
llama.cpp), so the kernel and the background loop stay responsive.  A model
instance serves one request at a time; comparison columns queue for the
``instances`` loaded copies.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import _errors as errors
from . import _params
from ._client import BaseClient, ModelInfo, UpdateCallback
from ._events import Accumulator, ChunkMeta, Done, Event, UsageReport
from ._result import Result, Usage
from ._runner import BackgroundLoop
from ._shapes import Request, chunk_events

__all__ = ["DEFAULT_LOCAL_FILE", "DEFAULT_LOCAL_MODEL", "LocalClient", "LocalModelError", "local_available", "local_parameters", "resolve_model"]

DEFAULT_LOCAL_MODEL = "ibm-granite/granite-4.0-h-micro-GGUF"
DEFAULT_LOCAL_FILE = "granite-4.0-h-micro-Q4_K_M.gguf"
DEFAULT_LOCAL_SIZE = "1.9 GB"

INSTALL_HINT = "pip install 'granite-magic[local]'"


class LocalModelError(errors.GraniteError):
    """The local model could not be found, downloaded or loaded."""

    kind = "local_model"


def local_parameters() -> tuple[str, ...]:
    """What llama.cpp can be given: every parameter of the table that has a llama.cpp name."""
    return tuple(p.name for p in _params.PARAMETERS if p.wire_name("llama_cpp") is not None)


def local_available() -> bool:
    """Whether the ``local`` extra (llama-cpp-python) is installed."""
    return importlib.util.find_spec("llama_cpp") is not None


# --- finding the model --------------------------------------------------------------


def resolve_model(reference: str | None = None) -> Path:
    """A GGUF path from ``reference``, ``GRANITE_LOCAL_MODEL`` or IBM's Granite 4.0 Micro GGUF.

    A reference is a path to a ``.gguf`` file, or a Hugging Face ``owner/repo`` (with
    ``:file.gguf`` unless it is IBM's default repository), downloaded once into the cache.
    """
    ref = reference or os.environ.get("GRANITE_LOCAL_MODEL") or DEFAULT_LOCAL_MODEL
    path = Path(ref).expanduser()
    if ref.endswith(".gguf") or path.exists():
        if not path.is_file():
            raise LocalModelError(f"GRANITE_LOCAL_MODEL names {ref!r}, which is not a file. Give a path to a .gguf file.")
        return path
    repo, _, filename = ref.partition(":")
    if not filename:
        if repo != DEFAULT_LOCAL_MODEL:
            raise LocalModelError(f"Name the file in {repo!r}: GRANITE_LOCAL_MODEL={repo}:model-Q4_K_M.gguf")
        filename = DEFAULT_LOCAL_FILE
    return download(repo, filename)


def download(repo: str, filename: str) -> Path:
    """Fetch ``filename`` from the Hugging Face hub once; later calls find it in the cache."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        raise LocalModelError(f"Downloading a model needs huggingface-hub: {INSTALL_HINT}") from None
    cached = try_to_load_from_cache(repo, filename)
    if isinstance(cached, str):
        return Path(cached)
    size = f" (about {DEFAULT_LOCAL_SIZE})" if filename == DEFAULT_LOCAL_FILE else ""
    print(f"granite: downloading {repo}/{filename}{size} into the Hugging Face cache; this happens once.",
          file=sys.stderr, flush=True)
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename))  # shows its own progress bar
    except Exception as exc:  # the hub raises many kinds; all mean "not downloaded"
        raise LocalModelError(
            f"Could not download {repo}/{filename} ({type(exc).__name__}: {exc}). "
            "Check the network, or set GRANITE_LOCAL_MODEL to a .gguf file you already have."
        ) from None


def _chat_format(llm: Any) -> str | None:
    """The chat format for a model, when its GGUF carries no template llama.cpp can use.

    Granite's GGUF carries its own Jinja template (None: use it).  The Gemma 3
    stand-in used in tests carries none that llama-cpp-python recognises and then
    answers with nothing, so Gemma models get the built-in ``gemma`` format.
    """
    explicit = os.environ.get("GRANITE_LOCAL_CHAT_FORMAT")
    if explicit:
        return explicit
    metadata = getattr(llm, "metadata", {}) or {}
    if "tokenizer.chat_template" in metadata:
        return None
    return "gemma" if str(metadata.get("general.architecture", "")).startswith("gemma") else None


# --- the client ------------------------------------------------------------------------


class _Pool:
    """Up to ``size`` loaded model instances, each used by one generation at a time."""

    def __init__(self, path: Path, size: int, n_ctx: int) -> None:
        self.path, self.size, self.n_ctx = path, size, n_ctx
        self._idle: queue.Queue[Any] = queue.Queue()
        self._loaded = 0
        self._lock = threading.Lock()

    @contextmanager
    def instance(self) -> Iterator[Any]:
        llm = self._take()
        try:
            yield llm
        finally:
            self._idle.put(llm)

    def _take(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._loaded < self.size:
                self._loaded += 1
                return self._load()
        return self._idle.get()

    def _load(self) -> Any:
        from llama_cpp import Llama

        _quiet_llama_logs()
        try:
            llm = Llama(model_path=str(self.path), n_ctx=self.n_ctx, verbose=False)
        except Exception as exc:  # llama.cpp reports a bad file as ValueError or RuntimeError
            with self._lock:
                self._loaded -= 1
            raise LocalModelError(f"Could not load {self.path.name} with llama.cpp ({exc}).") from None
        chat_format = _chat_format(llm)
        if chat_format:
            llm.chat_format = chat_format
        return llm


_END = object()
_log_callback: Any = None


def _quiet_llama_logs() -> None:
    """Send llama.cpp's own log lines to the ``granite_magic.llama_cpp`` logger.

    llama-cpp-python's callback maps llama.cpp's log levels with an outdated enum, so
    warnings print to stderr even with ``verbose=False`` and land in notebook outputs.
    """
    global _log_callback
    if _log_callback is not None:
        return
    import ctypes
    import logging

    import llama_cpp

    log = logging.getLogger("granite_magic.llama_cpp")

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        log.debug(text.decode("utf-8", errors="replace").rstrip())

    _log_callback = forward  # keep a reference: llama.cpp holds only the C pointer
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))


class LocalClient(BaseClient):
    """Chat completions from a GGUF model in this process, with the HTTP client's events and results."""

    base_url = "local"

    def __init__(self, model: str | None = None, *, instances: int = 1, n_ctx: int = 4096, loop: BackgroundLoop | None = None) -> None:
        if instances < 1:
            raise errors.InvalidParameterError(f"instances={instances} is out of range: must be an integer >= 1")
        self.reference = model
        self.instances = instances
        self.n_ctx = n_ctx
        self._loop = loop
        self._pool: _Pool | None = None
        self._pool_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix="granite-local")

    @property
    def model(self) -> str:  # type: ignore[override]
        """A readable name: the GGUF file's name."""
        ref = self.reference or os.environ.get("GRANITE_LOCAL_MODEL") or DEFAULT_LOCAL_FILE
        return Path(ref.partition(":")[2] or ref).name

    @property
    def target(self) -> str:
        return f"local llama.cpp: {self.model}"

    def __repr__(self) -> str:
        return f"LocalClient(model={self.model!r}, instances={self.instances})"

    def _get_pool(self) -> _Pool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = _Pool(resolve_model(self.reference), self.instances, self.n_ctx)
            return self._pool

    def describe(self, request: Request) -> dict[str, Any]:
        """The arguments of llama-cpp-python's ``create_chat_completion`` for ``request``."""
        return {"messages": [dict(m) for m in request.messages], **request.sampling.for_target("llama_cpp")}

    async def stream(self, request: Request, acc: Accumulator, on_update: UpdateCallback | None = None) -> Result:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        worker = loop.run_in_executor(self._executor, self._generate, request, emit, stop)
        try:
            while (item := await events.get()) is not _END:
                if isinstance(item, errors.GraniteError):
                    item.result = acc.result(error=item.message)
                    raise item
                seen = acc.chunks
                for event in item:
                    acc.feed(event)
                if on_update is not None and acc.chunks != seen:
                    on_update(acc)
        finally:
            stop.set()  # ends generation at the next token if we were cancelled
        await worker
        return acc.result()

    def _generate(self, request: Request, emit: Callable[[Any], None], stop: threading.Event) -> None:
        """Runs in the executor: stream llama.cpp's chunks to the loop as typed events."""
        try:
            if stop.is_set():  # cancelled while queued for a thread
                return
            with self._get_pool().instance() as llm:
                if not stop.is_set():
                    self._stream_from(llm, request, emit, stop)
        except errors.GraniteError as exc:
            emit(exc)
        except Exception as exc:  # anything llama.cpp raises ends this reply, not the kernel
            emit(LocalModelError(f"llama.cpp failed during the reply ({type(exc).__name__}: {exc})."))
        finally:
            emit(_END)

    def _stream_from(self, llm: Any, request: Request, emit: Callable[[Any], None], stop: threading.Event) -> None:
        arguments = self.describe(request)
        emit([ChunkMeta(self.model, "llama.cpp (local)")])
        # Forget the previous prompt: reusing its KV cache evaluates this prompt in a
        # different batch shape, which shifts the logits slightly, and then the same
        # seed no longer gives the same text.  Reproducibility is worth a prompt re-eval.
        llm.reset()
        tokens = 0
        stream = llm.create_chat_completion(stream=True, **arguments)
        try:
            for chunk in stream:
                if stop.is_set():
                    return
                events: list[Event] = chunk_events(chunk)
                tokens += any(c.get("delta", {}).get("content") is not None for c in chunk.get("choices", ()))
                if events:
                    emit(events)
        finally:
            stream.close()
        prompt_tokens = max(0, int(llm.n_tokens) - tokens)  # what llama.cpp evaluated, less what it generated
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=tokens, total_tokens=prompt_tokens + tokens, cost=0.0)
        emit([UsageReport(usage), Done()])

    async def _fetch_models(self, refresh: bool) -> dict[str, ModelInfo]:
        info = ModelInfo(id=self.model, name=f"{self.model} (local, llama.cpp)", context_length=self.n_ctx,
                         prompt_price=0.0, completion_price=0.0, supported_parameters=local_parameters())
        return {info.id: info}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
