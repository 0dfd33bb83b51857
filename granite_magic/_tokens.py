"""Generated tokens and the alternatives the model considered: what ``--probs`` returns.

A reply's tokens spell its text exactly.  Text the server gave no usable probability for (a chunk without
``logprobs``, an entry with a NaN, an infinity or a string for its log probability) is a token too, with a
NaN log probability and no alternatives (``Token.known`` is False), so nothing of the reply goes missing
from the views built on the tokens.  ``align`` and ``spelled`` put tokens against the text they came with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["Alternative", "ProbsKind", "Token", "align", "at_most", "spelled", "unknown"]

# Where token probabilities come from: the model's own distribution before any sampler ("raw", the local
# backend), or whatever the server reports ("server": llama.cpp's server after its samplers, vLLM and OpenAI raw).
ProbsKind = Literal["raw", "server"]


@dataclass(frozen=True, slots=True)
class Alternative:
    """A token the model considered at one step, with its log probability."""

    text: str
    logprob: float

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)


@dataclass(frozen=True, slots=True)
class Token:
    """One generated token: its text, its log probability, and the alternatives (most likely first).

    A NaN ``logprob`` marks text the server gave no usable probability for (``known`` is False)."""

    text: str
    logprob: float
    top: tuple[Alternative, ...] = ()

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)

    @property
    def known(self) -> bool:
        """False for text that came with no usable probability: ``logprob`` and ``prob`` are NaN, ``top`` empty."""
        return not math.isnan(self.logprob)


def unknown(text: str) -> Token:
    """Text with no probability, as a token."""
    return Token(text, math.nan)


def at_most(token: Token, k: int) -> Token:
    """``token`` with its ``k`` most likely alternatives, plus its own when that is not among them.

    ``top`` is most likely first, so this keeps a prefix (and at most one more)."""
    if len(token.top) <= k:
        return token
    kept = token.top[:k]
    if all(alt.text != token.text for alt in kept):
        kept += tuple(alt for alt in token.top[k:] if alt.text == token.text)[:1]
    return replace(token, top=kept)


# A token whose text is nowhere in what is left (half a UTF-8 character, a special token) takes the text up
# to where one of the next few tokens' texts is found; looking further would make a hostile chunk quadratic.
_LOOKAHEAD = 4


def align(tokens: Sequence[Token], text: str) -> tuple[list[Token], int]:
    """The tokens laid over ``text`` from its start, and how much of ``text`` they cover.

    Each token keeps its own text where that comes next; text skipped to reach it becomes an ``unknown``
    token.  A token whose text does not come at all takes the text up to where one of the next tokens'
    does (all of it, if none does).  Tokens with no text and no probability are left out.  Linear in
    the text: every search starts where the last one ended and what it passes over is consumed.
    """
    out: list[Token] = []
    at = 0
    for i, token in enumerate(tokens):
        own = token.text
        if text.startswith(own, at):
            end = at + len(own)
        elif own and (found := text.find(own, at)) >= 0:
            out.append(unknown(text[at:found]))
            at, end = found, found + len(own)
        else:
            end = _next_found(tokens[i + 1 : i + 1 + _LOOKAHEAD], text, at)
            token = replace(token, text=text[at:end])
        if token.text or token.known:
            out.append(token)
        at = end
    return out, at


def _next_found(following: Sequence[Token], text: str, at: int) -> int:
    for token in following:
        if token.text and (found := text.find(token.text, at)) >= 0:
            return found
    return len(text)


def spelled(tokens: Sequence[Token], text: str) -> list[Token]:
    """Tokens whose texts join to exactly ``text``: ``align``, and what no token covers as ``unknown``.

    Unchanged when they already do; no tokens stay no tokens (a reply without probabilities)."""
    if not tokens or "".join(t.text for t in tokens) == text:
        return list(tokens)
    out, at = align(tokens, text)
    if at < len(text):
        out.append(unknown(text[at:]))
    return out


