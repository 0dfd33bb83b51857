"""The embedded local backend: Granite (or any GGUF model) run by llama.cpp in this process.

Why in-process rather than llama.cpp's own OpenAI-compatible server: there is
no second process to start, find a port for, supervise and shut down with the
kernel, and Stop can end generation between two tokens instead of waiting for
a socket close to be noticed.  The client receives the messages and the
validated ``Sampling`` (its llama.cpp names come from the parameter table), never
an HTTP body.

The prompt is rendered here from the model's own chat template (``_Template``): the GGUF's Jinja
template, or llama-cpp-python's built-in format for a GGUF with none it can use.  Rendering it
ourselves is what lets the prompt be shown and counted exactly before anything runs
(``prompt_preview``), documents reach a template that takes them, and an assistant prefix be
continued rather than closed (branching in the sampling lens).  The text is generated with
``create_completion`` and its chunks become the same events as the HTTP stream's.

The llama.cpp context is sized to each request (prompt plus reply, up to the model's trained
context); a request that needs more than a loaded instance has reloads it.  Follow-up turns reuse
the part of the conversation llama.cpp has already read (``_Prefix``), read in the same batches as
a fresh read would, so the same seed still gives the same text.

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
import ctypes
import functools
import importlib.util
import inspect
import logging
import math
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from . import _errors as errors
from . import _params
from ._client import BaseClient, ModelInfo, UpdateCallback
from ._events import Accumulator, ChunkMeta, Done, Event, Finish, TextDelta, TokenLogprobs, UsageReport
from ._result import Result, Usage
from ._runner import BackgroundLoop
from ._shapes import Request, chat_tools
from ._tokens import Alternative, Token

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["DEFAULT_LOCAL_FILE", "DEFAULT_LOCAL_MODEL", "LocalClient", "LocalModelError", "PrefixReuse", "TokenTexts",
           "context_size", "local_available", "local_parameters", "resolve_model"]

DEFAULT_LOCAL_MODEL = "ibm-granite/granite-4.0-h-micro-GGUF"
DEFAULT_LOCAL_FILE = "granite-4.0-h-micro-Q4_K_M.gguf"
DEFAULT_LOCAL_SIZE = "1.9 GB"

INSTALL_HINT = "pip install 'granite-magic[local]'"

CONTEXT_STEP = 512  # contexts are sized in steps, so that similar requests share a loaded instance
MIN_CONTEXT = 2048  # the smallest context loaded: small requests never cause a reload
OPEN_REPLY_TOKENS = 2048  # room a reply gets when no max_tokens is given (more if the rounding leaves it)

# How a follow-up turn reuses what llama.cpp already read: "auto" keeps it in the KV cache of an
# attention-only model and saves the state of a recurrent or hybrid one; "state" always saves it; "off" rereads.
PrefixReuse = Literal["auto", "state", "off"]


class LocalModelError(errors.GraniteError):
    """The local model could not be found, downloaded or loaded."""

    kind = "local_model"


# Parameters the local backend honours itself rather than passing to llama.cpp: token probabilities are read
# from the logits, and a tool choice is kept by the tool loop.
HANDLED_HERE = ("logprobs", "top_logprobs", "tool_choice")


def local_parameters() -> tuple[str, ...]:
    """What the local backend honours: every parameter with a llama.cpp name, and those it handles itself."""
    return tuple(p.name for p in _params.PARAMETERS if p.wire_name("llama_cpp") is not None or p.name in HANDLED_HERE)


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


# --- the prompt: the model's own chat template ----------------------------------------------


@dataclass(frozen=True)
class _Prompt:
    """What the model reads for a request: the text after its chat template, and that text's exact tokens."""

    text: str
    tokens: list[int]
    stop: list[str]  # the template's end-of-turn strings, added to the user's stop
    stopping: Any  # llama-cpp-python's StoppingCriteriaList (a Jinja template stops on its EOS token id), or None


