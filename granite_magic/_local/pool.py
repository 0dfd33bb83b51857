"""The loaded model instances, and how much context each request needs.

The llama.cpp context is sized to each request (prompt plus reply, up to the model's trained
context); a request that needs more than a loaded instance has reloads it.  A model instance serves
one request at a time; comparison columns queue for the ``instances`` loaded copies.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _errors as errors
from .._shapes import Request
from .model import LocalModelError
from .prefix import Prefix, PrefixReuse
from .template import Prompt, Template, raw_prompt

if TYPE_CHECKING:
    from .probs import Probe

CONTEXT_STEP = 512  # contexts are sized in steps, so that similar requests share a loaded instance
MIN_CONTEXT = 2048  # the smallest context loaded: small requests never cause a reload
OPEN_REPLY_TOKENS = 2048  # room a reply gets when no max_tokens is given (more if the rounding leaves it)


def context_size(needed: int, trained: int, minimum: int = MIN_CONTEXT) -> int:
    """The context to load for ``needed`` tokens: a multiple of ``CONTEXT_STEP``, at least ``minimum``,
    at most the model's trained context (``trained``; 0 when the GGUF does not say)."""
    size = max(minimum, -(-needed // CONTEXT_STEP) * CONTEXT_STEP)
    return min(size, trained) if trained > 0 else size


def reply_limit(prompt: int, max_tokens: int | None, trained: int, minimum: int) -> int:
    """How many tokens the reply may have; refuses, before anything runs, a request the model cannot hold.

    Without ``max_tokens`` the reply may fill a context sized for the prompt plus ``OPEN_REPLY_TOKENS``:
    a limit that depends on the request alone, so a reply never ends earlier or later because a bigger
    request happened to load a bigger context before it.
    """
    if trained > 0 and prompt + (max_tokens or 1) > trained:
        asked = f" and max_tokens={max_tokens:,}" if max_tokens is not None else ""
        raise errors.InvalidParameterError(
            f"the prompt is {prompt:,} tokens{asked}: more than the model's {trained:,}-token context. "
            f"Shorten the prompt{' or lower max_tokens=' if asked else ''}.", names=("max_tokens",))
    if max_tokens is not None:
        return max_tokens
    return context_size(prompt + OPEN_REPLY_TOKENS, trained, minimum) - prompt


# --- the loaded instances -------------------------------------------------------------------


class Slot:
    """One loaded model instance and the prompt prefix it holds."""

    def __init__(self, llm: Any, reuse: PrefixReuse) -> None:
        self.llm: Any = llm
        self.prefix = Prefix(llm, reuse)


class Pool:
    """Up to ``size`` loaded model instances, each used by one generation at a time.

    ``_places`` holds one entry per instance the pool may have: a loaded one, or None for one not
    loaded yet.  Last in, first out, so an idle loaded instance is taken before another is loaded.
    """

    def __init__(self, path: Path, size: int, n_ctx: int, reuse: PrefixReuse, chat_template: str | None,
                 chat_format: str | None = None) -> None:
        self.path, self.reuse, self.chat_template, self.chat_format = path, reuse, chat_template, chat_format
        self.n_ctx = n_ctx  # what a new instance is loaded with: the largest context asked for so far
        self.trained = 0  # the model's trained context, once an instance is loaded
        self.template: Template | None = None
        self._places: queue.LifoQueue[Slot | None] = queue.LifoQueue()
        for _ in range(size):
            self._places.put(None)

    @contextmanager
    def instance(self) -> Iterator[Slot]:
        slot = self._places.get()
        try:
            slot = slot or Slot(self._load(self.n_ctx), self.reuse)
            yield slot
        finally:  # an instance that failed to (re)load leaves its place free for the next request to load
            self._places.put(slot if slot is not None and slot.llm is not None else None)

    def prompt(self, slot: Slot, request: Request) -> Prompt:
        if request.prompt is not None:  # a raw completion: the text as written, no template
            return raw_prompt(slot.llm, request.prompt)
        assert self.template is not None  # set by the load that gave the slot its model
        return self.template.render(slot.llm, request)

    def fit(self, slot: Slot, n_ctx: int) -> None:
        """Reload ``slot``'s model with an ``n_ctx`` context if its own is smaller (never for a smaller request)."""
        if int(slot.llm.n_ctx()) >= n_ctx:
            return
        self.n_ctx = max(self.n_ctx, n_ctx)
        old, slot.llm = slot.llm, None
        old.close()  # before loading the bigger one: two copies of a large context may not fit in memory
        slot.llm = self._load(n_ctx)
        slot.prefix = Prefix(slot.llm, self.reuse)

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
            self.template = Template.of(llm, self.chat_template, self.chat_format)
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
        probe: Probe | None = None
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


def generated_tokens(llm: Any) -> int:
    """The tokens the reply generated: every pick but a final end-of-generation token, which is no text."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ended = llm.picks > 0 and bool(llama_cpp.llama_vocab_is_eog(vocab, llm.last_pick))
    return int(llm.picks) - ended


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
