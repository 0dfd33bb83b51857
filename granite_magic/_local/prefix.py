"""Reading the prompt, and keeping what was read for the next prompt that begins the same way.

Follow-up turns reuse the part of the conversation llama.cpp has already read (``Prefix``), read in
the same batches as a fresh read would, so the same seed still gives the same text.  A recurrent or
hybrid model's state is saved and restored through llama.cpp's C API (ctypes).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any, Literal

# How a follow-up turn reuses what llama.cpp already read: "auto" keeps it in the KV cache of an
# attention-only model and saves the state of a recurrent or hybrid one; "state" always saves it; "off" rereads.
PrefixReuse = Literal["auto", "state", "off"]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Prefix:
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