class _Template:
    """How one model turns messages into prompt text: its GGUF's Jinja template, or a llama-cpp-python format.

    A Jinja template is rendered by llama-cpp-python's own ``Jinja2ChatFormatter`` (its sandbox,
    ``raise_exception``, ``strftime_now``, ``tojson``, the model's BOS and EOS token texts, the generation
    prompt), so the text is the one ``create_chat_completion`` would have built.  ``reads`` is what the
    template looks at, so documents and tools go to a template only if it has a place for them.
    """

    def __init__(self, name: str, formatter: Callable[..., Any], reads: frozenset[str], *, jinja: bool = False) -> None:
        self.name, self.formatter, self.reads, self.jinja = name, formatter, reads, jinja

    @classmethod
    def of(cls, llm: Any, template: str | None = None) -> _Template:
        """``template`` (Jinja) if given, else the format named by ``GRANITE_LOCAL_CHAT_FORMAT``, the GGUF's
        template, the ``gemma`` format for a Gemma GGUF without one, or llama-cpp-python's ``llama-2`` fallback."""
        chat_format = None if template else _chat_format(llm)
        source = template or (None if chat_format else (getattr(llm, "metadata", {}) or {}).get("tokenizer.chat_template"))
        if source:
            return cls._jinja(llm, source)
        return cls(chat_format or "llama-2", _registered_formatter(chat_format or "llama-2"), frozenset())

    @classmethod
    def _jinja(cls, llm: Any, source: str) -> _Template:
        from jinja2 import meta
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos, bos = int(llm.token_eos()), int(llm.token_bos())
        formatter = Jinja2ChatFormatter(template=source, eos_token=_token_text(llm, eos), bos_token=_token_text(llm, bos),
                                        stop_token_ids=[eos])
        environment = formatter._environment.environment  # the formatter's own (extensions included), to parse with
        reads = frozenset(meta.find_undeclared_variables(environment.parse(source)))
        return cls("the model's Jinja template", formatter, reads, jinja=True)

    def render(self, llm: Any, request: Request) -> _Prompt:
        """The prompt for ``request``; an assistant message at the end is a prefix the reply continues."""
        messages, prefix = _split_prefix(request.messages)
        documents: list[dict[str, str]] | None = [dict(d) for d in request.documents] or None
        if documents and "documents" not in self.reads:  # no place for them: a delimited block in the system message
            messages, documents = _with_documents_block(messages, request.documents), None
        response = self._format(messages, documents, self._tools(request))
        text = response.prompt + prefix  # the generation prompt is open: the model goes on from the prefix
        # As llama-cpp-python's chat handler does: special tokens in the text are parsed, and a BOS is added
        # unless the template wrote its own.  The BOS is shown too: the model reads it.
        add_bos = not getattr(response, "added_special", False)
        tokens = list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))
        bos = int(llm.token_bos())
        if add_bos and tokens[:1] == [bos] and not text.startswith(_token_text(llm, bos)):
            text = _token_text(llm, bos) + text
        stop = response.stop
        return _Prompt(text, tokens, [stop] if isinstance(stop, str) else list(stop or ()), response.stopping_criteria)

    def _tools(self, request: Request) -> list[dict[str, Any]] | None:
        if not request.tools:
            return None
        if "tools" not in self.reads:
            raise errors.InvalidParameterError(
                f"This model's chat format ({self.name}) has no place for tools given natively: use --tool-mode prompted.")
        return chat_tools(request.tools)

    def _format(self, messages: list[dict[str, Any]], documents: list[dict[str, str]] | None, tools: list[dict[str, Any]] | None) -> Any:
        extra: dict[str, Any] = {"documents": documents} if documents else {}
        try:
            response = self.formatter(messages=messages, tools=tools, **extra)
            system = "\n\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "system")
            if system and not self.jinja and system not in response.prompt:
                # Some built-in formats drop the system message (llama-cpp-python's "gemma" does); Gemma's own
                # template puts it at the start of the first user turn, and so do we: nothing the user gave is lost.
                response = self.formatter(messages=_system_in_first_turn(messages), tools=tools, **extra)
        except Exception as exc:  # jinja2's errors and the template's own raise_exception (ValueError)
            raise errors.InvalidParameterError(f"The model's chat template refused this conversation ({type(exc).__name__}: {exc}).") from None
        return response


