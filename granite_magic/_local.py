"""The embedded local backend: Granite (or any GGUF model) run by llama.cpp in this process.

Why in-process rather than llama.cpp's own OpenAI-compatible server: there is
no second process to start, find a port for, supervise and shut down with the
kernel, and Stop can end generation between two tokens instead of waiting for
a socket close to be noticed.  The client receives the messages and the
validated ``Sampling`` (its llama.cpp names come from the parameter table), never
an HTTP body.  llama-cpp-python's streaming chunks already have the
chat-completions shape, so they go through the same ``chunk_events`` decoder as
the HTTP stream and fill the same ``Accumulator`` and ``Result``.

With ``top_logprobs=K`` (``--probs K``) every generated token also gets its K most likely
alternatives, read from the logits of the position being sampled (``_Probe``); llama.cpp's
``logits_all`` mode, which keeps the logits of every position, is never turned on.

Generation runs on a dedicated executor (its threads release the GIL inside
llama.cpp), so the kernel and the background loop stay responsive.  A model
instance serves one request at a time; comparison columns queue for the
``instances`` loaded copies.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import importlib.util
import logging
import math
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _errors as errors
from . import _params
from ._client import BaseClient, ModelInfo, UpdateCallback
from ._events import Accumulator, ChunkMeta, Done, Event, TextDelta, TokenLogprobs, UsageReport
from ._result import Result, Usage
from ._runner import BackgroundLoop
from ._shapes import Request, chunk_events
from ._tokens import Alternative, Token

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["DEFAULT_LOCAL_FILE", "DEFAULT_LOCAL_MODEL", "LocalClient", "LocalModelError", "TokenTexts", "local_available",
           "local_parameters", "resolve_model"]

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
        _quiet_llama_logs()
        try:
            llm = _llama_class()(model_path=str(self.path), n_ctx=self.n_ctx, verbose=False)
        except Exception as exc:  # llama.cpp reports a bad file as ValueError or RuntimeError
            with self._lock:
                self._loaded -= 1
            raise LocalModelError(f"Could not load {self.path.name} with llama.cpp ({exc}).") from None
        chat_format = _chat_format(llm)
        if chat_format:
            llm.chat_format = chat_format
        return llm


@functools.cache
def _llama_class() -> Any:
    """``llama_cpp.Llama`` that tells its probe which token each step sampled.

    A logits processor sees the logits before the sampler chain but never learns which token the
    chain picked; llama-cpp-python has no hook for that, and its ``generate`` calls ``self.sample``
    once per step, so this subclass reports the token right after llama.cpp picks it (and before
    the stream yields its text).  Without a probe it is plain ``Llama``.
    """
    from llama_cpp import Llama

    class ProbedLlama(Llama):
        probe: _Probe | None = None

        def sample(self, *args: Any, **kwargs: Any) -> int:
            token = int(super().sample(*args, **kwargs))
            if self.probe is not None:
                self.probe.sampled(token)
            return token

    return ProbedLlama


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
        probe = _Probe.attach(llm, request, arguments)
        try:
            tokens = self._relay(llm.create_chat_completion(stream=True, **arguments), probe, emit, stop)
        finally:
            llm.probe = None
        if tokens is None:
            return
        last = [TokenLogprobs(rest, "raw")] if probe is not None and (rest := probe.texts.finish()) else []
        prompt_tokens = max(0, int(llm.n_tokens) - tokens)  # what llama.cpp evaluated, less what it generated
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=tokens, total_tokens=prompt_tokens + tokens, cost=0.0)
        emit([*last, UsageReport(usage), Done()])

    @staticmethod
    def _relay(stream: Any, probe: _Probe | None, emit: Callable[[Any], None], stop: threading.Event) -> int | None:
        """Send llama.cpp's chunks on as events; the number of text chunks, or None when stopped."""
        tokens = 0
        try:
            for chunk in stream:
                if stop.is_set():
                    return None
                events: list[Event] = chunk_events(chunk)
                tokens += any(c.get("delta", {}).get("content") is not None for c in chunk.get("choices", ()))
                if probe is not None and (shown := probe.texts.streamed(_text_of(events))):
                    events.append(TokenLogprobs(shown, "raw"))
                if events:
                    emit(events)
        finally:
            stream.close()
        return tokens

    async def _fetch_models(self, refresh: bool) -> dict[str, ModelInfo]:
        info = ModelInfo(id=self.model, name=f"{self.model} (local, llama.cpp)", context_length=self.n_ctx,
                         prompt_price=0.0, completion_price=0.0, supported_parameters=local_parameters())
        return {info.id: info}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# --- token probabilities ------------------------------------------------------------------

_log = logging.getLogger("granite_magic.local")


