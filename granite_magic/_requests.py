"""What a turn sends: its messages (the conversation so far, the system side, the context) and the
``Request`` for one target, and whether a long prompt fits the model's listed context.

The session keeps the conversations; this module turns a ``Turn`` and a conversation into the one
``Request`` that is sent, shown by ``--dry-run`` and keyed by the cache.  A request-level feature (a
structured-output schema, say) is a ``Request`` field set here and spelled by each client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _errors as errors
from ._context import documents_block, granite_documents
from ._shapes import Request, build_messages
from ._structured import structured_request
from ._vocab import SchemaMethod

if TYPE_CHECKING:
    from ._params import Sampling
    from ._turn import Target, Turn

__all__ = ["LONG_PROMPT_CHARS", "Conversation", "build_request", "check_context", "turn_messages"]

# Prompts shorter than this (about 8k tokens) fit every context there is: their size is not checked against a listing.
LONG_PROMPT_CHARS = 32_000


@dataclass
class Conversation:
    """A named conversation: its system prompt and the messages of its complete turns."""

    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)


def turn_messages(turn: Turn, conversation: Conversation, *, documents_apart: bool = False) -> tuple[dict[str, Any], ...]:
    """The messages of ``turn`` after ``conversation``: the system side (system prompt, then the context, then the
    documents unless they go ``apart``), the history, the prompt, and an assistant prefix to continue."""
    system = turn.system if turn.system is not None else conversation.system
    # the context is data about this turn, not an instruction: it follows the system prompt and is not remembered
    documents = documents_block(turn.documents) if turn.documents and not documents_apart else None
    system = "\n\n".join(part for part in (system, turn.context, documents) if part) or None
    messages = build_messages(turn.prompt, system=system, history=conversation.messages)
    if turn.prefix:  # an assistant message last: the model continues it rather than starting a new reply
        messages = (*messages, {"role": "assistant", "content": turn.prefix})
    return messages


def build_request(turn: Turn, target: Target, conversation: Conversation, *, strict: bool,
                  extra: Sampling | None = None, schema_method: SchemaMethod = "prompted") -> Request:
    """What goes to ``target`` for ``turn``: documents in the chat template's slot when the client has one, else in
    the system message; the client's routing for ``strict``; ``extra`` sampling over the turn's (a column's); a
    ``--schema`` in the system message and asked for by ``schema_method``."""
    sampling = target.client.with_default_length(turn.sampling | extra if extra is not None else turn.sampling, raw=turn.raw)
    if turn.raw:  # the text as written, and a branch's prefix after it (a raw prompt's reply continues it directly)
        prompt = turn.prompt + (turn.prefix or "")
        _refuse_secrets(turn, (), target.client.secrets())
        return Request(target.model, (), sampling, prompt=_raw_prompt(target, prompt), extra=target.client.routing(strict=strict))
    apart = target.client.documents_in_template
    documents = tuple(granite_documents(turn.documents)) if apart else ()
    messages = turn_messages(turn, conversation, documents_apart=apart)
    _refuse_secrets(turn, messages, target.client.secrets())
    request = Request(target.model, messages, sampling, documents=documents, extra=target.client.routing(strict=strict))
    return structured_request(request, turn.schema, schema_method) if turn.schema is not None else request


def _raw_prompt(target: Target, prompt: str) -> str:
    if not target.client.completes_raw:
        raise errors.InvalidParameterError(f"raw=True needs a completions endpoint, and {target.label} has none", names=("raw",))
    return prompt


def _refuse_secrets(turn: Turn, messages: tuple[dict[str, Any], ...], secrets: tuple[str, ...]) -> None:
    """Nothing that holds the API key goes to the provider: a document that holds it is named, and so is the part of
    the prompt (a ``{name}`` or ``--context`` variable, an earlier turn) that does."""
    secrets = tuple(secret for secret in secrets if secret)
    if not secrets:
        return
    for document in turn.documents:
        if any(secret in document.text for secret in secrets):
            raise errors.InvalidParameterError(f"Cannot attach {document.name}: it holds the API key, which would go to the "
                                               "provider with it; take the key out of the file or attach another one")
    parts = {"the prompt": [turn.prompt, turn.prefix or ""], "the system prompt": [turn.system or ""],
             "the --context block": [turn.context or ""], "the conversation so far": [str(m.get("content", "")) for m in messages]}
    for where, texts in parts.items():
        if any(secret in text for text in texts for secret in secrets):
            raise errors.InvalidParameterError(f"{where} holds the API key, which would go to the provider: take it out")


def check_context(target: Target, request: Request) -> None:
    """Refuse, with the numbers, a prompt that cannot fit the model's listed context.  A client that counts tokens
    refuses on its own, exactly; elsewhere only long prompts ask the listing, so short ones never wait for it."""
    if target.client.counts_prompt_tokens:
        return
    characters = sum(map(len, request.texts))
    if characters < LONG_PROMPT_CHARS:
        return
    info = target.client.loop.run(target.client.listing(target.model))
    if info is None or not info.context_length:
        return
    estimate = characters // 4
    output = request.sampling.get("max_tokens")
    if estimate + (output or 0) > info.context_length:
        asked = f" and max_tokens {output:,}" if output else ""  # only a limit that was set is named
        raise errors.InvalidParameterError(
            f"the prompt is about {estimate:,} tokens (an estimate: 4 characters a token){asked}: "
            f"more than {target.model}'s {info.context_length:,}-token context")