def _token_text(llm: Any, token: int) -> str:
    """A special token's text as llama-cpp-python gives it to templates (``bos_token``, ``eos_token``)."""
    return "" if token == -1 else str(llm._model.token_get_text(token))


def _registered_formatter(name: str) -> Callable[..., Any]:
    """The prompt formatter behind one of llama-cpp-python's registered chat formats.

    The registry keeps only the completion handler it wraps around each formatter; the formatter is the
    one variable that handler closes over (``chat_formatter_to_chat_completion_handler``).
    """
    from llama_cpp import llama_chat_format

    try:
        handler = llama_chat_format.get_chat_completion_handler(name)
    except ValueError:
        raise LocalModelError(f"llama-cpp-python has no chat format {name!r} (GRANITE_LOCAL_CHAT_FORMAT).") from None
    code, closure = getattr(handler, "__code__", None), getattr(handler, "__closure__", None)
    cells = dict(zip(code.co_freevars if code else (), closure or (), strict=False))
    if "chat_formatter" not in cells:
        raise LocalModelError(f"The chat format {name!r} is a handler of its own, not a prompt format: "
                              "use a GGUF with a chat template, or another GRANITE_LOCAL_CHAT_FORMAT.")
    formatter: Callable[..., Any] = cells["chat_formatter"].cell_contents
    return formatter


