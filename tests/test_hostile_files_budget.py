"""Hostile files, secrets, probes and budgets: what a shared repository, a careless user or a lying server can do.

Recordings a repository ships may be symbolic links, FIFOs or huge sparse files; an attached document may hold the
API key; a server may stream the key back, claim a usage it did not deliver, bill NaN or a negative amount; a
``probes.json`` may come from another version; a budget may be set to nonsense.  Each ends in one clear message,
with nothing lost and with time and memory bounded.  Every test talks to a real HTTP server on 127.0.0.1 and
makes real links and FIFOs; nothing is mocked and no assertion bounds wall-clock time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import CapturedIO

from granite_magic import RetryPolicy
from granite_magic._cache import MAX_FILE_BYTES
from granite_magic.testing import FakeOpenRouter

from .conftest import magics_of, run, shown

FAST_RETRY = RetryPolicy(base_delay_s=0.01, max_delay_s=0.05)


def granite_lines(out: CapturedIO) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("granite:")]


def assert_no_traceback(out: CapturedIO) -> None:
    assert "Traceback" not in out.stderr + shown(out), out.stderr


# --- recordings a repository can ship -------------------------------------------------------------------------


@pytest.fixture
def cached(ip: InteractiveShell, tmp_path: Path) -> Iterator[Any]:
    magics = magics_of(ip)
    magics.cache_dir = str(tmp_path / "recordings")
    magics.cache = "auto"
    yield magics
    magics.cache = ""
    magics.cache_dir = ""


def _dev_zero(path: Path, tmp: Path) -> None:
    path.symlink_to("/dev/zero")


def _fifo(path: Path, tmp: Path) -> None:
    os.mkfifo(path)


def _loop(path: Path, tmp: Path) -> None:
    path.symlink_to(path.name)


def _dangling(path: Path, tmp: Path) -> None:
    path.symlink_to("nowhere.json.gz")  # inside the directory, to nothing


def _dangling_out(path: Path, tmp: Path) -> None:
    path.symlink_to(tmp / "nowhere.json.gz")  # a recording would be written there if the link were followed


def _outside(path: Path, tmp: Path) -> None:
    secret = tmp / "elsewhere.json.gz"  # a regular file, but outside the cache directory
    secret.write_bytes(path.with_name("kept").read_bytes())
    path.symlink_to(secret)


def _directory(path: Path, tmp: Path) -> None:
    path.mkdir()


def _sparse(path: Path, tmp: Path) -> None:
    with open(path, "wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)  # sparse: costs nothing on disk, and must cost nothing to refuse


HOSTILE_RECORDINGS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "link-to-dev-zero": (_dev_zero, "outside the cache directory"),
    "fifo": (_fifo, "FIFO"),
    "link-loop": (_loop, "loops"),
    "dangling-link": (_dangling, "link to nothing"),
    "dangling-link-out": (_dangling_out, "outside the cache directory"),
    "link-out-of-the-directory": (_outside, "outside the cache directory"),
    "directory": (_directory, "directory"),
    "sparse-over-the-cap": (_sparse, "over the"),
}


def _plant(cached: Any, ip: InteractiveShell, tmp_path: Path, make: Callable[[Path, Path], None]) -> Path:
    """Record one run, then put the hostile thing where its recording was."""
    run(ip, "--seed 3 --max-tokens 8 -o first", "Hi")
    (path,) = Path(cached.cache_dir).rglob("*.json.gz")
    kept = path.with_name("kept")
    path.rename(kept)
    make(path, tmp_path)
    return path


@pytest.mark.parametrize(("make", "reason"), HOSTILE_RECORDINGS.values(), ids=HOSTILE_RECORDINGS.keys())
def test_a_hostile_recording_is_one_warning_and_the_cell_goes_live(ip: InteractiveShell, server: FakeOpenRouter, cached: Any,
                                                                   tmp_path: Path, make: Callable[[Path, Path], None],
                                                                   reason: str) -> None:
    """Auto mode: one warning naming the file and why, the reply runs live in full, and its recording replaces the
    hostile entry (a link is replaced, never written through)."""
    path = _plant(cached, ip, tmp_path, make)
    sent = len(server.chat_requests)
    out = run(ip, "--seed 3 --max-tokens 8 -o again", "Hi")
    assert_no_traceback(out)
    (warning,) = granite_lines(out)
    assert "running live instead" in warning and reason in warning and path.name in warning, warning
    assert len(server.chat_requests) == sent + 1
    assert ip.user_ns["again"].text == ip.user_ns["first"].text and not ip.user_ns["again"].partial
    if make is not _directory:  # a directory in its place cannot be renamed over: that run stays unrecorded
        assert path.is_file() and not path.is_symlink()
        out = run(ip, "--seed 3 --max-tokens 8 -o third", "Hi")
        assert ip.user_ns["third"].cached and granite_lines(out) == []
    assert (tmp_path / "nowhere.json.gz").exists() is False  # nothing was written through a link


@pytest.mark.parametrize(("make", "reason"), HOSTILE_RECORDINGS.values(), ids=HOSTILE_RECORDINGS.keys())
def test_a_hostile_recording_is_refused_in_replay_mode(ip: InteractiveShell, server: FakeOpenRouter, cached: Any,
                                                       tmp_path: Path, make: Callable[[Path, Path], None], reason: str) -> None:
    path = _plant(cached, ip, tmp_path, make)
    sent = len(server.chat_requests)
    out = run(ip, "--cache replay --seed 3 --max-tokens 8", "Hi")
    assert_no_traceback(out)
    (line,) = granite_lines(out)
    assert "unusable" in line and reason in line and path.name in line, line
    assert len(server.chat_requests) == sent


def test_cache_stats_survive_hostile_entries(ip: InteractiveShell, server: FakeOpenRouter, cached: Any, tmp_path: Path) -> None:
    """``%granite cache`` counts a looping link or a FIFO as an entry of its own size; ``clear`` removes the links only."""
    path = _plant(cached, ip, tmp_path, _loop)
    os.mkfifo(path.with_name("0" * 64 + ".json.gz"))
    target = tmp_path / "target.json.gz"
    target.write_bytes(b"keep me")
    path.with_name("1" * 64 + ".json.gz").symlink_to(target)
    out = run_line(ip, "cache")
    assert_no_traceback(out) and "recordings" in out.stdout
    run_line(ip, "cache clear")
    assert target.read_bytes() == b"keep me"


def run_line(ip: InteractiveShell, line: str, *, magic: str = "granite") -> CapturedIO:
    """``%granite line`` (or another line magic); an exception escaping it (a traceback in a notebook) fails the test."""
    from IPython.utils.capture import capture_output

    with capture_output() as captured:
        try:
            ip.run_line_magic(magic, line.removeprefix(f"{magic} "))
        except Exception as exc:
            pytest.fail(f"%{magic} {line} raised {type(exc).__name__}: {exc}")
    return captured


def test_models_json_that_is_a_fifo_or_a_link_is_neither_waited_on_nor_written_through(tmp_path: Path) -> None:
    """The local backend's ``models.json`` ships with recordings: a FIFO is not waited on, and a link shipped in its
    place is replaced by the new file, never written through to what it points at."""
    from granite_magic._cache import RunCache
    from granite_magic._cache_use import local_fingerprint

    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(100))
    cache = RunCache(tmp_path / "recordings")
    cache.directory.mkdir()
    os.mkfifo(cache.directory / "models.json")
    assert local_fingerprint("m", None, cache) is None  # would hang reading the FIFO
    (cache.directory / "models.json").unlink()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (cache.directory / "models.json").symlink_to(victim)
    fingerprint = local_fingerprint("m", model, cache)
    assert victim.read_text() == "precious"
    assert json.loads((cache.directory / "models.json").read_text()) == {"m": fingerprint}
    (cache.directory / "models.json").unlink()
    (cache.directory / "models.json").symlink_to("/dev/zero")
    assert local_fingerprint("m", None, cache) is None  # not a 2 GB read ending in MemoryError


# --- documents: devices, FIFOs, loops ----------------------------------------------------------------------------

ODD_DOCUMENTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "dev-zero": (lambda path: path.symlink_to("/dev/zero"), "it is a character device, not a regular file"),
    "fifo": (lambda path: os.mkfifo(path), "it is a FIFO (a named pipe), not a regular file"),
    "link-loop": (lambda path: path.symlink_to(path.name), "symbolic link that loops"),
    "dangling-link": (lambda path: path.symlink_to("gone.txt"), "symbolic link to gone.txt, which does not exist"),
    "directory": (lambda path: path.mkdir(), "it is a directory"),
}


@pytest.mark.parametrize(("make", "said"), ODD_DOCUMENTS.values(), ids=ODD_DOCUMENTS.keys())
def test_docs_name_what_a_path_is(ip: InteractiveShell, server: FakeOpenRouter, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, make: Callable[[Path], None], said: str) -> None:
    """``--docs`` on a device, a FIFO, a looping or dangling link or a directory: one line saying which it is."""
    monkeypatch.chdir(tmp_path)
    make(tmp_path / "notes.txt")
    out = run(ip, "--docs notes.txt", "Summarise")
    assert_no_traceback(out)
    (line,) = granite_lines(out)
    assert "notes.txt" in line and said in line and "nothing was sent" in line, line
    assert server.chat_requests == []
