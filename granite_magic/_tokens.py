"""Generated tokens and the alternatives the model considered: what ``--probs`` returns."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["Alternative", "ProbsKind", "Token"]

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
    """One generated token: its text, its log probability, and the alternatives (most likely first)."""

    text: str
    logprob: float
    top: tuple[Alternative, ...] = ()

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)