class _Probe:
    """The top K alternatives of every generated token, from the logits llama.cpp samples from.

    llama-cpp-python calls a logits processor at every step with the logits of the position being
    sampled, before its sampler chain (repetition penalties, top-k, top-p, min-p, temperature): the
    model's own distribution, "raw", which ``Result.resample`` can then reshape.  One step's logits
    are kept until the token is known (one vocabulary of float32: 1 MB for Gemma's 262k tokens),
    where ``logits_all`` would keep them for every position of the context.
    """

    def __init__(self, llm: Any, k: int, bias: Mapping[int, float]) -> None:
        import numpy as np

        self.llm, self.k = llm, k
        n_vocab = int(llm.n_vocab())
        self.texts = TokenTexts()
        self._logits = np.empty(n_vocab, dtype=np.float32)  # reused every step: no 1 MB allocations per token
        self._scratch = np.empty(n_vocab, dtype=np.float32)
        kept = {i: b for i, b in bias.items() if 0 <= i < n_vocab}  # llama.cpp would fail on an id past the vocabulary
        self._bias_ids = np.fromiter(kept, dtype=np.intp, count=len(kept))
        self._bias = np.fromiter(kept.values(), dtype=np.float32, count=len(kept))
        self._step: tuple[float, tuple[Alternative, ...]] | None = None  # log-normaliser and top K of the step being sampled
        self._names: dict[int, str] = {}
        self._failed = False

    @classmethod
    def attach(cls, llm: Any, request: Request, arguments: dict[str, Any]) -> _Probe | None:
        """A probe on ``llm`` for this reply when it asks for probabilities; adds the processor to ``arguments``."""
        k = request.sampling.get("top_logprobs") or 0
        if k < 1 and request.sampling.get("logprobs") is not True:
            return None
        # llama-cpp-python drops every logits processor, its own logit bias included, when it is given
        # both (``LogitsProcessorList.extend`` returns None): the probe applies the bias itself.
        probe = cls(llm, k, arguments.pop("logit_bias", None) or {})
        arguments["logits_processor"] = [probe.process]
        llm.probe = probe
        return probe

    def process(self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The logits processor: reads this step's distribution and returns the scores unchanged (or biased)."""
        # It runs inside a ctypes callback, where an exception would only be printed: never raise.
        if self._failed:
            return scores
        try:
            self._read(scores)
        except Exception as exc:
            self._failed, self._step = True, None
            _log.warning("token probabilities stopped: %s: %s", type(exc).__name__, exc)
            return scores
        return self._logits if len(self._bias) else scores

    def _read(self, scores: npt.NDArray[np.float32]) -> None:
        import numpy as np

        logits, scratch = self._logits, self._scratch
        np.copyto(logits, scores)  # contiguous: the processor sees a strided view of llama.cpp's candidates
        if len(self._bias):
            logits[self._bias_ids] += self._bias
        peak = float(logits.max())
        np.subtract(logits, peak, out=scratch)
        np.exp(scratch, out=scratch)
        norm = peak + math.log(float(scratch.sum(dtype=np.float64)))  # log-sum-exp: log p = logit - norm
        self._step = (norm, self._top(norm) if self.k else ())

    def _top(self, norm: float) -> tuple[Alternative, ...]:
        import numpy as np

        logits = self._logits
        ids = np.argpartition(logits, -self.k)[-self.k:]  # the K largest in one O(n) pass, unordered
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        return tuple(Alternative(self._name(int(i)), float(logits[i]) - norm) for i in ids)

    def _name(self, token: int) -> str:
        """An alternative's text; special tokens by name (``<end_of_turn>``), so they stay distinct."""
        name = self._names.get(token)
        if name is None:
            name = self._names[token] = self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")
        return name

    def sampled(self, token: int) -> None:
        """The token llama.cpp picked at the step ``process`` just read."""
        if self._step is None:
            return
        norm, top = self._step
        self._step = None
        try:  # probabilities are an extra: a failure here must not end the reply
            # Its own bytes as the stream decodes them (special=False): a control token adds no text.
            self.texts.sampled(self.llm.detokenize([token]), float(self._logits[token]) - norm, top)
        except Exception as exc:
            self._failed = True  # the texts stay whole: a token that never comes leaves its text to the one before
            _log.warning("token probabilities stopped: %s: %s", type(exc).__name__, exc)


class TokenTexts:
    """Gives every sampled token the part of the streamed text it produced: ``"".join(texts) == reply``.

    A token's own text is its bytes decoded incrementally, so a token that ends inside a UTF-8
    character has "" and the one that completes it has the whole character, which is when the
    character can appear.  llama-cpp-python's stream is the truth, and it differs from the own texts
    in four ways: it holds text back (what could begin a stop sequence, an incomplete character) and
    then sends several tokens' text at once; it cuts the last token at a stop sequence; it never shows
    the end-of-turn token or a stop sequence; and it drops bytes that are not UTF-8 (decoding its last
    tokens one by one, with errors ignored).  So a token is handed on only once the stream has shown
    its text, tokens with no text of their own go with the next one that has some, and when the stream
    ends, the first token whose text it did not show takes whatever text is left (the remainder of a cut
    token, or the text after dropped bytes) and the tokens after it, never shown, are left out.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: deque[Token] = deque()  # sampled, their text not yet shown; .text is the own text
        self._shown = ""  # streamed text no token has taken yet

    def sampled(self, piece: bytes, logprob: float, top: tuple[Alternative, ...]) -> None:
        self._pending.append(Token(self._decoder.decode(piece), logprob, top))

    def streamed(self, text: str) -> tuple[Token, ...]:
        """The tokens whose text the stream has now shown (``text`` is its newest piece)."""
        self._shown += text
        ready: list[Token] = []
        while (end := self._next_with_text()) is not None and self._shown.startswith(own := self._pending[end].text):
            self._shown = self._shown[len(own):]
            ready.extend(self._pending.popleft() for _ in range(end + 1))
        return tuple(ready)

    def finish(self) -> tuple[Token, ...]:
        """The stream ended: the tokens left, fitted to the text left."""
        ready = list(self.streamed(""))
        if self._shown and self._pending:
            end = self._next_with_text() or 0
            ready.extend(self._pending.popleft() for _ in range(end))
            ready.append(replace(self._pending.popleft(), text=self._shown))
        self._pending.clear()
        self._shown = ""
        return tuple(ready)

    def _next_with_text(self) -> int | None:
        return next((i for i, token in enumerate(self._pending) if token.text), None)
