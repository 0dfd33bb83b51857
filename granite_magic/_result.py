"""The result of one generation: useful on its own, printable, serialisable."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from ._tokens import Alternative, ProbsKind, Token

__all__ = ["Alternative", "Ended", "ProbsKind", "Result", "Token", "ToolCall", "Usage", "json_ready", "plain_value"]

# How a reply ended: every token arrived, the user stopped it, or something failed.
Ended = Literal["complete", "interrupted", "failed"]

@dataclass(slots=True)  # slots: a map keeps one per row
class Usage:
    prompt_tokens: int | None = None  # the whole prompt, cached part included
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost: float | None = None  # USD (OpenRouter credits); None when the server does not say
    cached_tokens: int | None = None  # of prompt_tokens, read from a provider's prompt cache
    reasoning_tokens: int | None = None


@dataclass
class ToolCall:
    """A tool call the model asked for and, once the tool loop ran it, what became of it."""

    name: str
    arguments: dict[str, Any] | None  # as the model sent them; None when they were not a JSON object
    id: str | None = None
    raw_arguments: str = ""  # the JSON text, joined from the streamed fragments
    result: Any = None  # the function's return value
    error: str | None = None  # why the call was refused, declined, or what it raised
    duration_s: float | None = None
    ran: bool = False


@dataclass(slots=True)  # slots: a map keeps one per row
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
    cached: bool = False  # replayed from a recording: nothing was sent, nothing billed
    value: Any = None  # what a format extracted: the code for -f code, the parsed object for -f json
    # --schema: how the shape was obtained (grammar, provider, prompted), the requests it took (a repair is the second),
    # and what was still wrong with the last reply (empty: ``value`` is the validated object)
    schema_method: str | None = None
    schema_attempts: int = 0
    schema_errors: list[str] = field(default_factory=list)

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
        """Plain JSON-ready data: what the notebook stores as output metadata.

        Never raises.  A tool call is kept as a bounded preview (``saved``): its result as JSON when that is at
        most 2,000 characters, else as text saying how much was cut, and its arguments likewise; the
        ``Result`` itself keeps every value whole.  No tool result is copied (a tool may return anything:
        a generator, a list that contains itself, an object whose repr raises).
        """
        data = asdict(replace(self, tool_calls=[]))
        data["params"] = json_ready(self.params)
        data["tool_calls"] = [_saved_call(call) for call in self.tool_calls]
        data["tokens"] = [_saved_token(token) for token in data["tokens"]]
        data["partial"] = self.partial
        data["tokens_per_s"] = self.tokens_per_s
        data["cost"] = self.cost
        data["value"] = plain_value(self.value)  # an instance of the user's class is saved as the JSON it came from
        return data

    def __repr__(self) -> str:
        preview = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        state = self.ended if self.partial else (self.finish_reason or "unfinished")
        return f"<Result {state} model={self.model!r} tokens={self.completion_tokens} text={preview!r}>"

    def __str__(self) -> str:
        return self.text

    # --- the sampling lens (with --probs) ------------------------------------------------

    def resample(self, temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None) -> list[dict[str, float]]:
        """Per step, ``{token: probability}`` over that step's alternatives after these samplers, applied
        in llama.cpp's order (top-k, top-p, min-p, then temperature); no request is sent."""
        from ._lens import resample

        return resample(self.tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)

    def tokens_frame(self) -> Any:
        """One row per generated token (step, token, logprob, prob, rank, entropy, alternatives): a pandas DataFrame."""
        from ._lens import tokens_frame

        return tokens_frame(self.tokens)

    def lens(self) -> Any:
        """The interactive view: the shaded reply, sampler sliders, the entropy strip and each step's distribution."""
        from ._lens import lens_view

        return lens_view(self.tokens, self.probs_kind)

    def _repr_markdown_(self) -> str:
        from ._markdown import safe_markdown

        return safe_markdown(self.text)


_PREVIEWED = frozenset({"arguments", "raw_arguments", "result", "error"})  # what a tool or a model made: any size


def _saved_call(call: ToolCall) -> dict[str, Any]:
    from ._values import saved

    return {f.name: saved(value) if f.name in _PREVIEWED else value for f in fields(call) for value in (getattr(call, f.name),)}


def _saved_token(token: dict[str, Any]) -> dict[str, Any]:
    """A token as JSON holds it: a log probability that is not a number (text with no probability) is null,
    since JSON has no NaN and a notebook front end refuses one."""
    for item in (token, *token["top"]):
        if not math.isfinite(item["logprob"]):
            item["logprob"] = None
    return token


def plain_value(value: Any) -> Any:
    """A value as JSON holds it: a pydantic model by its own dump, a dataclass as a dict, anything else as it is."""
    if hasattr(value, "model_dump") and not isinstance(value, type):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def json_ready(values: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as JSON holds them: ``logit_bias`` keys are token ids (ints) here and strings in JSON."""
    return {name: ({str(k): v for k, v in value.items()} if isinstance(value, Mapping) else value) for name, value in values.items()}
