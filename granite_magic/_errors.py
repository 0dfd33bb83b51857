"""Typed exceptions that state what happened, and the mapping from HTTP statuses to them.

Errors carry facts (``status``, ``code``, ``model``, ``kind``) and the partial
reply (``result``); what a person should do next depends on where they are (a
notebook cell, the panel, a script), so the front ends phrase that advice
(``_advice``).  Messages never hold the API key: server-provided text is passed
through ``redact`` before it becomes part of a message.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ._result import Result

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ConnectionDroppedError",
    "DeadlineError",
    "GenerationInterrupted",
    "GraniteError",
    "InsufficientCreditsError",
    "InvalidParameterError",
    "MissingKeyError",
    "ModelNotFoundError",
    "ModerationError",
    "ProtocolError",
    "RateLimitError",
    "ServerError",
    "StallError",
    "StreamClosedError",
    "StreamError",
]


class GraniteError(Exception):
    """Base class; ``result`` holds the partial reply when a request had started.

    ``message`` states what happened, in the Python API's words: a parameter it names is written ``name=value``,
    and ``names`` lists those names, so that each front end can spell them its own way (``--max-steps 99`` in a
    cell).  ``str()`` adds ``hint``, what a Python caller can do; the magic and the panel add their own advice.
    """

    kind: ClassVar[str] = "error"  # a stable name for what went wrong, for front ends and logs
    hint: ClassVar[str] = ""  # what to do, in the Python API's words

    def __init__(self, message: str, *, result: Result | None = None, model: str | None = None,
                 names: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.result = result
        self.model = model
        self.names = names

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message

    @property
    def partial_text(self) -> str:
        return self.result.text if self.result is not None else ""


class InvalidParameterError(GraniteError, ValueError):
    """A value was refused before anything was sent."""

    kind = "invalid"


_GIVE_A_KEY = "Give one with GraniteClient(api_key=...) or the OPENROUTER_API_KEY environment variable (https://openrouter.ai/keys)."


class MissingKeyError(GraniteError):
    kind = "missing_key"
    hint = _GIVE_A_KEY

    def __init__(self) -> None:
        super().__init__("No OpenRouter API key is set.")


class APIError(GraniteError):
    """The API answered with an error status or an error event."""

    kind = "api"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: Any = None,
        metadata: dict[str, Any] | None = None,
        result: Result | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(message, result=result, model=model)
        self.status = status
        self.code = code
        self.metadata = metadata or {}


class BadRequestError(APIError):
    """400 or 413: the API's own message says which parameter or limit was wrong."""

    kind = "bad_request"


class AuthenticationError(APIError):
    """401: the key is missing, invalid or disabled."""

    kind = "auth"
    hint = _GIVE_A_KEY


class InsufficientCreditsError(APIError):
    """402: not enough credits, or the key's spending limit was reached."""

    kind = "credits"


class ModerationError(APIError):
    """403: the input was flagged by moderation or a guardrail."""

    kind = "moderation"


class ModelNotFoundError(APIError):
    """404: no endpoint serves this model id."""

    kind = "model_not_found"


class RateLimitError(APIError):
    """429 after every retry was used."""

    kind = "rate_limit"


class ServerError(APIError):
    """408 or 5xx after every retry was used."""

    kind = "server"


class StreamError(APIError):
    """The provider sent an error event in the stream."""

    kind = "stream"


class ConnectionDroppedError(GraniteError):
    """The connection failed or closed before the reply was complete."""

    kind = "dropped"


class StreamClosedError(ConnectionDroppedError):
    """The server ended the stream (cleanly, perhaps with its end marker) before the reply's finish reason."""


class StallError(GraniteError):
    """No new event arrived for longer than the read timeout."""

    kind = "stall"


class DeadlineError(GraniteError):
    """The reply took longer than the overall time limit (``timeout_s``)."""

    kind = "deadline"


class ProtocolError(GraniteError):
    """The server answered with something that is not a reply of the expected shape."""

    kind = "protocol"


class GenerationInterrupted(KeyboardInterrupt):
    """The user interrupted a blocking call; ``result`` holds the partial reply.

    A KeyboardInterrupt subclass so that code which does not look for it still
    stops the way an interrupt should.
    """

    def __init__(self, result: Result) -> None:
        super().__init__("interrupted; the partial reply is in .result")
        self.result = result


