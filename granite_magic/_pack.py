"""Recordings appended to pack files: a prompt over many rows records each row without making a file for it.

Making a file costs far more than writing its few hundred bytes (a directory entry, an inode, a rename; on a network
file system a round trip each), so a map's rows are appended to one pack per cache per kernel,
``<cache>/packs/<stamp>-<random>.pack``: a sequence of records, each a header line ``granite-recording <key> <length>``
and ``length`` bytes of the same gzipped JSON a recording file holds (``_cache`` encodes and decodes them).

Packs travel with notebooks like any recording, so reading one trusts nothing in it: only a regular file directly in
the ``packs`` folder is read (never through a link, never a FIFO or a device), a header within ``HEADER_BYTES``, a
record within the cache's cap.  A record torn by a kill (or not yet whole: another kernel is writing it) ends that
pack's scan; the records before it are read.  Nothing here decodes a recording or touches the network.
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from secrets import token_hex
from typing import BinaryIO

__all__ = ["FOLDER", "PackIndex", "PackWriter", "read_record"]

FOLDER = "packs"
SUFFIX = ".pack"
HEADER_BYTES = 96  # "granite-recording " + 64 hex digits + " " + a length + "\n" is at most 94
_HEADER = re.compile(rb"granite-recording ([0-9a-f]{64}) ([0-9]{1,12})\n")
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
               | getattr(os, "O_CLOEXEC", 0))
_NUMBER_BITS = 16  # an index entry is (offset << 16) | the pack's number: one int a row, not a tuple
_MOST_PACKS = (1 << _NUMBER_BITS) - 1


class PackDamaged(ValueError):
    """A pack's record that cannot be read where the index says it is; the message says why, in a clause."""


def header(key: str, length: int) -> bytes:
    return b"granite-recording %s %d\n" % (key.encode("ascii"), length)


