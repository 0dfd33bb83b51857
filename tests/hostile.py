"""A hostile HTTP/1.1 server on 127.0.0.1 for robustness tests.

Each request is answered by a scripted ``Reply``: any status, any headers, and
a body written as the given byte pieces (HTTP/1.1 chunked by default, one chunk
per piece) with an optional pause between pieces.  ``{AUTH}`` in a piece is
replaced by the request's Authorization header, so a server that echoes the key
back can be played.  Every request is recorded for assertions.

POST requests (chat completions) take the queued replies in order, then
``default``; ``/models`` has its own script.  A reply is a ``Reply`` or a
function of the recorded request that returns one::

    with HostileServer() as server:
        server.script(json_reply(503, {"error": {"message": "busy"}}))
        server.default = normal_reply("Hello ", "world.")
        server.models = Reply(hang=True)

Nothing here can hang a test suite: every wait on the server side ends when the
server closes (which also cuts every open connection), and "endless" replies
stop after ``SAFETY_CAP_S`` so that a client lacking the timeout under test
fails instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "DONE",
    "SAFETY_CAP_S",
    "SSE_HEADERS",
    "HostileServer",
    "RecordedRequest",
    "Reply",
    "Responder",
    "endless_line",
    "event",
    "finish_chunk",
    "json_reply",
    "normal_reply",
    "sse_reply",
    "text_chunk",
    "trickle",
]

SAFETY_CAP_S = 15.0  # the longest any reply holds a connection; only a client missing a timeout ever reaches it
SSE_HEADERS: Mapping[str, str] = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class RecordedRequest:
    """What the server received: header names are lower-cased; ``json`` is None when the body is not JSON."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    json: Any

    @property
    def authorization(self) -> str:
        return self.headers.get("authorization", "")


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    ``pieces`` is a sequence of byte strings, or a function returning a fresh
    iterable of them (for generated or endless bodies).  ``delay_s`` is the pause
    before every piece but the first.  ``chunked=False`` sends a Content-Length
    body instead (the pieces are joined).  ``hang=True`` answers nothing at all:
    the request is held until the server closes (or ``SAFETY_CAP_S``).
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=lambda: dict(SSE_HEADERS))
    pieces: Sequence[bytes] | Callable[[], Iterable[bytes]] = ()
    delay_s: float = 0.0
    chunked: bool = True
    hang: bool = False

    def body(self) -> Iterable[bytes]:
        return self.pieces() if callable(self.pieces) else self.pieces


Responder = Callable[[RecordedRequest], Reply]


# --- reply builders ------------------------------------------------------------------


def event(payload: object) -> bytes:
    """One SSE event: a dict is sent as JSON, a str as the raw data line."""
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def text_chunk(text: object) -> dict[str, Any]:
    """A chat-completions chunk carrying one text delta (``text`` may be any JSON value, to play wrong shapes)."""
    return {"id": "gen-hostile", "model": "hostile/model", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]}


