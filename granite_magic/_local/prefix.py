"""Reading the prompt, and keeping what was read for the next prompt that begins the same way.

A follow-up turn, or the next row of a ``map`` over a shared instruction, reuses the part of the prompt llama.cpp
has already read (``Prefix``).  Every prompt is read in the same small chunks whether or not a prefix is reused, so
the same seed still gives the same text.  A recurrent or hybrid model's state is saved and restored through
llama.cpp's C API (ctypes).
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Sequence
from typing import Any, Literal

# How a follow-up turn reuses what llama.cpp already read: "auto" keeps it in the KV cache of an
# attention-only model and saves the state of a recurrent or hybrid one; "state" always saves it; "off" rereads.
PrefixReuse = Literal["auto", "state", "off"]

# Tokens per decode call while a prompt is read.  A prefix is kept in whole chunks, so the next prompt reads again at
# most READ_CHUNK - 1 tokens of what it shares: ``map``'s rows over a 500-token instruction read it once.  llama.cpp's
# logits depend on how a prompt is cut into decode calls (Gemma 3 270M on a 2-core AVX-512 CPU: a cut that is not a
# multiple of 4 tokens moved a logit by up to 1.1, as the repacked Q4_K product takes 4 rows at a time; other backends
# have other tiles), so a reused prefix gives a fresh read's text only if both were read in the same calls: fresh
# reads use these chunks too.  What small chunks cost (same machine, idle, llama-cpp-python's two batch threads;
# medians of interleaved runs): a fresh read of 512 tokens 1.21x the time of one 512-token call (64: 1.06x, 16:
# 1.37x), of a 4,090-token conversation 1.11x.  50 rows sharing about 500 tokens: 1.16x (the shared start ending 22
# tokens into a chunk) to 1.23x (31) the time of their own tokens alone, against 4.5x with 512-token chunks
# (benchmarks/bench_rows_local.py).  Only the last chunk asks for logits (a 262k-vocabulary row: 24 ms a call,
# measured under load).  32 is a multiple of 4, so on that CPU the text is what one 512-token read gives.
READ_CHUNK = 32
SAVED_STATES = 2  # "state" mode keeps the shared start of the prompts and the newest prompt's whole chunks


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Prefix:
    """The start of the last prompts that llama.cpp still holds, for the next prompt that begins the same way.

    Every prompt is read in ``READ_CHUNK`` chunks counted from position 0, and only whole chunks are kept: the last,
    partial chunk and the reply are read again.  An attention-only model keeps them in its KV cache, cut back where
    the new prompt departs.  A recurrent or hybrid model (Granite 4.0 H) cannot cut its state back, so states are
    saved at two places: where this prompt departed from the one before (the instruction that ``map``'s rows share)
    and after its last whole chunk (what a follow-up turn continues).
    """

    def __init__(self, llm: Any, reuse: PrefixReuse) -> None:
        self.llm = llm
        self.mode = reuse if reuse != "auto" else ("state" if _is_recurrent(llm) else "kv")
        self.tokens: list[int] = []  # "kv" mode: what the KV cache holds as a fresh read leaves it (whole chunks)
        self._states: list[tuple[list[int], Any]] = []  # "state" mode: (tokens, saved state), least recently used first
        self._previous: list[int] = []  # the last prompt read ("state" mode saves where the next one departs from it)
        self._batch = _Batch(int(llm.n_batch))  # READ_CHUNK is at most llama-cpp-python's n_batch (512)

    def read(self, tokens: list[int]) -> int:
        """Have llama.cpp read ``tokens`` up to its last logits, ready to sample; returns how many were reused."""
        cut = max(0, len(tokens) - 1) // READ_CHUNK * READ_CHUNK  # whole chunks before the last token (one is read)
        start = self._resume(tokens, cut)
        stops = [cut]
        if self.mode == "state":
            departed = min(_common_prefix(self._previous, tokens), cut) // READ_CHUNK * READ_CHUNK
            stops = [departed, cut]
        self._previous = tokens
        position = start
        for stop in stops:
            if stop > position:
                self._read(tokens[position:stop])
                self._keep(tokens[:stop])
                position = stop
        self.llm.eval(tokens[cut:])  # the last chunk, with the logits the reply is sampled from
        return start

    def _resume(self, tokens: list[int], cut: int) -> int:
        """Return llama.cpp to the longest kept prefix of ``tokens`` (whole chunks, at most ``cut``), else to empty."""
        llm = self.llm
        if self.mode == "kv":
            start = min(_common_prefix(self.tokens, tokens), cut) // READ_CHUNK * READ_CHUNK
            if start and (start >= llm.n_tokens or _forget_from(llm, start)):
                llm.n_tokens = start
                self.tokens = self.tokens[:start]
                return start
        elif self.mode == "state":
            usable = [kept for kept in self._states if len(kept[0]) <= cut and tokens[:len(kept[0])] == kept[0]]
            for kept in sorted(usable, key=lambda kept: -len(kept[0])):
                if _restore_state(llm, kept[1], kept[0]):
                    self._states.remove(kept)
                    self._states.append(kept)  # the most recently used
                    return len(kept[0])
        llm.reset()
        self.tokens = []
        return 0

    def _read(self, tokens: list[int]) -> None:
        """Read whole chunks after what llama.cpp holds, without logits (no row of the vocabulary is computed)."""
        llm = self.llm
        _forget_from(llm, llm.n_tokens)  # what an earlier prompt left past the kept prefix (as ``Llama.eval`` does)
        for i in range(0, len(tokens), READ_CHUNK):
            chunk = tokens[i:i + READ_CHUNK]
            self._batch.decode(llm, chunk, llm.n_tokens)
            llm.input_ids[llm.n_tokens:llm.n_tokens + len(chunk)] = chunk
            llm.n_tokens += len(chunk)

    def _keep(self, tokens: list[int]) -> None:
        if self.mode == "kv":
            self.tokens = tokens  # the KV cache holds them in place
        elif self.mode == "state" and (state := _save_state(self.llm)) is not None:
            states = [kept for kept in self._states if kept[0] != tokens] + [(tokens, state)]
            self._states = states[-SAVED_STATES:]  # the least recently used goes


class _Batch:
    """A llama.cpp batch of up to ``size`` tokens of sequence 0 that asks for no logits."""

    def __init__(self, size: int) -> None:
        import llama_cpp

        self.size = size
        self.batch = llama_cpp.llama_batch_init(size, 0, 1)
        weakref.finalize(self, llama_cpp.llama_batch_free, self.batch)

    def decode(self, llm: Any, tokens: list[int], position: int) -> None:
        import llama_cpp

        batch = self.batch
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position + i, 1, False
            batch.seq_id[i][0] = 0
        if (code := int(llama_cpp.llama_decode(llm.ctx, batch))) != 0:
            raise RuntimeError(f"llama_decode returned {code}")


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
