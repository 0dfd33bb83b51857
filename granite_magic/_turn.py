"""A turn as a front end describes it, and the target it goes to once resolved.

A ``Turn`` holds values already validated (its sampling by ``Sampling``, its target fields here); ``None`` fields
take the session's settings.  ``Session.resolve`` turns it into a ``Target``, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _errors as errors
from ._client import BaseClient
from ._context import Document
from ._params import Sampling
from ._settings import Backend, check_backend, check_base_url, check_cache_mode
from ._shapes import Api, Request, shape
from ._vocab import PACES, SCHEMA_MODES, CacheMode, Pace, SchemaMode

if TYPE_CHECKING:
    from ._spec import OutputSchema

__all__ = ["Target", "Turn", "new_turn"]


@dataclass(frozen=True)
class Turn:
    """One request as a front end describes it; ``None`` fields take the session's settings."""

    prompt: str
    system: str | None = None
    model: str | None = None
    base_url: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    chat: str | None = None  # the conversation to continue, or None for a stateless turn
    backend: Backend | None = None
    api: Api | None = None
    timeout_s: float | None = None  # an overall limit on the reply (HTTP backend)
    context: str | None = None  # what --context and --cell point at: sent on the system side, after the system prompt
    documents: tuple[Document, ...] = ()  # --docs: in the chat template's documents slot (local) or the system message
    prefix: str | None = None  # the start of the assistant's reply, to be continued (a branch of the sampling lens)
    cache: CacheMode | None = None  # --cache: off, auto, record or replay (None: the session's setting)
    pace: Pace = "instant"  # --pace original: a replay streams at the recorded pace
    verify: bool = False  # --verify: run live and compare with the recording
    strict: bool | None = None  # --strict: only providers that honour every parameter (None: the session's setting)
    template: str | None = None  # --template: the local model's chat format name, "plain", or a Jinja file
    raw: bool = False  # --raw: the prompt is continued as written (a completion: no turns, no template, no framing)
    schema: OutputSchema | None = None  # --schema: the reply is JSON of this schema, validated (and repaired once)
    schema_mode: SchemaMode = "auto"  # --schema-mode: the backend's best method, or one named

    def __post_init__(self) -> None:
        if self.backend is not None:
            check_backend(self.backend)
        if self.api is not None:
            shape(self.api)
        if self.base_url is not None:
            object.__setattr__(self, "base_url", check_base_url(self.base_url))
        if self.cache is not None and check_cache_mode(self.cache) == "replay" and self.verify:
            raise errors.InvalidParameterError("verify=True runs live and cache='replay' never does: use one of them",
                                               names=("verify", "cache"))
        if self.schema_mode not in SCHEMA_MODES:
            raise errors.InvalidParameterError(f"schema_mode={self.schema_mode!r} is invalid: must be one of {', '.join(SCHEMA_MODES)}",
                                               names=("schema_mode",))
        if self.schema_mode != "auto" and self.schema is None:
            raise errors.InvalidParameterError("schema_mode= says how a schema= is obtained: give the schema too",
                                               names=("schema_mode", "schema"))
        if self.pace not in PACES:
            raise errors.InvalidParameterError(f"pace={self.pace!r} is invalid: must be one of {', '.join(PACES)}", names=("pace",))
        if self.raw:
            _check_raw(self)


# What a raw completion cannot take: each is a part of a chat turn, which a raw prompt does not have.
_NOT_RAW = {"system": "a system prompt", "chat": "a conversation", "context": "a context block",
            "documents": "documents", "template": "a chat template", "api": "a chat API format",
            "schema": "a schema (told in the system message)"}


def _check_raw(turn: Turn) -> None:
    """``raw=True`` with a part of a chat turn is refused, naming it, before anything is sent."""
    for name, what in _NOT_RAW.items():
        value = getattr(turn, name)
        if value not in (None, ()) and not (name == "api" and value == "chat"):
            spelled = "docs" if name == "documents" else name
            raise errors.InvalidParameterError(f"raw=True continues the prompt as written, with no chat turn, so {what} cannot "
                                               f"go with it: leave out {spelled}= or raw=True", names=("raw", spelled))


@dataclass(frozen=True)
class Target:
    """Where a turn goes, decided once: the client (which says what its backend can do), the model and the API shape."""

    client: BaseClient
    model: str
    api: Api

    @property
    def label(self) -> str:
        """The model as a status line names it (the client says when it runs locally)."""
        return self.client.label(self.model)

    def label_for(self, request: Request) -> str:
        """The model as a status line names it for ``request`` (a raw completion says so)."""
        return self.client.label(self.model, raw=request.raw)


def new_turn(prompt: str, params: Mapping[str, Any], **target: Any) -> Turn:
    """A turn from keyword arguments (the Python API's edge): sampling validated here, once."""
    return Turn(prompt=prompt, sampling=Sampling(params), **target)