# Statuses (and error codes in a stream's first event) that mean "try again": nothing was generated.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 524, 529})
TRANSIENT_CODES = frozenset({"server_error", "rate_limit_exceeded", "overloaded", "overloaded_error", "api_error",
                             "rate_limit_error", "timeout_error", "too_many_requests"})


def is_transient(code: Any) -> bool:
    """Whether an error code (an HTTP status, or a provider's word) means "try again"."""
    if isinstance(code, int):
        return code in RETRYABLE_STATUS
    return isinstance(code, str) and code in TRANSIENT_CODES


# --- keeping the key out of messages ---------------------------------------------------

REDACTED = "[redacted]"
# compiled on first use (re caches it), not when the extension loads
_KEY_SHAPES = r"(?i)\bbearer\s+\S+|\bsk-or-[\w-]+|\bsk-[A-Za-z0-9_-]{16,}"


def shown_path(path: Path | str) -> str:
    """``path`` as a message shows it: relative to the working directory when inside it, so that a saved
    notebook does not carry its author's directories; else with ``~`` for the home directory."""
    path = Path(path)
    try:  # the folder resolved, the name kept: a link is named as itself, not as what it points to (or loops to)
        relative = (path.parent.resolve() / path.name).relative_to(Path.cwd().resolve())
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a folder on the way is a link that loops
        try:
            return str(Path("~") / path.relative_to(Path.home()))
        except (ValueError, RuntimeError):  # RuntimeError: no home directory to be found
            return str(path)
    return "the working directory" if relative == Path() else str(relative)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the known secrets or anything shaped like a bearer token or an API key."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return re.sub(_KEY_SHAPES, REDACTED, text)


def redact_all(value: Any, secrets: Iterable[str] = ()) -> Any:
    """``value`` (parsed JSON) with every string, keys too, redacted: what a server sent may echo the key."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, list):
        return [redact_all(item, secrets) for item in value]
    if isinstance(value, dict):
        return {redact(str(k), secrets): redact_all(v, secrets) for k, v in value.items()}
    return value


class StreamRedactor:
    """The known secrets taken out of text that arrives in pieces, a secret split across pieces included.

    ``text(piece)`` is what may be shown of the text so far.  A tail that could be the start of a secret (at least
    ``HOLD_FROM`` of its characters) waits for the next piece, which says whether it is; a secret that began in
    the last ``HOLD_FROM - 1`` characters shown has its rest replaced.  So no secret is ever shown whole, and at
    most its first ``HOLD_FROM - 1`` characters are (``sk-`` of an OpenRouter key, which every key shares).
    ``flush()`` ends the text: what is still held is the start of a secret, and is replaced.  Only the known
    secrets are looked for: a reply may well talk about bearer tokens.
    """

    HOLD_FROM = 4

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
        self._held = ""  # not shown yet: it may be the start of a secret
        self._tail = ""  # the last characters shown, where a secret may have begun
        self.touched = False  # a secret (or what may be its start) has been in the text: its tokens are not to be kept

    def text(self, piece: str) -> str:
        if not self._secrets:
            return piece
        if not self._held and not any(secret[: self.HOLD_FROM] in self._tail + piece for secret in self._secrets):
            # Nearly every delta: no secret's first HOLD_FROM characters in sight, so nothing to replace or hold.
            self._tail = (self._tail + piece)[-(self.HOLD_FROM - 1) :]
            return piece
        text = self._held + piece
        for secret in self._secrets:
            replaced = _replace_continuing(self._tail, text, secret)
            self.touched = self.touched or replaced != text
            text = replaced
        window = self._tail + text
        held = min(len(text), max(_secret_start(window, secret, self.HOLD_FROM) for secret in self._secrets))
        shown, self._held = text[: len(text) - held], text[len(text) - held :]
        self.touched = self.touched or bool(self._held)
        self._tail = (self._tail + shown)[-(self.HOLD_FROM - 1) :]
        return shown

    def flush(self) -> str:
        held, self._held = self._held, ""
        return REDACTED if held else ""


def _replace_continuing(tail: str, text: str, secret: str) -> str:
    """``text`` with each ``secret`` in ``tail + text`` replaced: a whole one by ``REDACTED``, and one that began in
    ``tail`` (shown already) by ``REDACTED`` in place of its rest."""
    window, offset = tail + text, len(tail)
    parts, shown_to = [], offset
    found = window.find(secret)
    while found >= 0:
        end = found + len(secret)
        if end > offset:
            parts += [window[shown_to : max(found, offset)], REDACTED]
            shown_to = end
        found = window.find(secret, end)
    return "".join([*parts, window[shown_to:]]) if parts else text


def _secret_start(window: str, secret: str, least: int) -> int:
    """The length of the longest end of ``window`` that ``secret`` starts with (at least ``least``), else 0."""
    at = window.find(secret[0], max(0, len(window) - len(secret) + 1))
    while at >= 0:
        if len(window) - at >= least and secret.startswith(window[at:]):
            return len(window) - at
        at = window.find(secret[0], at + 1)
    return 0


# --- HTTP statuses -----------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # rare: only servers that send an HTTP date

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


_SAID_CHARS = 300  # the most of a server's own words that a message quotes
_PAGE_CHARS = 120  # of a web page's text: a proxy's or a gateway's error page says what it is in its first words
_MARKUP = re.compile(r"(?is)<!--.*?(?:-->|$)|<(script|style|head)\b.*?(?:</\1\s*>|$)|<[^>]*>?")
_TITLE = re.compile(r"(?is)<title\b[^>]*>(.*?)</title")


def _page_text(text: str) -> str:
    """What a person reads on an HTML error page: its title, else its text without markup, comments or scripts."""
    import html

    title = _TITLE.search(text)
    words = title.group(1) if title and title.group(1).strip() else _MARKUP.sub(" ", text)
    words = " ".join(html.unescape(words).split())
    return words if len(words) <= _PAGE_CHARS else words[: _PAGE_CHARS - 1] + "…"


def _body_words(body: bytes) -> str | None:
    """A body that is not JSON, as words for a message: a web page's title or text, else the start of the text."""
    text = body[: 1 << 16].decode("utf-8", errors="replace").strip()  # an error page says what it is early on
    if text.startswith("<") or re.match(r"(?is)\s*<!doctype|.{0,200}<html", text):
        text = _page_text(text)
    text = " ".join(text.split())
    return (text if len(text) <= _SAID_CHARS else text[: _SAID_CHARS - 1] + "…") or None