def _split_prefix(messages: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The messages to render, and the text of a final assistant message the reply continues ("" if none)."""
    rendered = [dict(m) for m in messages]
    last = rendered[-1] if rendered else {}
    if last.get("role") == "assistant" and isinstance(last.get("content"), str) and not last.get("tool_calls"):
        return rendered[:-1], str(last["content"])
    return rendered, ""


def _with_documents_block(messages: list[dict[str, Any]], documents: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """The documents as the delimited block the HTTP backends send, at the end of the system message."""
    from ._context import Document, documents_block

    # The request's documents are the template's {doc_id, title, text}: the file kind is not among them.
    block = documents_block([Document(d.get("title") or f"document {d.get('doc_id', i)}", d.get("text", ""), d.get("kind", "text"))
                             for i, d in enumerate(documents, start=1)])
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{block}"}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def _system_in_first_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system = "\n\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "system")
    turns = [m for m in messages if m.get("role") != "system"]
    first = next((i for i, m in enumerate(turns) if m.get("role") == "user"), None)
    if first is None:
        return [{"role": "user", "content": system}, *turns]
    turns[first] = {**turns[first], "content": f"{system}\n\n{turns[first].get('content') or ''}"}
    return turns


# --- how much context a request needs ---------------------------------------------------------


def context_size(needed: int, trained: int, minimum: int = MIN_CONTEXT) -> int:
    """The context to load for ``needed`` tokens: a multiple of ``CONTEXT_STEP``, at least ``minimum``,
    at most the model's trained context (``trained``; 0 when the GGUF does not say)."""
    size = max(minimum, -(-needed // CONTEXT_STEP) * CONTEXT_STEP)
    return min(size, trained) if trained > 0 else size


def _reply_limit(prompt: int, max_tokens: int | None, trained: int, minimum: int) -> int:
    """How many tokens the reply may have; refuses, before anything runs, a request the model cannot hold.

    Without ``max_tokens`` the reply may fill a context sized for the prompt plus ``OPEN_REPLY_TOKENS``:
    a limit that depends on the request alone, so a reply never ends earlier or later because a bigger
    request happened to load a bigger context before it.
    """
    if trained > 0 and prompt + (max_tokens or 1) > trained:
        asked = f" and max_tokens {max_tokens:,}" if max_tokens is not None else ""
        raise errors.InvalidParameterError(
            f"the prompt is {prompt:,} tokens{asked}: more than the model's {trained:,}-token context. "
            f"Shorten the prompt{' or lower --max-tokens' if asked else ''}.")
    if max_tokens is not None:
        return max_tokens
    return context_size(prompt + OPEN_REPLY_TOKENS, trained, minimum) - prompt


@functools.cache
def _chat_defaults() -> dict[str, Any]:
    """The sampler settings ``create_chat_completion`` uses when none is given (temperature 0.2, not
    ``create_completion``'s 0.8): the local backend kept them when it began rendering prompts itself."""
    from llama_cpp import Llama

    chat = inspect.signature(Llama.create_chat_completion).parameters
    completion = inspect.signature(Llama.create_completion).parameters
    samplers = ("temperature", "top_p", "top_k", "min_p", "typical_p", "presence_penalty", "frequency_penalty",
                "repeat_penalty", "tfs_z", "mirostat_mode", "mirostat_tau", "mirostat_eta")
    return {name: chat[name].default for name in samplers if name in chat and name in completion}


def _arguments(request: Request, prompt: _Prompt, limit: int) -> dict[str, Any]:
    """``create_completion``'s keyword arguments: the sampling asked for, the reply limit, the template's stops."""
    sampling = request.sampling.for_target("llama_cpp")
    stop = sampling.pop("stop", None)
    asked = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    return {**_chat_defaults(), **sampling, "max_tokens": limit, "stop": asked + prompt.stop,
            "stopping_criteria": prompt.stopping}


# --- reading the prompt, and keeping what was read ------------------------------------------------


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class _Prefix:
    """The start of the last prompt that llama.cpp still holds, for the next prompt that begins the same way.

    llama.cpp's logits depend a little on how a prompt is cut into batches, so a kept prefix gives the
    same text as a fresh read only if both were read in the same batches.  So every prompt is read in
    ``n_batch`` chunks counted from position 0 (as a fresh read by llama-cpp-python is), and only whole
    chunks are kept: the last, partial chunk and the reply are read again.  An attention-only model keeps
    them in its KV cache, cut back where the new prompt departs; a recurrent or hybrid model (Granite 4.0 H)
    cannot cut its state back, so its state after the last whole chunk is saved and restored.
    """

    def __init__(self, llm: Any, reuse: PrefixReuse) -> None:
        self.llm = llm
        self.mode = reuse if reuse != "auto" else ("state" if _is_recurrent(llm) else "kv")
        self.tokens: list[int] = []  # what can be returned to: whole chunks, read as a fresh read reads them
        self._state: Any = None  # the saved sequence state ("state" mode), for self.tokens

    def read(self, tokens: list[int]) -> int:
        """Have llama.cpp read ``tokens`` up to its last logits, ready to sample; returns how many were reused."""
        step = int(self.llm.n_batch)
        cut = max(0, len(tokens) - 1) // step * step  # whole chunks before the last token (at least one token is read)
        start = self._resume(tokens, cut)
        if cut > start:
            self.llm.eval(tokens[start:cut])
            self._keep(tokens[:cut])
        self.llm.eval(tokens[cut:])
        return start

    def _resume(self, tokens: list[int], cut: int) -> int:
        """Return llama.cpp to the longest kept prefix of ``tokens`` (whole chunks, at most ``cut``), else to empty."""
        step = int(self.llm.n_batch)
        start = min(_common_prefix(self.tokens, tokens), cut) // step * step if self.mode != "off" else 0
        if start and self._return_to(start):
            return start
        self.llm.reset()
        if self.mode == "kv":
            self.tokens = []
        return 0

    def _return_to(self, start: int) -> bool:
        llm = self.llm
        if self.mode == "state" and not _restore_state(llm, self._state, self.tokens):
            return False
        if start < llm.n_tokens and not _forget_from(llm, start):
            return False
        llm.n_tokens = start
        if self.mode == "kv":
            self.tokens = self.tokens[:start]
        return True

    def _keep(self, tokens: list[int]) -> None:
        if self.mode == "kv":
            self.tokens = tokens  # the KV cache holds them in place
        elif self.mode == "state":
            self._state, self.tokens = _save_state(self.llm), tokens


def _is_recurrent(llm: Any) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_model_is_recurrent(llm.model) or llama_cpp.llama_model_is_hybrid(llm.model))


def _forget_from(llm: Any, position: int) -> bool:
    """Drop what llama.cpp holds from ``position`` on; False where it cannot (a recurrent state is not cut back)."""
    import llama_cpp

    return bool(llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(llm.ctx), -1, position, -1))


def _save_state(llm: Any) -> Any:
    """The state of sequence 0 (what llama.cpp has read), without the logits ``Llama.save_state`` also copies
    (``n_batch`` x vocabulary floats: 0.5 GB for Gemma)."""
    import llama_cpp

    size = int(llama_cpp.llama_state_seq_get_size(llm.ctx, 0))
    state = (ctypes.c_uint8 * size)()
    if int(llama_cpp.llama_state_seq_get_data(llm.ctx, state, size, 0)) != size:
        return None
    return state


def _restore_state(llm: Any, state: Any, tokens: list[int]) -> bool:
    import llama_cpp

    if state is None:
        return False
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)  # empty, so cells fill from 0 as when fresh
    if not llama_cpp.llama_state_seq_set_data(llm.ctx, state, len(state), 0):
        llm.reset()
        return False
    llm.input_ids[: len(tokens)] = tokens
    llm.n_tokens = len(tokens)
    return True


