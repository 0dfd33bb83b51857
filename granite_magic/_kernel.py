"""Which session belongs to which IPython shell: the magic registers its own; the panel and the
Python API share it when the extension is loaded (and use the API's shared session otherwise)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["forget", "remember", "session_for"]

_sessions: dict[int, Callable[[], Session]] = {}


def remember(shell: Any, session: Callable[[], Session]) -> None:
    _sessions[id(shell)] = session


def forget(shell: Any) -> None:
    _sessions.pop(id(shell), None)


def session_for(shell: Any) -> Session | None:
    """The magic's session in ``shell`` (created on first use), or None when the extension is not loaded there."""
    session = _sessions.get(id(shell)) if shell is not None else None
    return None if session is None else session()
