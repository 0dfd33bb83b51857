"""Token probabilities: every generated token's K most likely alternatives, read from the logits.

With ``top_logprobs=K`` (``--probs K``) every generated token also gets its K most likely
alternatives, read from the logits of the position being sampled (``Probe``); llama.cpp's
``logits_all`` mode, which keeps the logits of every position, is never turned on.  ``TokenTexts``
fits the sampled tokens to the text the stream showed.
"""

from __future__ import annotations

import codecs
import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .._shapes import Request
from .._tokens import Alternative, Token

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

_log = logging.getLogger("granite_magic.local")


class Probe:
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
    def attach(cls, llm: Any, request: Request, arguments: dict[str, Any]) -> Probe | None:
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