class PackWriter:
    """Appends records to this kernel's own pack in ``folder`` (made on the first record, made again if removed)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.name: str | None = None
        self.end = 0  # the pack's size: this writer is its only one
        self._descriptor: int | None = None

    def append(self, key: str, payload: bytes) -> tuple[str, int]:
        """Write one record; (the pack's file name, the record's offset).  ``OSError`` when it cannot be written."""
        if self._descriptor is None or os.fstat(self._descriptor).st_nlink == 0:  # removed meanwhile: a new pack
            self._open()
        assert self._descriptor is not None and self.name is not None
        record, offset = header(key, len(payload)) + payload, self.end
        written = 0
        while written < len(record):
            written += os.write(self._descriptor, record[written:])
        self.end += len(record)
        return self.name, offset

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
        self._descriptor, self.name, self.end = None, None, 0

    def _open(self) -> None:
        self.close()
        os.makedirs(self.folder, exist_ok=True)
        # Named by the time it is made, to the nanosecond: packs are read in name order, so a later recording of the
        # same request wins.
        now = time.time_ns()
        name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now // 10**9))}.{now % 10**9:09d}-{token_hex(4)}{SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
        self._descriptor = os.open(os.path.join(self.folder, name), flags, 0o666)
        self.name = name


class PackIndex:
    """Where each request's newest packed recording is: found by reading the packs' headers, never their records.

    ``find`` looks again at the folder when a key is not known (a pack another kernel is writing grows; only what
    was added since is read), so rows recorded by an interrupted run in another kernel are found.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._names: list[str] = []
        self._numbers: dict[str, int] = {}
        self._read_to: dict[str, int] = {}  # how far each pack's headers have been read
        self._sizes: dict[str, int] = {}  # each pack's size when last read: unchanged, it is not read again
        self._where: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def find(self, key: str) -> tuple[str, int] | None:
        """(the pack's path, the record's offset) of ``key``'s newest packed recording, or None."""
        digest = bytes.fromhex(key)
        with self._lock:
            if digest not in self._where:
                self._refresh()
            entry = self._where.get(digest)
            if entry is None:
                return None
            return os.path.join(self.folder, self._names[entry & _MOST_PACKS]), entry >> _NUMBER_BITS

    def added(self, key: str, name: str, offset: int, end: int) -> None:
        """This kernel wrote ``key``'s record to pack ``name`` at ``offset``; the pack now ends at ``end``."""
        with self._lock:
            self._where[bytes.fromhex(key)] = offset << _NUMBER_BITS | self._number(name)
            if self._read_to.get(name, 0) == offset:  # read up to here already: it need not be read again
                self._read_to[name] = self._sizes[name] = end

    def keys(self) -> int:
        """How many requests have a packed recording (the folder looked at again first)."""
        with self._lock:
            self._refresh()
            return len(self._where)

    def forget(self) -> None:
        with self._lock:
            self._names, self._numbers, self._read_to, self._sizes, self._where = [], {}, {}, {}, {}

    def packs(self) -> Iterator[os.DirEntry[str]]:
        """The folder's pack files (regular files, not links), in name order."""
        try:
            entries = sorted(os.scandir(self.folder), key=lambda entry: entry.name)
        except OSError:  # no packs yet, or a folder that cannot be read: nothing packed is found
            return
        for entry in entries:
            if entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                yield entry

    def _refresh(self) -> None:
        for entry in self.packs():
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except OSError:  # removed meanwhile
                continue
            if self._sizes.get(entry.name) != size:
                self._sizes[entry.name] = size
                self._read_headers(entry.path, entry.name)

    def _read_headers(self, path: str, name: str) -> None:
        try:
            number = self._number(name)
            for key, offset, end in _records(path, self._read_to.get(name, 0)):
                self._where[bytes.fromhex(key)] = offset << _NUMBER_BITS | number
                self._read_to[name] = end
        except (OSError, PackDamaged):  # unreadable from here on: what was read stays found
            return

    def _number(self, name: str) -> int:
        if name not in self._numbers:
            if len(self._names) >= _MOST_PACKS:
                raise OSError(f"more than {_MOST_PACKS} packs in {self.folder}")
            self._numbers[name] = len(self._names)
            self._names.append(name)
        return self._numbers[name]


def _records(path: str, start: int) -> Iterator[tuple[str, int, int]]:
    """(key, offset, end) of each whole record from ``start`` on; stops at a torn or damaged one."""
    with _open_pack(path) as file:
        size = os.fstat(file.fileno()).st_size
        position = start
        while position < size:
            file.seek(position)
            key, length = _parse(file.read(HEADER_BYTES))
            end = position + len(header(key, length)) + length
            if end > size:
                return  # torn, or still being written
            yield key, position, end
            position = end


def read_record(path: str, offset: int, key: str, limit: int) -> bytes:
    """The payload of ``key``'s record at ``offset`` in the pack at ``path``, at most ``limit`` bytes.

    ``PackDamaged`` when what is there is not that record whole; ``OSError`` when the pack cannot be opened.
    """
    with _open_pack(path) as file:
        file.seek(offset)
        found, length = _parse(file.read(HEADER_BYTES))
        if found != key:
            raise PackDamaged("it holds another record where its index says this one is")
        if length > limit:
            raise PackDamaged(f"a record says it is {length} bytes, over the {limit >> 20} MB limit")
        file.seek(offset + len(header(key, length)))
        payload = file.read(length)
    if len(payload) < length:
        raise PackDamaged("a record is truncated")
    return payload


def _parse(data: bytes) -> tuple[str, int]:
    match = _HEADER.match(data)
    if match is None:
        raise PackDamaged("a record's header is damaged")
    return match[1].decode("ascii"), int(match[2])


def _open_pack(path: str) -> BinaryIO:
    """The pack at ``path`` opened to read: never through a link, never waiting on a FIFO, only a regular file."""
    descriptor = os.open(path, _OPEN_FLAGS)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise PackDamaged("it is not a regular file")
    return os.fdopen(descriptor, "rb")
