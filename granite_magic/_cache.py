"""Record and replay runs: a content-addressed cache of streamed replies, one small file per run.

A run is keyed on everything that decides its reply (``request_fields`` -> ``cache_key``), recorded as
the events it streamed with their times (``Recorder`` -> ``Recording``), kept as one gzipped JSON file
(``RunCache``; a map's rows as records appended to a pack instead, ``_pack``), and replayed into the same
``Accumulator`` a live run feeds (``replay``), so a hit is the same ``Result`` as the original.  The session
decides when to look up, record and replay (``CACHE_MODES``); nothing here touches the network or a model.

A hit is "the same Result" within ``_codec``'s documented tolerances: every probability within 0.00502
percentage points, times to 0.1 ms; texts, tool calls, usage, cost, finish reasons and errors are exact.
The file is ``{"format", "key", "created", "fields", "events", "tokens"}``: the request it answers
(``fields``, never a key) and ``_codec``'s compact JSON of the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import hashlib
import json
import os
import re
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from secrets import token_hex
from typing import Any, get_args

from ._codec import decode_events, encode_events
from ._context import FileRefused, read_capped
from ._errors import GraniteError, InvalidParameterError, redact, redact_all, shown_path
from ._events import ErrorEvent, Event, Finish, TextDelta, ToolCallDelta
from ._pack import FOLDER as PACKS
from ._pack import PackDamaged, PackIndex, PackWriter, read_record
from ._params import PARAMETERS, WireTarget
from ._settings import check_cache_mode as check_mode
from ._vocab import CACHE_MODES, PACES, CacheMode, Pace

__all__ = [
    "CACHE_MODES",
    "FORMAT_VERSION",
    "MAX_FILE_BYTES",
    "PACES",
    "CacheCorruptError",
    "CacheMissError",
    "CacheMode",
    "CacheStats",
    "Pace",
    "RecordedClock",
    "Recorder",
    "Recording",
    "RunCache",
    "cache_key",
    "check_mode",
    "describe_fields",
    "model_fingerprint",
    "replay",
    "request_fields",
]


FORMAT_VERSION = 2  # what is written
READABLE_FORMATS = (1, 2)
# Part of every key: bump it only when what a key means changes (every recording shipped with the demo
# notebooks becomes a miss), never for a new file format, which ``FORMAT_VERSION`` covers.
KEY_VERSION = 2  # 2: keyed on what is sent (``describe``), not on fields picked from the request
_HEADER_BYTES = 1 << 20
_MAX_INFLATED = 256 << 20  # a 100,000-token reply with 20 alternatives per token is ~40 MB of JSON
# The most a recording file may hold on disk: what gzip makes of ``_MAX_INFLATED`` at a ratio no recording comes
# near (JSON of events compresses 5 to 10 times), so only a file that could never be read whole is refused unread.
MAX_FILE_BYTES = _MAX_INFLATED // 4
_KEY_PATTERN = re.compile(r"[0-9a-f]{64}")
_SUFFIX = ".json.gz"


class CacheCorruptError(GraniteError):
    """A cache file could not be read back: truncated, damaged, or from another format."""

    kind = "cache_corrupt"

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"cache file {shown_path(path)} is unusable: {reason}")
        self.path = Path(path)


class CacheMissError(GraniteError):
    """``replay`` mode found no recording of a request: the message says which request."""

    kind = "cache_miss"

    def __init__(self, fields: Mapping[str, Any], directory: Path) -> None:
        super().__init__(f"no recording in {shown_path(directory)} for {describe_fields(fields)}")
        self.fields = dict(fields)
        self.directory = directory


# --- keys -------------------------------------------------------------------------------------


def request_fields(
    *,
    backend: str,
    host: str,
    model: str,
    api: str,
    sent: Mapping[str, Any],
    repeat: int = 0,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """What decides a run's reply, as plain JSON data: ``cache_key``'s input and a recording's description.

    ``sent`` is what the client sends for the request, exactly as ``--dry-run`` shows it (``describe``), so every
    field of a request is keyed, one added later included, without being listed here.  Beside it: the backend's
    name, the host (never a port, a path or credentials: a local test server's random port does not split the
    cache), the model, the request format, which repetition of the same request this is, and ``fingerprint``,
    ``model_fingerprint`` of a local model file.  An absent fingerprint is left out.
    """
    found: dict[str, Any] = {"backend": backend, "host": host, "model": model, "api": api, "sent": dict(sent), "repeat": repeat}
    if fingerprint is not None:
        found["fingerprint"] = fingerprint
    canonical: dict[str, Any] = _canonical(found)
    return canonical


# The sampling parameters of a sent request, under any target's names: what a recording's description lists.
_SAMPLING_WIRE_NAMES = frozenset(name for p in PARAMETERS for target in get_args(WireTarget) if (name := p.wire_name(target)))


def cache_key(fields: Mapping[str, Any]) -> str:
    """The sha256 (64 hex digits) of a canonical JSON of ``fields``: equal requests give equal keys."""
    text = json.dumps({"cache": KEY_VERSION, "request": _canonical(fields)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def model_fingerprint(path: Path | str) -> str:
    """``size:sha256-of-the-first-MB`` of a model file: its identity wherever it lies, never its path.

    A GGUF file starts with its architecture, quantisation, tokenizer and metadata, so a copy elsewhere
    fingerprints the same and another build of the model does not, without hashing gigabytes.
    """
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        header = file.read(_HEADER_BYTES)
    return f"{size}:{hashlib.sha256(header).hexdigest()}"


def describe_fields(fields: Mapping[str, Any]) -> str:
    """One line a person recognises a request by: "chat to openrouter.ai, model m, seed 3: 'Tell me…'".

    Never fails: it also describes whatever a damaged file holds.
    """
    host, backend = fields.get("host"), fields.get("backend") or "?"
    sent = fields.get("sent")
    if not isinstance(sent, Mapping):
        sent = {}
    parts = [f"{fields.get('api') or 'chat'} to {host}" if host else f"{backend} backend", f"model {fields.get('model')}"]
    parts += _describe_sampling({name: value for name, value in sent.items() if name in _SAMPLING_WIRE_NAMES})
    if fields.get("repeat"):
        parts.append(f"repeat {fields['repeat']}")
    if isinstance(sent.get("tools"), list) and sent["tools"]:
        parts.append("tools " + ", ".join(_tool_name(tool) for tool in sent["tools"]))
    prompt = _last_user_text(sent.get("messages", sent.get("input")))
    return ", ".join(parts) + (f": '{_shorten(prompt, 40)}'" if prompt else "")


def _canonical(value: Any) -> Any:
    """``value`` as plain JSON data that compares by meaning: string keys, lists, numbers by value."""
    if isinstance(value, Mapping):
        # Token ids are ints in ``Sampling`` and strings in JSON: {50256: -100} and {"50256": -100} are one request.
        canonical = {str(k): _canonical(v) for k, v in value.items()}
        if len(canonical) != len(value):
            raise ValueError(f"keys that differ only in type: {list(value)!r}")
        return canonical
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # 1.0 and 1 are sent as the same number; this also folds -0.0 into 0
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise TypeError(f"cannot key a {type(value).__name__} ({value!r}): pass JSON data")


def _describe_sampling(sampling: Any) -> list[str]:
    if not isinstance(sampling, Mapping):
        return []
    names = sorted(sampling, key=lambda name: (name != "seed", str(name)))  # the seed first: it tells runs apart
    return [f"{name} {json.dumps(sampling[name], separators=(',', ':'), default=str)}" for name in names]


def _tool_name(tool: Any) -> str:
    if not isinstance(tool, Mapping):
        return "?"
    function = tool.get("function")
    return str((function.get("name") if isinstance(function, Mapping) else None) or tool.get("name") or "?")


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep their text
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
            return str(content or "")
    return ""


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


# --- recordings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """A run's events with their times in seconds from its start, and the request they answer."""

    events: tuple[tuple[float, Event], ...]
    fields: Mapping[str, Any] = field(default_factory=dict)  # request_fields(): what was asked, never a key
    created: str = ""  # ISO 8601, UTC

    @property
    def duration_s(self) -> float:
        return self.events[-1][0] if self.events else 0.0

    @property
    def complete(self) -> bool:
        """The reply ended normally: worth keeping (a failed run would replay its failure forever)."""
        events = [event for _, event in self.events]
        finished = any(isinstance(e, Finish) and e.reason != "error" for e in events)
        return finished and not any(isinstance(e, ErrorEvent) for e in events)

    def describe(self) -> str:
        return describe_fields(self.fields)