def finish_chunk(reason: str = "stop") -> dict[str, Any]:
    return {"id": "gen-hostile", "model": "hostile/model", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": reason}]}


def sse_reply(*payloads: object, done: bool = True, delay_s: float = 0.0) -> Reply:
    """A 200 event stream of the given events (dicts as JSON, str as raw data, bytes verbatim)."""
    pieces = [p if isinstance(p, bytes) else event(p) for p in payloads]
    return Reply(pieces=[*pieces, DONE] if done else pieces, delay_s=delay_s)


def normal_reply(*texts: str, delay_s: float = 0.0) -> Reply:
    """A well-formed reply: one chunk per text, a finish chunk with usage, and ``[DONE]``."""
    usage = {"id": "gen-hostile", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": len(texts), "total_tokens": 3 + len(texts)}}
    return sse_reply(*(text_chunk(t) for t in texts), finish_chunk("stop"), usage, delay_s=delay_s)


def json_reply(status: int, payload: object, *, content_type: str = "application/json") -> Reply:
    """A plain (Content-Length) reply; ``{AUTH}`` inside it is replaced by the received Authorization header."""
    return Reply(status=status, headers={"Content-Type": content_type}, pieces=[json.dumps(payload).encode()], chunked=False)


def endless_line(megabytes: int, *, before: Sequence[bytes] = ()) -> Reply:
    """``before`` and then ``megabytes`` MB of ``a`` with no newline at all (each MB is one chunk)."""
    mb = b"a" * 2**20
    return Reply(pieces=lambda: itertools.chain(before, itertools.repeat(mb, megabytes)))


def trickle(pattern: bytes = b":\n", *, interval_s: float = 0.2, for_s: float = 8.0) -> Reply:
    """One byte of ``pattern`` (cycled) every ``interval_s``: "forever" to a client with a stall timer.

    It stops after ``for_s`` (8x the read timeouts the tests use) so that a client
    without one fails instead of waiting; the server closing stops it at once.
    """
    count = int(min(for_s, SAFETY_CAP_S) / interval_s)
    return Reply(pieces=lambda: (bytes([b]) for b in itertools.islice(itertools.cycle(pattern), count)), delay_s=interval_s)


# --- the server -----------------------------------------------------------------------------


HOSTILE_KEY = "sk-or-v1-hostile-0123456789abcdef0123"  # the key the hostile tests give (and that servers echo)


class HostileServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 (port 0) answering from a script; a context manager."""

    def __init__(self) -> None:
        self.default: Reply | Responder = normal_reply("Hello ", "world.")
        self.models: Reply | Responder = json_reply(200, {"data": []})
        self.requests: list[RecordedRequest] = []
        self._queue: list[Reply | Responder] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler, self)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/api/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The POST requests (generations), in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def script(self, *replies: Reply | Responder) -> None:
        """Queue replies for the next POST requests, in order; then ``default`` answers."""
        with self._lock:
            self._queue.extend(replies)

    def start(self) -> HostileServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="hostile-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, release every held or slow reply, cut every connection, and join the handler threads."""
        self._closing.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()  # joins the handler threads (block_on_close)

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- used by the handler -------------------------------------------------------

    def _record(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            if request.path.split("?")[0].rstrip("/").endswith("/models"):
                scripted = self.models
            else:
                scripted = self._queue.pop(0) if self._queue else self.default
        return scripted if isinstance(scripted, Reply) else scripted(request)

    def _wait(self, seconds: float) -> bool:
        """Pause; True if the server is closing (the caller must stop)."""
        return self._closing.wait(seconds)

    def _track(self, connection: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # so server_close() joins them: no handler outlives the server
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: HostileServer) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], OSError):  # a client hanging up is the normal end of a hostile reply
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = SAFETY_CAP_S * 2  # an idle keep-alive connection or a blocked write cannot pin a thread forever
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one write, one segment
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        self.server.owner._track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = RecordedRequest(self.command, self.path, headers, raw, parsed)
        reply = self.server.owner._record(request)
        auth = request.authorization.encode("latin-1", errors="replace")
        try:
            self._send(reply, auth)
        except OSError:  # the client hung up (BrokenPipe, ConnectionReset) or the server cut it
            self.close_connection = True

    def _send(self, reply: Reply, auth: bytes) -> None:
        owner = self.server.owner
        if reply.hang:
            owner._wait(SAFETY_CAP_S)
            self._cut()
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if not reply.chunked:
            data = b"".join(reply.body()).replace(b"{AUTH}", auth)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index, piece in enumerate(reply.body()):
            if index and reply.delay_s and owner._wait(reply.delay_s):
                self._cut()
                return
            if owner._closing.is_set():
                self._cut()
                return
            data = piece.replace(b"{AUTH}", auth)
            if data:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _cut(self) -> None:
        """End the connection without finishing the reply."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
