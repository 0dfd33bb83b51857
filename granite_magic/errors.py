"""Typed exceptions whose messages tell a person what happened and what to do.

Every error raised after a request started carries ``result``: the partial
reply received so far, so nothing the model said is lost.  Messages never hold
the API key: they are built from status codes and the API's own error text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .result import Result

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ConnectionDroppedError",
    "GenerationInterrupted",
    "GraniteError",
    "InsufficientCreditsError",
    "InvalidParameterError",
    "MissingKeyError",
    "ModelNotFoundError",
    "ModerationError",
    "RateLimitError",
    "ServerError",
    "StallError",
    "StreamError",
]

KEY_HELP = (
    "Set the OPENROUTER_API_KEY environment variable, run `%granite key` in the notebook, "
    "or pass api_key= to the client. Keys are at https://openrouter.ai/keys."
)
LOCAL_HELP = "Or run Granite on this machine without a key: pip install 'granite-magic[local]' (then --backend local)."


class GraniteError(Exception):
    """Base class; ``result`` holds the partial reply when a request had started."""

    def __init__(self, message: str, *, result: Result | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.result = result

    @property
    def partial_text(self) -> str:
        return self.result.text if self.result is not None else ""


class InvalidParameterError(GraniteError, ValueError):
    """A parameter value was refused before anything was sent."""


class MissingKeyError(GraniteError):
    def __init__(self) -> None:
        super().__init__(f"No OpenRouter API key is set. {KEY_HELP} {LOCAL_HELP}")


class APIError(GraniteError):
    """The API answered with an error status or an error event."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: Any = None,
        metadata: dict[str, Any] | None = None,
        result: Result | None = None,
    ) -> None:
        super().__init__(message, result=result)
        self.status = status
        self.code = code
        self.metadata = metadata or {}


class BadRequestError(APIError):
    """400: the API's own message says which parameter or limit was wrong."""


class AuthenticationError(APIError):
    """401: the key is missing, invalid or disabled."""


class InsufficientCreditsError(APIError):
    """402: not enough credits, or the key's spending limit was reached."""


class ModerationError(APIError):
    """403: the input was flagged by moderation or a guardrail."""


class ModelNotFoundError(APIError):
    """404: no endpoint serves this model id."""


class RateLimitError(APIError):
    """429 after every retry was used."""


class ServerError(APIError):
    """408 or 5xx after every retry was used."""


class StreamError(APIError):
    """The provider sent an error event after the reply had started."""


class ConnectionDroppedError(GraniteError):
    """The connection failed or closed before the reply was complete."""


class StallError(GraniteError):
    """No bytes arrived for longer than the read timeout."""


class GenerationInterrupted(KeyboardInterrupt):
    """The user interrupted a blocking call; ``result`` holds the partial reply.

    A KeyboardInterrupt subclass so that code which does not look for it still
    stops the way an interrupt should.
    """

    def __init__(self, result: Result) -> None:
        super().__init__("interrupted; the partial reply is in .result")
        self.result = result