class Recorder:
    """Collects a live run's events as they arrive; ``recording()`` makes them a ``Recording``.

    Start it (or ``restart_clock``) with the run's ``Accumulator`` and ``add`` each event where the
    accumulator is fed, so the replayed times (first token, duration) are the original's.
    """

    def __init__(self, fields: Mapping[str, Any], *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.fields = dict(fields)
        self._clock = clock
        self._started = clock()
        self._events: list[tuple[float, Event]] = []

    def restart_clock(self) -> None:
        """Time from now: a queued comparison column starts when it may send."""
        self._started = self._clock()

    def add(self, event: Event) -> None:
        self._events.append((self._clock() - self._started, event))

    def recording(self, *, created: str | None = None) -> Recording:
        created = created or datetime.now(timezone.utc).isoformat(timespec="seconds")
        return Recording(tuple(self._events), self.fields, created)


def _encode_recording(key: str, recording: Recording) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "key": key, "created": recording.created, "fields": dict(recording.fields),
            **encode_events(recording.events)}


def _decode_recording(key: str, data: Any) -> Recording:
    if not isinstance(data, dict):
        raise ValueError(f"it is not a recording: it holds a {type(data).__name__}")
    if type(data.get("format")) is not int or data["format"] not in READABLE_FORMATS:  # not true, nor 2.0
        raise ValueError(f"it has format {data.get('format')!r} and this version reads formats "
                         f"{', '.join(map(str, READABLE_FORMATS))}")
    if data.get("key") != key:
        raise ValueError("it holds the recording of another request")
    fields, created = data.get("fields"), data.get("created")
    if not isinstance(fields, dict) or not isinstance(created, str):
        raise ValueError("unexpected content: its request or its date is missing")
    return Recording(decode_events(data, format=data["format"]), fields, created)


