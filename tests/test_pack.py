"""A map's rows recorded in packs (``_pack``): one file a kernel, not one a row; found again by another kernel, also
while its pack grows; the newest recording of a request wins; and a pack read as warily as a recording file (links,
FIFOs, torn and damaged records, bombs), with no secret written to it."""

from __future__ import annotations

import errno
import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from granite_magic import _cache, _pack
from granite_magic._cache import CacheCorruptError, Recording, RunCache
from granite_magic._events import Finish, TextDelta

from .conftest import TEST_KEY, packed_records
from .test_cache import SECRET, key, leaky, recording


def said(text: str) -> Recording:
    return recording(((0.1, TextDelta(text)), (0.2, Finish("stop"))))


def packs(directory: Path) -> list[Path]:
    return sorted((directory / "packs").glob("*.pack"))


def test_appended_recordings_come_back_whole_from_one_pack(tmp_path: Path) -> None:
    cache = RunCache(tmp_path)
    keys = [key(repeat=n) for n in range(3)]
    for n, k in enumerate(keys):
        assert cache.append(k, said(f"row {n}"))
    (pack,) = packs(tmp_path)
    assert [k for k, _ in packed_records(pack)] == keys and not list(tmp_path.rglob("*.json.gz"))  # no file made for a row
    assert [json.loads(gzip.decompress(payload))["key"] for _, payload in packed_records(pack)] == keys  # a recording file's bytes
    assert [cache.load(k) for k in keys] == [said(f"row {n}") for n in range(3)]
    assert RunCache(tmp_path).load(keys[1]) == said("row 1")  # another kernel reads it too


def test_another_kernel_finds_rows_while_the_pack_grows(tmp_path: Path) -> None:
    writer, reader = RunCache(tmp_path), RunCache(tmp_path)
    assert writer.append(key(repeat=0), said("first"))
    assert reader.load(key(repeat=0)) == said("first") and reader.load(key(repeat=1)) is None
    assert writer.append(key(repeat=1), said("second"))
    assert reader.load(key(repeat=1)) == said("second")  # only what was added is read again


def test_the_newest_recording_of_a_request_wins(tmp_path: Path) -> None:
    first = RunCache(tmp_path)
    assert first.store(key(), said("a file")) and first.append(key(), said("packed"))
    assert not first.path(key()).exists()  # record mode over an older file: the file goes
    assert first.append(key(), said("packed again")) and first.load(key()) == said("packed again")
    assert RunCache(tmp_path).load(key()) == said("packed again")  # the last record in a pack
    assert RunCache(tmp_path).append(key(), said("a later kernel"))
    assert len(packs(tmp_path)) == 2 and RunCache(tmp_path).load(key()) == said("a later kernel")  # the later pack
    assert first.store(key(), said("a file again")) and RunCache(tmp_path).load(key()) == said("a file again")


def test_a_torn_pack_keeps_the_records_before_the_tear(tmp_path: Path) -> None:
    cache = RunCache(tmp_path)
    for n in range(3):
        cache.append(key(repeat=n), said(f"row {n}"))
    (pack,) = packs(tmp_path)
    pack.write_bytes(pack.read_bytes()[:-7])  # a kernel killed while it wrote the last row
    fresh = RunCache(tmp_path)
    assert fresh.load(key(repeat=0)) == said("row 0") and fresh.load(key(repeat=1)) == said("row 1")
    assert fresh.load(key(repeat=2)) is None  # a miss, not an error: the row runs again


def test_a_damaged_header_ends_the_scan_and_nothing_else(tmp_path: Path) -> None:
    cache = RunCache(tmp_path)
    for n in range(3):
        cache.append(key(repeat=n), said(f"row {n}"))
    (pack,) = packs(tmp_path)
    data = pack.read_bytes()
    second = data.index(b"granite-recording", 1)
    pack.write_bytes(data[:second] + b"granite-recordinG" + data[second + 17:])
    fresh = RunCache(tmp_path)
    assert fresh.load(key(repeat=0)) == said("row 0")
    assert fresh.load(key(repeat=1)) is None and fresh.load(key(repeat=2)) is None


def _payload(document: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(document).encode())


DAMAGED: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda raw: raw[: len(raw) // 2],
    "not gzip": lambda raw: b'{"format": 2}',
    "not json": lambda raw: gzip.compress(b"\xff\xfe not json"),
    "deep": lambda raw: gzip.compress(b"[" * 100_000),
    "another request's recording": lambda raw: _payload({**json.loads(gzip.decompress(raw)), "key": "0" * 64}),
    "a bomb": lambda raw: gzip.compress(b" " * (2 << 20)),
}


