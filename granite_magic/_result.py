"""The result of one generation: useful on its own, printable, serialisable."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ._params import json_ready

__all__ = ["Alternative", "Ended", "ProbsKind", "Result", "Token", "ToolCall", "Usage"]

# How a reply ended: every token arrived, the user stopped it, or something failed.
Ended = Literal["complete", "interrupted", "failed"]

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


@dataclass
class Usage:
    prompt_tokens: int | None = None  # the whole prompt, cached part included
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost: float | None = None  # USD (OpenRouter credits); None when the server does not say
    cached_tokens: int | None = None  # of prompt_tokens, read from a provider's prompt cache
    reasoning_tokens: int | None = None


@dataclass
class ToolCall:
    index: int
    id: str | None = None
    name: str = ""
    arguments: str = ""  # JSON text, concatenated from the streamed fragments


@dataclass
class Result:
    """A finished (or partial) reply and everything known about how it was made."""

    text: str = ""
    finish_reason: str | None = None
    native_finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    provider: str | None = None
    generation_id: str | None = None
    ttft_s: float | None = None
    duration_s: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    ended: Ended = "complete"
    tool_calls: list[ToolCall] = field(default_factory=list)
    chunks: int = 0  # text deltas received: a token estimate when usage is missing
    tokens: list[Token] = field(default_factory=list)  # with --probs: one per generated token, "".join(texts) == text
    probs_kind: ProbsKind | None = None
    value: Any = None  # what a format extracted: the code for -f code, the parsed object for -f json

    @property
    def partial(self) -> bool:
        """The reply is not whole: it was interrupted or failed part way."""
        return self.ended != "complete"

    @property
    def cost(self) -> float | None:
        return self.usage.cost

    @property
    def seed(self) -> int | None:
        seed = self.params.get("seed")
        return seed if isinstance(seed, int) else None

    @property
    def completion_tokens(self) -> int:
        """Tokens generated: the server's count, else the number of text deltas."""
        return self.usage.completion_tokens if self.usage.completion_tokens is not None else self.chunks

    @property
    def tokens_per_s(self) -> float | None:
        """Generation speed after the first token (what the model, not the queue, did)."""
        if self.duration_s is None or self.ttft_s is None:
            return None
        generating = self.duration_s - self.ttft_s
        tokens = self.completion_tokens
        if generating <= 0 or tokens <= 1:
            return None
        return (tokens - 1) / generating

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: what the notebook stores as output metadata."""
        data = asdict(self)
        data["params"] = json_ready(self.params)
        data["partial"] = self.partial
        data["tokens_per_s"] = self.tokens_per_s
        data["cost"] = self.cost
        return data

    def __repr__(self) -> str:
        preview = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        state = self.ended if self.partial else (self.finish_reason or "unfinished")
        return f"<Result {state} model={self.model!r} tokens={self.completion_tokens} text={preview!r}>"

    def __str__(self) -> str:
        return self.text

    def _repr_markdown_(self) -> str:
        from ._markdown import safe_markdown

        return safe_markdown(self.text)