# --- the loaded instances -------------------------------------------------------------------


class _Slot:
    """One loaded model instance and the prompt prefix it holds."""

    def __init__(self, llm: Any, reuse: PrefixReuse) -> None:
        self.llm: Any = llm
        self.prefix = _Prefix(llm, reuse)


class _Pool:
    """Up to ``size`` loaded model instances, each used by one generation at a time.

    ``_places`` holds one entry per instance the pool may have: a loaded one, or None for one not
    loaded yet.  Last in, first out, so an idle loaded instance is taken before another is loaded.
    """

    def __init__(self, path: Path, size: int, n_ctx: int, reuse: PrefixReuse, chat_template: str | None) -> None:
        self.path, self.reuse, self.chat_template = path, reuse, chat_template
        self.n_ctx = n_ctx  # what a new instance is loaded with: the largest context asked for so far
        self.trained = 0  # the model's trained context, once an instance is loaded
        self.template: _Template | None = None
        self._places: queue.LifoQueue[_Slot | None] = queue.LifoQueue()
        for _ in range(size):
            self._places.put(None)

    @contextmanager
    def instance(self) -> Iterator[_Slot]:
        slot = self._places.get()
        try:
            slot = slot or _Slot(self._load(self.n_ctx), self.reuse)
            yield slot
        finally:  # an instance that failed to (re)load leaves its place free for the next request to load
            self._places.put(slot if slot is not None and slot.llm is not None else None)

    def prompt(self, slot: _Slot, request: Request) -> _Prompt:
        assert self.template is not None  # set by the load that gave the slot its model
        return self.template.render(slot.llm, request)

    def fit(self, slot: _Slot, n_ctx: int) -> None:
        """Reload ``slot``'s model with an ``n_ctx`` context if its own is smaller (never for a smaller request)."""
        if int(slot.llm.n_ctx()) >= n_ctx:
            return
        self.n_ctx = max(self.n_ctx, n_ctx)
        old, slot.llm = slot.llm, None
        old.close()  # before loading the bigger one: two copies of a large context may not fit in memory
        slot.llm = self._load(n_ctx)
        slot.prefix = _Prefix(slot.llm, self.reuse)

    def _load(self, n_ctx: int) -> Any:
        _quiet_llama_logs()
        try:
            # swa_full: a sliding-window cache that forgets old positions could not be cut back to a kept prefix.
            llm = _llama_class()(model_path=str(self.path), n_ctx=n_ctx, swa_full=True, verbose=False)
        except Exception as exc:  # llama.cpp reports a bad file as ValueError or RuntimeError
            raise LocalModelError(f"Could not load {self.path.name} with llama.cpp ({exc}).") from None
        if self.template is None:
            import llama_cpp

            self.trained = int(llama_cpp.llama_model_n_ctx_train(llm.model))
            self.template = _Template.of(llm, self.chat_template)
        return llm