@pytest.mark.parametrize("damage", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_record_raises_naming_its_pack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 damage: Callable[[bytes], bytes]) -> None:
    monkeypatch.setattr(_cache, "_MAX_INFLATED", 1 << 20)  # the real bound is 256 MB: too slow to build here
    cache = RunCache(tmp_path)
    cache.append(key(), said("whole"))
    (pack,) = packs(tmp_path)
    ((record_key, payload),) = packed_records(pack)
    bad = damage(payload)
    pack.write_bytes(_pack.header(record_key, len(bad)) + bad)  # a record whose header and length are whole
    with pytest.raises(CacheCorruptError) as caught:
        RunCache(tmp_path).load(key())
    assert caught.value.path == pack and str(pack) in caught.value.message


def test_a_record_longer_than_the_cap_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cache, "MAX_FILE_BYTES", 64)
    cache = RunCache(tmp_path)
    cache.append(key(), said("a row whose recording is over 64 bytes"))
    with pytest.raises(CacheCorruptError, match="over the 0 MB limit"):
        RunCache(tmp_path).load(key())


def test_packs_that_are_not_regular_files_are_not_read(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    RunCache(elsewhere).append(key(), said("outside the cache"))
    (outside,) = packs(elsewhere)
    folder = tmp_path / "cache" / "packs"
    folder.mkdir(parents=True)
    (folder / "a.pack").symlink_to(outside)  # a link out of the directory, to a whole pack
    (folder / "b.pack").symlink_to("/dev/zero")
    os.mkfifo(folder / "c.pack")  # reading it would wait for a writer forever
    (folder / "d.pack").mkdir()
    cache = RunCache(tmp_path / "cache")
    assert cache.load(key()) is None and cache.stats().entries == 0


def test_a_packs_folder_linked_out_of_the_directory_is_neither_read_nor_written(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    RunCache(elsewhere).append(key(repeat=0), said("outside the cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "packs").symlink_to(elsewhere / "packs")
    cache = RunCache(tmp_path / "cache")
    assert cache.load(key(repeat=0)) is None
    assert not cache.append(key(repeat=1), said("not written through a link"))
    assert [k for pack in packs(elsewhere) for k, _ in packed_records(pack)] == [key(repeat=0)]


def test_no_secret_reaches_a_pack(tmp_path: Path) -> None:
    cache = RunCache(tmp_path)
    assert cache.append(key(), leaky(), secrets=[SECRET])
    (pack,) = packs(tmp_path)
    stored = gzip.decompress(packed_records(pack)[0][1]).decode()
    assert TEST_KEY not in stored and SECRET not in stored and "Bearer" not in stored and "[redacted]" in stored
    split = recording(((0.1, TextDelta(SECRET[:9])), (0.2, TextDelta(SECRET[9:])), (0.3, Finish("stop"))))
    assert not cache.append(key(repeat=1), split, secrets=[SECRET])  # spread over two deltas: not written at all
    assert SECRET.encode() not in pack.read_bytes() and TEST_KEY.encode() not in pack.read_bytes()


def test_stats_and_clear_count_packed_recordings(tmp_path: Path) -> None:
    cache = RunCache(tmp_path)
    for n in range(2):
        cache.store(key(repeat=n), said("a file"))
    for n in range(2, 5):
        cache.append(key(repeat=n), said("packed"))
    (pack,) = packs(tmp_path)
    stats = cache.stats()
    assert stats.entries == 5 and stats.bytes == pack.stat().st_size + sum(cache.path(key(repeat=n)).stat().st_size for n in range(2))
    assert cache.clear() == 5 and not (tmp_path / "packs").exists() and cache.stats().entries == 0
    assert cache.load(key(repeat=3)) is None
    assert cache.append(key(repeat=3), said("after clearing")) and cache.load(key(repeat=3)) == said("after clearing")


def test_a_pack_removed_by_another_kernel_is_a_miss_then_made_again(tmp_path: Path) -> None:
    cache, reader = RunCache(tmp_path), RunCache(tmp_path)
    cache.append(key(repeat=0), said("first"))
    assert reader.load(key(repeat=0)) == said("first")
    RunCache(tmp_path).clear()  # %granite cache clear in another kernel
    assert reader.load(key(repeat=0)) is None and cache.load(key(repeat=0)) is None  # a miss, not a damaged recording
    assert cache.append(key(repeat=1), said("second"))
    assert RunCache(tmp_path).load(key(repeat=1)) == said("second") and len(packs(tmp_path)) == 1


def test_a_refused_pack_turns_recording_off_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def refuse(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_CREAT:
            raise PermissionError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse)
    cache = RunCache(tmp_path)
    assert not cache.append(key(), said("refused"))
    assert cache.recording_off == f"recording is off: {tmp_path} is read-only"
    monkeypatch.undo()
    assert not cache.append(key(), said("refused"))  # off stays off: one warning, not one per row