# --- the store ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int  # this RunCache's lookups (the session's), not the directory's history
    misses: int  # a corrupt file counts as a miss


class RunCache:
    """One directory of recordings, one gzipped JSON file per run, ``<key[:2]>/<key>.json.gz``, and the packs a
    prompt over many rows appends its rows to (``append``; ``_pack``).

    Safe for a comparison grid writing at once, from threads or processes: a file is written under a
    temporary name in its own folder, then renamed over the old one, so a reader sees one whole file or
    the other.  The file is not fsynced: it is a cache, and a file torn by a power cut reads as corrupt.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        # Why recording stopped (the one warning to show), or None while it works.
        self.recording_off: str | None = None
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()
        self._folders: set[str] = set()  # shard folders this cache made or found (no mkdir for every file)
        self._packs = PackIndex(os.path.join(self.directory, PACKS))
        self._writer = PackWriter(self._packs.folder)

    def path(self, key: str) -> Path:
        return Path(self._file(key))

    def _file(self, key: str) -> str:
        # A string, not a Path: Python 3.11's pathlib interns every part of every path it parses, so a map over
        # 100,000 rows would keep 100,000 file names in the interpreter's table of interned strings for good.
        if not _KEY_PATTERN.fullmatch(key):
            raise ValueError(f"not a cache key: {key!r}")
        return os.path.join(self.directory, key[:2], f"{key}{_SUFFIX}")

    def load(self, key: str) -> Recording | None:
        """The recording of ``key``, or None; ``CacheCorruptError`` naming the file if it cannot be read.

        Recordings travel in repositories, which ship symbolic links: only a regular file inside the cache
        directory of at most ``MAX_FILE_BYTES`` is read.  A link out of it (to ``/dev/zero``, to a file
        elsewhere), a FIFO, a device or a directory in a recording's place is a damaged recording; so is a packed
        record that is not whole (``_pack``).
        """
        try:
            raw, path = self._raw(key)
        except CacheCorruptError:
            self._count(hit=False)
            raise
        if raw is None:
            self._count(hit=False)
            return None
        try:
            recording = _decode_recording(key, json.loads(_gunzip(raw).decode("utf-8", "surrogatepass")))
        except (EOFError, OSError, zlib.error, ValueError, RecursionError) as exc:
            self._count(hit=False)
            raise CacheCorruptError(path, _why_unreadable(exc)) from None
        self._count(hit=True)
        return recording

    def _raw(self, key: str) -> tuple[bytes | None, str]:
        """The gzipped recording of ``key`` (None: there is none) and where it is: its own file first (written by a
        single run, or shipped), then the packs (a map's rows)."""
        path = self._file(key)
        try:
            return self._read(path), path
        except (FileNotFoundError, NotADirectoryError):
            return self._read_packed(key)

    def _read(self, path: str) -> bytes:
        """The file's bytes: ``FileNotFoundError`` when nothing is there, ``CacheCorruptError`` when what is there
        is not a regular file inside the directory, within the size cap."""
        try:
            os.lstat(path)  # nothing at all in its place (not even a dangling link) is a plain miss
            real = os.path.realpath(path)
            if not self._inside(real):
                raise CacheCorruptError(path, f"it is a link to {shown_path(real)}, outside the cache directory")
            return read_capped(real, MAX_FILE_BYTES)
        except FileRefused as exc:
            raise CacheCorruptError(path, exc.reason) from None
        except (FileNotFoundError, NotADirectoryError) as exc:
            if (exc.filename is not None and os.fspath(exc.filename) == os.fspath(path)) or not os.path.islink(path):
                raise  # nothing there, or a file removed meanwhile (%granite cache clear in another kernel)
            raise CacheCorruptError(path, "it is a link to nothing") from None
        except OSError as exc:
            why = "it is a symbolic link that loops" if exc.errno == errno.ELOOP else f"it cannot be read ({exc.strerror or exc})"
            raise CacheCorruptError(path, why) from None

    def _read_packed(self, key: str) -> tuple[bytes | None, str]:
        """The payload of ``key``'s packed recording (None when no pack has one), and the pack it is in."""
        folder = self._packs.folder
        if not self._inside_folder(folder):
            return None, folder  # a packs folder linked out of the directory is not read
        found = self._packs.find(key)
        if found is None:
            return None, folder
        pack, offset = found
        try:
            return read_record(pack, offset, key, MAX_FILE_BYTES), pack
        except FileNotFoundError:  # removed by another kernel (%granite cache clear) since it was read: read again
            self._packs.forget()
            return self._read_packed(key) if self._packs.find(key) is not None else (None, folder)
        except PackDamaged as exc:
            raise CacheCorruptError(pack, f"{exc} (the pack's other recordings are still read)") from None
        except OSError as exc:
            raise CacheCorruptError(pack, f"it cannot be read ({exc.strerror or exc})") from None

    def _inside(self, real: str) -> bool:
        """Whether a resolved path lies inside this cache's directory (itself resolved: it may be a link)."""
        root = os.path.realpath(self.directory)
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    def store(self, key: str, recording: Recording, *, secrets: Iterable[str] = ()) -> bool:
        """Write ``recording`` under ``key``; False if nothing was written.

        Every string is scrubbed of ``secrets`` (pass the API key) and of anything shaped like a key or a
        bearer token.  Nothing is written when a secret survives that, e.g. spread over two text deltas.
        When the directory cannot be written, ``recording_off`` says why and later calls return False
        at once.
        """
        payload = self._payload(key, recording, secrets)
        path = self._file(key)
        folder = os.path.dirname(path)
        if payload is None or not self._inside_folder(folder):
            return False
        try:
            if folder not in self._folders:
                os.makedirs(folder, exist_ok=True)
                self._folders.add(folder)
            temporary = _write_beside(path, payload)
        except OSError as exc:
            self._folders.discard(folder)  # removed meanwhile (%granite cache clear): made again next time
            self.recording_off = self._why_off(exc)
            return False
        return _move(temporary, path)

    def append(self, key: str, recording: Recording, *, secrets: Iterable[str] = ()) -> bool:
        """``store``, appended to this kernel's pack (``_pack``) instead of a file of its own: a map's rows.

        Scrubbed and refused exactly as ``store``; a recording file of the same request is removed, so the newer
        recording is the one found.
        """
        payload = self._payload(key, recording, secrets)
        if payload is None or not self._inside_folder(self._packs.folder):
            return False
        try:
            with self._lock:
                name, offset = self._writer.append(key, payload)
                self._packs.added(key, name, offset, self._writer.end)
        except OSError as exc:
            self.recording_off = self._why_off(exc)
            return False
        path = self._file(key)
        if os.path.lexists(path) and self._inside_folder(os.path.dirname(path)):  # record mode over an older file
            with contextlib.suppress(OSError):
                os.unlink(path)
        return True

    def _payload(self, key: str, recording: Recording, secrets: Iterable[str]) -> bytes | None:
        """What is written for ``recording``: its gzipped JSON, scrubbed; None when recording is off or a secret
        survives the scrub."""
        if self.recording_off is not None:
            return None
        known = tuple(s for s in secrets if s)
        if _holds_secret(_streamed_text(recording, known), known):
            return None
        encoded = _encode_recording(key, recording)
        text = _dumps(encoded)
        if _may_hold_secret(text, known):  # most recordings cannot: the string-by-string scrub is for those that may
            text = _dumps(redact_all(encoded, known))
            if _holds_secret(text, known):
                return None
        return gzip.compress(text.encode("utf-8", "surrogatepass"), mtime=0)

    def _inside_folder(self, folder: str) -> bool:
        """Whether ``folder`` may be read or written through: not a link out of the directory (or one that loops)."""
        return not os.path.islink(folder) or (os.path.isdir(folder) and self._inside(os.path.realpath(folder)))

    def stats(self) -> CacheStats:
        entries = size = 0
        for path in self._entries():
            try:
                size += path.lstat().st_size  # a link counts as itself: it may loop or lead to a device
            except OSError:  # cleared by another session meanwhile
                continue
            entries += 1
        for pack in self._packs.packs():
            with contextlib.suppress(OSError):
                size += pack.stat(follow_symlinks=False).st_size
        return CacheStats(entries + self._packs.keys(), size, self._hits, self._misses)

    def clear(self) -> int:
        """Remove this cache's recordings (nothing else in the directory); how many were removed.

        ``OSError`` if they cannot be removed (a read-only directory).
        """
        removed = 0
        for path in list(self._entries()):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
            _remove_if_empty(path.parent)
        with self._lock:
            self._writer.close()
            removed += self._packs.keys()
            for pack in list(self._packs.packs()):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(pack.path)
            self._packs.forget()
        _remove_if_empty(Path(self._packs.folder))
        return removed

    def _entries(self) -> Iterator[Path]:
        for path in self.directory.glob(f"??/*{_SUFFIX}"):
            key = path.name[: -len(_SUFFIX)]
            if _KEY_PATTERN.fullmatch(key) and path.parent.name == key[:2]:
                yield path

    def _count(self, *, hit: bool) -> None:
        with self._lock:  # grid columns may look up from several threads
            if hit:
                self._hits += 1
            else:
                self._misses += 1

    def _why_off(self, exc: OSError) -> str:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"recording is off: {shown_path(self.directory)} is read-only"
        return f"recording is off: cannot write to {shown_path(self.directory)} ({exc.strerror or exc})"


def _gunzip(raw: bytes) -> bytes:
    # Recordings travel with notebooks from other people: a small file must not inflate to fill the memory.
    inflater = zlib.decompressobj(wbits=31)  # a gzip member; zlib checks its CRC and length
    data = inflater.decompress(raw, _MAX_INFLATED)
    if not inflater.eof:
        if len(data) >= _MAX_INFLATED:
            raise ValueError(f"it inflates to more than {_MAX_INFLATED >> 20} MB")
        raise EOFError
    if inflater.unused_data:
        raise ValueError("it has data after its end")
    return data


def _why_unreadable(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "it is truncated"
    if isinstance(exc, (OSError, zlib.error)):
        return f"it is not a whole gzip file ({exc})"
    return f"it is not a recording: {exc}"


def _dumps(document: dict[str, Any]) -> str:
    # default=str: an error's metadata from a server is JSON already; anything else must not stop a store.
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str)


def _streamed_text(recording: Recording, secrets: tuple[str, ...]) -> str:
    """The reply's text and tool arguments, each delta scrubbed, joined: a secret left in it spans deltas."""
    parts = [e.text if isinstance(e, TextDelta) else e.arguments or "" for _, e in recording.events
             if isinstance(e, (TextDelta, ToolCallDelta))]
    return "".join(redact(part, secrets) for part in parts)


# What every string ``redact`` changes contains: a known secret, or the start of a key's shape.  JSON escapes none of
# these characters, so a document whose JSON text has none of them has no string to scrub.
_KEY_STARTS = re.compile(r"(?i)bearer|sk-")


def _may_hold_secret(text: str, secrets: tuple[str, ...]) -> bool:
    """Whether a string of the document ``text`` is the JSON of may hold a secret or a key's shape.  A secret JSON
    escapes (a quote, a backslash, a control character) is looked for as escaped too."""
    return bool(_KEY_STARTS.search(text)) or any(secret in text or json.dumps(secret, ensure_ascii=False)[1:-1] in text
                                                 for secret in secrets)


def _holds_secret(text: str, secrets: tuple[str, ...]) -> bool:
    return any(secret in text for secret in secrets)


def _write_beside(path: str, payload: bytes) -> str:
    """``payload`` in a new file in ``path``'s folder (which exists), so that renaming it to ``path`` is atomic."""
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.{token_hex(8)}.tmp")
    try:
        try:
            _create(temporary, payload)
        except FileNotFoundError:  # the folder went (%granite cache clear in another kernel): made again, once
            os.makedirs(folder, exist_ok=True)
            _create(temporary, payload)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return temporary


def _create(path: str, payload: bytes) -> None:
    with open(path, "xb") as file:  # "x": a name of its own, with the umask's permissions
        file.write(payload)


def _move(temporary: str, path: str) -> bool:
    try:
        os.replace(temporary, path)
    except OSError:
        # The folder is writable (the file was made), so this is one write's conflict, e.g. Windows refusing
        # to replace a file another kernel is reading: this run stays unrecorded, recording stays on.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        return False
    return True


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        folder.rmdir()


# --- replay ---------------------------------------------------------------------------------------


class RecordedClock:
    """The clock of a replay's ``Accumulator``: the recorded time of the event being replayed.

    ``Accumulator(params, clock=c)`` with ``replay(..., clock=c)`` gives the original's first-token time,
    duration and tokens/s, however fast the replay runs.
    """

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def replay(
    recording: Recording,
    feed: Callable[[Event], None],
    *,
    pace: Pace = "instant",
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    timer: Callable[[], float] | None = None,
    clock: RecordedClock | None = None,
) -> None:
    """Feed ``recording``'s events in order: at once, or at their recorded times (``pace="original"``).

    ``sleep`` and ``timer`` (default: the running loop's clock) are injectable for tests; ``clock`` is
    set to each event's recorded time before it is fed.
    """
    if pace not in PACES:
        raise InvalidParameterError(f"pace={pace!r} is invalid: must be one of {', '.join(PACES)}")
    now = timer or asyncio.get_running_loop().time
    started = now()
    for at, event in recording.events:
        if pace == "original":
            delay = at - (now() - started)  # measured from the start, so oversleeping does not pile up
            if delay > 0:
                await sleep(delay)
        if clock is not None:
            clock.now = at
        feed(event)