@functools.cache
def _llama_class() -> Any:
    """``llama_cpp.Llama`` that tells its probe which token each step sampled, and counts the steps.

    A logits processor sees the logits before the sampler chain but never learns which token the
    chain picked; llama-cpp-python has no hook for that, and its ``generate`` calls ``self.sample``
    once per step, so this subclass reports the token right after llama.cpp picks it (and before
    the stream yields its text).  The count is the reply's exact token count (the stream's chunks
    are not tokens: it holds text back and sends several tokens at once).
    """
    from llama_cpp import Llama

    class ProbedLlama(Llama):
        probe: _Probe | None = None
        picks = 0  # tokens sampled since the reply began
        last_pick = -1

        def sample(self, *args: Any, **kwargs: Any) -> int:
            token = int(super().sample(*args, **kwargs))
            self.picks += 1
            self.last_pick = token
            if self.probe is not None:
                self.probe.sampled(token)
            return token

    return ProbedLlama


def _generated(llm: Any) -> int:
    """The tokens the reply generated: every pick but a final end-of-generation token, which is no text."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ended = llm.picks > 0 and bool(llama_cpp.llama_vocab_is_eog(vocab, llm.last_pick))
    return int(llm.picks) - ended


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
    import llama_cpp

    log = logging.getLogger("granite_magic.llama_cpp")

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        log.debug(text.decode("utf-8", errors="replace").rstrip())

    _log_callback = forward  # keep a reference: llama.cpp holds only the C pointer
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))


class LocalClient(BaseClient):
    """Chat completions from a GGUF model in this process, with the HTTP client's events and results.

    ``n_ctx`` is the smallest context an instance is loaded with (a request that needs more reloads it
    bigger, up to the model's trained context).  ``prefix_reuse`` says how a prompt that begins like the
    previous one reuses what llama.cpp already read (see ``PrefixReuse``); the text is the same either way.
    ``chat_template`` (Jinja) replaces the GGUF's own, for a GGUF that has none or a wrong one.
    """

    base_url = "local"  # where probes of it are filed; nothing compares it
    kind: ClassVar[str] = "local"
    documents_in_template: ClassVar[bool] = True  # the GGUF's chat template has a documents slot
    counts_prompt_tokens: ClassVar[bool] = True
    free: ClassVar[bool] = True

    def __init__(self, model: str | None = None, *, instances: int = 1, n_ctx: int = MIN_CONTEXT,
                 prefix_reuse: PrefixReuse = "auto", chat_template: str | None = None, loop: BackgroundLoop | None = None) -> None:
        if instances < 1:
            raise errors.InvalidParameterError(f"instances={instances} is out of range: must be an integer >= 1")
        if prefix_reuse not in ("auto", "state", "off"):
            raise errors.InvalidParameterError(f"prefix_reuse={prefix_reuse!r} is invalid: must be auto, state or off")
        self.reference = model
        self.instances = instances
        self.n_ctx = n_ctx
        self.prefix_reuse: PrefixReuse = prefix_reuse
        self.chat_template = chat_template
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

    def label(self, model: str) -> str:
        return f"{model} · local llama.cpp"

    def default_tool_mode(self, supported: Sequence[str] | None) -> Literal["native", "prompted"]:
        """Prompted: the model reads Granite's ``<tool_call>`` convention from its system message."""
        return "prompted"

    def model_file(self) -> tuple[str, Path | None]:
        """The GGUF's name, and its path when the file is here already (without loading or downloading it)."""
        return self.model, self.model_path()

    def __repr__(self) -> str:
        return f"LocalClient(model={self.model!r}, instances={self.instances})"

    def _get_pool(self) -> _Pool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = _Pool(resolve_model(self.reference), self.instances, self.n_ctx, self.prefix_reuse, self.chat_template)
            return self._pool

    @property
    def context_loaded(self) -> int:
        """The largest llama.cpp context loaded so far (0 before the model is loaded)."""
        return self._pool.n_ctx if self._pool is not None and self._pool.template is not None else 0

    def describe(self, request: Request) -> dict[str, Any]:
        """What the model is given for ``request``, without loading it: the messages (and documents and tools)
        its chat template turns into the prompt, and llama.cpp's sampling arguments.  ``prompt_preview``
        shows the prompt text itself, which needs the model's template and tokenizer."""
        described: dict[str, Any] = {"messages": [dict(m) for m in request.messages]}
        if request.documents:
            described["documents"] = [dict(d) for d in request.documents]
        if request.tools:
            described["tools"] = chat_tools(request.tools)
        return {**described, **request.sampling.for_target("llama_cpp")}

    def model_path(self) -> Path | None:
        """The GGUF file when it is here already (for the record/replay key), without loading or downloading it."""
        ref = self.reference or os.environ.get("GRANITE_LOCAL_MODEL")
        if ref is None:
            return None
        path = Path(ref).expanduser()
        return path if path.is_file() else None

    def prompt_preview(self, request: Request) -> tuple[str, int]:
        """The exact text the model reads for ``request`` after its chat template (any default system prompt
        the template adds included, an assistant prefix at the end) and its exact token count.

        Loads the model if no instance is loaded yet, and waits for one if all are generating.
        """
        pool = self._get_pool()
        with pool.instance() as slot:
            prompt = pool.prompt(slot, request)
        return prompt.text, len(prompt.tokens)

    def count_prompt_tokens(self, request: Request) -> int:
        """The prompt's exact token count (what the reply's ``usage.prompt_tokens`` will say)."""
        return self.prompt_preview(request)[1]

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
            pool = self._get_pool()
            with pool.instance() as slot:
                if not stop.is_set():
                    self._reply(pool, slot, request, emit, stop)
        except errors.GraniteError as exc:
            emit(exc)
        except Exception as exc:  # anything llama.cpp raises ends this reply, not the kernel
            emit(LocalModelError(f"llama.cpp failed during the reply ({type(exc).__name__}: {exc})."))
        finally:
            emit(_END)

    def _reply(self, pool: _Pool, slot: _Slot, request: Request, emit: Callable[[Any], None], stop: threading.Event) -> None:
        prompt = pool.prompt(slot, request)
        limit = _reply_limit(len(prompt.tokens), request.sampling.get("max_tokens"), pool.trained, self.n_ctx)
        pool.fit(slot, context_size(len(prompt.tokens) + limit, pool.trained, self.n_ctx))
        arguments = _arguments(request, prompt, limit)
        emit([ChunkMeta(self.model, "llama.cpp (local)")])
        llm = slot.llm
        reused = slot.prefix.read(prompt.tokens)  # the prompt's logits are ready: create_completion samples at once
        llm.picks = 0
        probe = _Probe.attach(llm, request, arguments)
        try:
            finished = self._relay(llm.create_completion(prompt.tokens, stream=True, **arguments), probe, emit, stop)
        finally:
            llm.probe = None
        if not finished:
            return
        last = [TokenLogprobs(rest, "raw")] if probe is not None and (rest := probe.texts.finish()) else []
        prompt_tokens, tokens = len(prompt.tokens), _generated(llm)
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=tokens, total_tokens=prompt_tokens + tokens, cost=0.0,
                      cached_tokens=reused)  # as OpenAI's cached_tokens: prompt tokens read earlier, not again
        emit([*last, UsageReport(usage), Done()])

    @staticmethod
    def _relay(stream: Any, probe: _Probe | None, emit: Callable[[Any], None], stop: threading.Event) -> bool:
        """Send llama.cpp's completion chunks on as events; False when stopped before the end."""
        try:
            for chunk in stream:
                if stop.is_set():
                    return False
                events = _completion_events(chunk)
                if probe is not None and (shown := probe.texts.streamed(_text_of(events))):
                    events.append(TokenLogprobs(shown, "raw"))
                if events:
                    emit(events)
        finally:
            stream.close()
        return True

    async def _fetch_models(self, refresh: bool) -> dict[str, ModelInfo]:
        trained = self._pool.trained if self._pool is not None else 0
        info = ModelInfo(id=self.model, name=f"{self.model} (local, llama.cpp)", context_length=trained or self.n_ctx,
                         prompt_price=0.0, completion_price=0.0, supported_parameters=local_parameters())
        return {info.id: info}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _completion_events(chunk: Mapping[str, Any]) -> list[Event]:
    """The events of one ``create_completion`` chunk: its ``text`` (chat chunks say ``delta.content``) and its end."""
    events: list[Event] = []
    for choice in chunk.get("choices") or ():
        if choice.get("text"):
            events.append(TextDelta(str(choice["text"])))
        if choice.get("finish_reason"):
            events.append(Finish(str(choice["finish_reason"])))
    return events


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
