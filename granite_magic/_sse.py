"""Server-Sent Events without I/O: bytes in, ``ServerSentEvent`` out.

``SSEDecoder`` follows the WHATWG parsing rules; ``SSEStreamDecoder`` is the
base of every API shape's decoder (``_shapes``), which says what each event means.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ._errors import ProtocolError

__all__ = ["MAX_EVENT_BYTES", "SSEDecoder", "SSEStreamDecoder", "ServerSentEvent"]

# One event (one token, or one whole reply sent as a single chunk) may be this large.
# Far above any real chunk (a 10 MB reply in one event still fits); a server that
# never ends a line is stopped here instead of growing memory without bound.
MAX_EVENT_BYTES = 16 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental SSE parser fed with raw bytes from any read size.

    Comment lines (``: OPENROUTER PROCESSING``) are skipped, ``\\n``, ``\\r\\n``
    and ``\\r`` all end a line, and multi-line ``data:`` fields are joined with
    ``\\n``.  Lines are split as bytes and decoded one at a time: CR and LF never
    occur inside a multi-byte UTF-8 sequence, so a character split across two
    reads is always whole by the time its line is complete.  An unfinished line
    is kept as a list of pieces and joined once, when it ends: a server that
    sends megabytes without a newline costs linear time, and at most
    ``max_event_bytes`` of memory before ``ProtocolError``.
    """

    def __init__(self, *, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._pending: list[bytes] = []  # pieces of an unfinished line
        self._pending_size = 0
        self._skip_lf = False  # the last read ended in CR: a leading LF completes CRLF
        self._at_start = True  # one leading byte-order mark is dropped (the spec says so)
        self._data: list[str] = []
        self._data_size = 0
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        if not chunk:
            return []
        if self._pending:
            if b"\n" not in chunk and b"\r" not in chunk:
                self._keep_pending(chunk)
                return []
            chunk = b"".join(self._pending) + chunk
            self._pending, self._pending_size = [], 0
        lines = chunk.splitlines(keepends=True)
        last = lines[-1]
        if last.endswith((b"\n", b"\r")):
            self._skip_lf = last.endswith(b"\r")
        else:
            self._keep_pending(lines.pop())
        if self._at_start and lines:
            self._at_start = False
            lines[0] = lines[0].removeprefix(_BOM)
        return self._lines(lines)

    def _keep_pending(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_size += len(piece)
        if self._pending_size > self.max_event_bytes:
            raise ProtocolError(f"the server sent a line longer than {self.max_event_bytes // 2**20} MB without ending it")

    def _lines(self, lines: Iterable[bytes]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        for line in lines:
            if line.startswith(b"data: "):  # the hot path: one per token
                self._add_data(line[6:].rstrip(b"\r\n").decode("utf-8", errors="replace"))
                continue
            event = self._line(line.rstrip(b"\r\n").decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of stream: finish a last event even if its blank line never came.

        The spec discards it, but servers that close right after ``data: [DONE]``
        without the blank line exist, and losing their last event helps nobody.
        """
        events = self.feed(b"\n") if self._pending else []
        last = self._line("")
        return events + ([last] if last is not None else [])

    def _add_data(self, value: str) -> None:
        self._data.append(value)
        self._data_size += len(value)
        if self._data_size > self.max_event_bytes:
            raise ProtocolError(f"the server sent an event larger than {self.max_event_bytes // 2**20} MB")

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._add_data(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = ServerSentEvent("\n".join(self._data), self._event or "message", self._id, self._retry)
        self._data, self._data_size = [], 0
        self._event = ""
        return event


class SSEStreamDecoder(Generic[T]):
    """Bytes of an SSE stream to typed items; a subclass says what each server-sent event means."""

    def __init__(self) -> None:
        self._sse = SSEDecoder()

    def feed(self, chunk: bytes) -> list[T]:
        return self._decode(self._sse.feed(chunk))

    def close(self) -> list[T]:
        return self._decode(self._sse.close())

    def _decode(self, sse_events: Iterable[ServerSentEvent]) -> list[T]:
        items: list[T] = []
        for sse in sse_events:
            items.extend(self.events(sse))
        return items

    def events(self, sse: ServerSentEvent) -> list[T]:
        raise NotImplementedError