def parse_error_body(body: bytes) -> tuple[str | None, Any, dict[str, Any]]:
    """(message, code, metadata) from an error body; tolerant of any body at all."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return _body_words(body), None, {}
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):
        return error[:300], None, {}
    if not isinstance(error, dict):
        return None, None, {}
    metadata = error.get("metadata")
    message = error.get("message")
    return (str(message)[:300] if message else None), error.get("code"), (metadata if isinstance(metadata, dict) else {})


_STATUS_ERRORS: dict[int, tuple[type[APIError], str]] = {
    400: (BadRequestError, "The request was refused (HTTP 400)."),
    401: (AuthenticationError, "The API key was refused (HTTP 401): it is missing, invalid or disabled."),
    402: (InsufficientCreditsError, "Not enough credits, or the key's spending limit was reached (HTTP 402)."),
    403: (ModerationError, "The input was refused by moderation (HTTP 403)."),
    404: (ModelNotFoundError, "No provider serves the model {model!r} (HTTP 404)."),
    408: (ServerError, "The request timed out at the provider (HTTP 408)."),
    413: (BadRequestError, "The request is too large (HTTP 413)."),
    429: (RateLimitError, "Rate limited (HTTP 429)."),
}


def error_for_status(status: int, body: bytes, *, model: str, secrets: Iterable[str] = ()) -> APIError:
    """The typed exception for a non-200 response, with the API's own words (redacted) appended."""
    api_message, code, metadata = parse_error_body(body)
    said = f" The API said: {redact(api_message, secrets)}" if api_message else ""
    kind, message = _STATUS_ERRORS.get(status, (ServerError if status >= 500 else APIError, f"The API answered HTTP {status}."))
    if status >= 500 and status not in _STATUS_ERRORS:
        message = f"The model's provider failed (HTTP {status})."
    if status == 403 and metadata.get("reasons"):
        reasons = metadata["reasons"]
        said += f" Flagged for: {', '.join(map(str, reasons if isinstance(reasons, list) else [reasons]))}."
    return kind(f"{message.format(model=model)}{said}", status=status, code=code, metadata=metadata, model=model)
