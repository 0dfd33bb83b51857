"""Hostile files, secrets, probes and budgets: what a shared repository, a careless user or a lying server can do.

Recordings a repository ships may be symbolic links, FIFOs or huge sparse files; an attached document may hold the
API key; a server may stream the key back, claim a usage it did not deliver, bill NaN or a negative amount; a
``probes.json`` may come from another version; a budget may be set to nonsense.  Each ends in one clear message,
with nothing lost and with time and memory bounded.  Every test talks to a real HTTP server on 127.0.0.1 and
makes real links and FIFOs; nothing is mocked and no assertion bounds wall-clock time.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import CapturedIO

from granite_magic import GraniteClient, GraniteError, RetryPolicy
from granite_magic._cache import MAX_FILE_BYTES
from granite_magic._ledger import Ledger
from granite_magic.testing import FakeOpenRouter

from .conftest import KEY, TEST_KEY, magics_of, run, shown
from .hostile import SSE_HEADERS, HostileServer, Reply, finish_chunk, json_reply, sse_reply, text_chunk


def granite_lines(out: CapturedIO) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("granite:")]


def assert_no_traceback(out: CapturedIO) -> None:
    assert "Traceback" not in out.stderr + shown(out), out.stderr


# --- recordings a repository can ship -------------------------------------------------------------------------




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
    assert_no_traceback(out)
    assert "recordings" in out.stdout
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


# --- secrets ---------------------------------------------------------------------------------------------------





def _pieces(text: str, cuts: list[int]) -> list[str]:
    return [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)]) if b > a]


ECHO = f"Your key is {KEY}, and again:{KEY}."
SPLITS = {
    "whole": [],
    "after-s": [ECHO.index(KEY) + 1],
    "after-sk-": [ECHO.index(KEY) + 3],
    "after-sk-o": [ECHO.index(KEY) + 4],
    "mid-key": [ECHO.index(KEY) + 17],
    "last-char": [ECHO.index(KEY) + len(KEY) - 1],
    "char-by-char": list(range(1, len(ECHO))),
}


@pytest.mark.parametrize("cuts", SPLITS.values(), ids=SPLITS.keys())
def test_a_key_streamed_back_as_text_is_redacted_however_it_is_split(hostile: HostileServer, make_client: Callable[..., GraniteClient],
                                                                     cuts: list[int]) -> None:
    """The reply text, every live update and ``Result.text`` hold no key, whatever the deltas; the text around the
    key arrives whole."""
    hostile.default = sse_reply(*(text_chunk(piece) for piece in _pieces(ECHO, cuts)), finish_chunk())
    seen: list[str] = []
    result = make_client(hostile.base_url).chat("hi", on_update=lambda progress: seen.append(progress.text))
    assert not result.partial
    for text in [result.text, *seen, repr(result.to_dict())]:
        assert KEY not in text and KEY[:8] not in text, text
    assert result.text.startswith("Your key is ") and result.text.endswith(".") and ", and again:" in result.text
    assert result.text.count("[redacted]") == 2


def _with_probability(piece: str) -> dict[str, Any]:
    chunk = text_chunk(piece)
    chunk["choices"][0]["logprobs"] = {"content": [{"token": piece, "logprob": -0.1, "bytes": None,
                                                    "top_logprobs": [{"token": piece, "logprob": -0.1, "bytes": None}]}]}
    return chunk


def test_a_key_streamed_back_leaves_no_trace_in_token_probabilities(hostile: HostileServer,
                                                                    make_client: Callable[..., GraniteClient]) -> None:
    """Token texts would spell the key the text no longer shows: from where it starts, no probabilities are kept
    (the reply's text shows unshaded there), and the text before it keeps its own."""
    pieces = _pieces(ECHO, list(range(3, len(ECHO), 4)))
    hostile.default = sse_reply(*(_with_probability(piece) for piece in pieces), finish_chunk())
    result = make_client(hostile.base_url).chat("hi", logprobs=True, top_logprobs=1)
    assert result.text.count("[redacted]") == 2 and KEY[:8] not in repr(result.to_dict())
    known = [token for token in result.tokens if token.known]
    assert known and "".join(token.text for token in known) == ECHO[: len("".join(t.text for t in known))]  # the start
    assert KEY[:8] not in "".join(token.text for token in result.tokens)
    assert KEY[:8] not in "".join(alt.text for token in result.tokens for alt in token.top)


def test_a_key_streamed_back_is_redacted_in_a_cell_and_its_recording(ip: InteractiveShell, hostile: HostileServer, cached: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What the cell shows, ``-o`` and the recording hold no key; replaying the recording gives the same text."""
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    magics = magics_of(ip)
    magics.base_url = hostile.base_url
    hostile.default = sse_reply(*(text_chunk(piece) for piece in _pieces(ECHO, list(range(3, len(ECHO), 5)))), finish_chunk())
    try:
        out = run(ip, "-o echoed", "Repeat my key")
        again = run(ip, "-o replayed", "Repeat my key")
    finally:
        magics.session.clients.clear()
    echoed = ip.user_ns["echoed"].text
    assert KEY not in shown(out) + out.stderr + echoed and echoed.count("[redacted]") == 2
    assert ip.user_ns["replayed"].cached and ip.user_ns["replayed"].text == echoed and KEY not in shown(again)
    import gzip

    (recording,) = Path(cached.cache_dir).rglob("*.json.gz")
    assert KEY not in gzip.decompress(recording.read_bytes()).decode()


def test_the_end_of_a_reply_that_is_the_start_of_the_key_is_redacted(hostile: HostileServer,
                                                                      make_client: Callable[..., GraniteClient]) -> None:
    """Text held back because it may be the key is never lost: at the end it is shown, redacted, even when the
    stream fails."""
    hostile.default = sse_reply(text_chunk("cut at sk-or-v1-hos"), done=False)  # no finish: the connection just ends
    exc = _failure(lambda: make_client(hostile.base_url).chat("hi"))
    assert exc.result is not None and exc.result.text == "cut at [redacted]"
    hostile.default = sse_reply(text_chunk("a task-o"), text_chunk("riented plan"), finish_chunk())
    assert make_client(hostile.base_url).chat("hi").text == "a task-oriented plan"


def _failure(call: Callable[[], object]) -> GraniteError:
    try:
        call()
    except GraniteError as exc:
        return exc
    pytest.fail("expected a GraniteError")


def _headers_in_chain(exc: BaseException) -> list[str]:
    """Every Authorization header reachable from ``exc`` through its causes and contexts."""
    found, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        try:
            request = exc.request  # type: ignore[attr-defined]
        except (AttributeError, RuntimeError):  # httpx raises RuntimeError when an error has no request
            request = None
        if request is not None:
            found.append(request.headers.get("authorization", ""))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return found


def test_no_client_error_leads_back_to_the_authorization_header(hostile: HostileServer,
                                                                make_client: Callable[..., GraniteClient]) -> None:
    """A refused connection, a dropped stream, a failed listing and a failed credit lookup: no exception in the
    chain holds the request (whose headers carry the key)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    refused = make_client(closed, retry=RetryPolicy(max_attempts=1))
    hostile.default = Reply(headers={**SSE_HEADERS, "Content-Encoding": "gzip"}, pieces=[b"this is not gzip"])  # httpx.DecodingError
    calls = [lambda: refused.chat("hi"), refused.models, lambda: refused.loop.run(refused.credits()),
             lambda: make_client(hostile.base_url).chat("hi")]
    for call in calls:
        exc = _failure(call)
        assert all(KEY not in header for header in _headers_in_chain(exc)), type(exc).__name__
        assert exc.__context__ is None or not _headers_in_chain(exc.__context__)


def test_docs_holding_the_key_are_refused_and_a_dry_run_never_shows_it(ip: InteractiveShell, server: FakeOpenRouter,
                                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--dry-run --docs my.env``: one line naming the file, no key anywhere, nothing sent; the same cell without
    ``--dry-run`` is refused the same way.  A ``{name}`` that holds the key is refused too."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.env").write_text(f"OPENROUTER_API_KEY={TEST_KEY}\nDEBUG=1\n")
    (tmp_path / "notes.md").write_text("# notes\n")
    for line in ("--dry-run --docs my.env", "--docs notes.md --docs my.env"):
        out = run(ip, line, "Summarise")
        assert_no_traceback(out)
        assert TEST_KEY not in shown(out) + out.stderr
        (refusal,) = granite_lines(out)
        assert "my.env" in refusal and "API key" in refusal and "nothing was sent" in refusal, refusal
    ip.user_ns["settings"] = {"key": TEST_KEY}
    try:
        out = run(ip, "--dry-run", "Check {settings}")
        (refusal,) = granite_lines(out)
        assert "prompt" in refusal and "API key" in refusal and TEST_KEY not in shown(out) + out.stderr
    finally:
        del ip.user_ns["settings"]
    assert server.chat_requests == []
    out = run(ip, "--dry-run --docs notes.md", "Summarise")  # the check refuses only what holds the key
    assert granite_lines(out) == [] and "notes" in shown(out)


# --- smaller: messages ------------------------------------------------------------------------------------------

CLOUDFLARE = (b"<!DOCTYPE html>\n<!--[if lt IE 7]> <html class=\"no-js ie6 oldie\" lang=\"en-US\"> <![endif]-->\n"
              b"<!--[if IE 7]>    <html class=\"no-js ie7 oldie\" lang=\"en-US\"> <![endif]-->\n"
              b"<!--[if IE 8]>    <html class=\"no-js ie8 oldie\" lang=\"en-US\"> <![endif]-->\n"
              b"<!--[if gt IE 8]><!--> <html class=\"no-js\" lang=\"en-US\"> <!--<![endif]-->\n"
              b"<head><title>example.com | 500: Internal server error</title><style>body{margin:0}</style></head>\n"
              b"<body><h1>Internal server error</h1><script>var a = 1 < 2;</script></body></html>\n")


def test_an_html_500_page_is_named_by_its_title_not_quoted(hostile: HostileServer, make_client: Callable[..., GraniteClient]) -> None:
    hostile.default = Reply(status=500, headers={"Content-Type": "text/html"}, pieces=[CLOUDFLARE], chunked=False)
    exc = _failure(lambda: make_client(hostile.base_url).chat("hi"))
    message = str(exc)
    assert "500: Internal server error" in message and "<" not in message and "endif" not in message, message
    assert len(message) < 200, message


# --- the budget ----------------------------------------------------------------------------------------------------

PRICED = json_reply(200, {"data": [{"id": "hostile/model", "context_length": 8000, "pricing": {"prompt": "0.000001", "completion": "0.000002"},
                                    "top_provider": {"max_completion_tokens": 100}}]})


def _billed(cost: Any) -> Reply:
    usage = {"id": "gen-hostile", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "cost": cost}}
    return sse_reply(text_chunk("Hello "), text_chunk("world."), finish_chunk(), usage)


@pytest.fixture
def hostile_cells(ip: InteractiveShell, hostile: HostileServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    magics = magics_of(ip)
    magics.base_url = hostile.base_url
    before = magics.session.ledger
    magics.session.ledger = Ledger()  # this test's runs only
    yield magics
    magics.budget_usd = None
    magics.session.ledger = before
    magics.session.clients.clear()


@pytest.mark.parametrize("cost", [math.nan, -999.999999, math.inf, "NaN", "-1"], ids=["nan", "negative", "inf", "nan-text", "negative-text"])
def test_a_billed_cost_that_is_not_an_amount_is_unknown(ip: InteractiveShell, hostile: HostileServer, hostile_cells: Any,
                                                        cost: Any) -> None:
    """The reply is kept, its cost is None (not NaN, not negative), the status line never shows "$nan" or a negative
    amount, and the ledger marks the run; the budget is not switched off: the next cell is still checked."""
    hostile.models = PRICED
    hostile.default = _billed(cost)
    hostile_cells.budget_usd = 0.01
    out = run(ip, "-m hostile/model --max-tokens 10 -o r", "Hi")
    assert ip.user_ns["r"].text == "Hello world." and ip.user_ns["r"].cost is None
    text = shown(out) + out.stderr
    assert "nan" not in text.lower() and "$-" not in text and "inf" not in text.lower(), text
    assert "of $0.01 budget spent (1 run without a valid reported cost, counted at its worst case)" in text, text
    (entry,) = hostile_cells.session.ledger.entries
    assert entry.cost_source == "unknown" and entry.cost == 0
    assert entry.bound is not None and entry.bound > 0 and hostile_cells.session.ledger.total_cost == entry.bound  # not $0
    hostile_cells.budget_usd = 0.000001  # below this request's worst case: refused, not sent
    sent = len(hostile.chat_requests)
    (line,) = granite_lines(run(ip, "-m hostile/model --max-tokens 10", "Hi again"))
    assert "budget would not hold" in line and "nothing was sent" in line, line
    assert len(hostile.chat_requests) == sent
    usage = run_line(ip, "usage")
    assert_no_traceback(usage)
    assert "without a valid reported cost" in usage.stdout and "nan" not in usage.stdout.lower()


@pytest.mark.parametrize("price", ["NaN", "-0.000001", "Infinity", "1e400"], ids=["nan", "negative", "infinity", "overflow"])
def test_a_price_that_is_not_an_amount_leaves_no_bound_and_the_cell_is_refused(ip: InteractiveShell, hostile: HostileServer,
                                                                               hostile_cells: Any, price: str) -> None:
    hostile.models = json_reply(200, {"data": [{"id": "hostile/model", "pricing": {"prompt": price, "completion": price},
                                                "context_length": 8000}]})
    hostile_cells.budget_usd = 0.01
    (line,) = granite_lines(run(ip, "-m hostile/model --max-tokens 10", "Hi"))
    assert "worst-case cost" in line and "unknown" in line and "nothing was sent" in line, line
    assert hostile.chat_requests == []
    models = run_line(ip, "models")
    assert_no_traceback(models)
    assert "nan" not in shown(models).lower()


def test_a_run_of_unknown_cost_counts_at_its_bound() -> None:
    """Given the worst case checked before the run, the budget counts it instead of refusing everything after."""
    from granite_magic import Result, Usage
    from granite_magic._ledger import check_budget

    ledger = Ledger()
    ledger.record(Result(text="hi", chunks=1, usage=Usage(completion_tokens=1, cost=math.nan)), backend="http", kind="single",
                  bound=0.004)
    ledger.record(Result(text="hi", chunks=1, usage=Usage(completion_tokens=1, cost=0.001)), backend="http", kind="single")
    ledger.record(Result(error="refused before anything was generated", ended="failed"), backend="http", kind="single")
    assert ledger.total_cost == pytest.approx(0.005)
    assert [entry.cost_source for entry in ledger.entries] == ["unknown", "stream", "failed"]
    assert ledger.budget_line(0.01) == "$0.005000 of $0.01 budget spent (1 run without a valid reported cost, counted at its worst case)"
    check_budget(ledger.total_cost, 0.004, 0.01)
    with pytest.raises(GraniteError, match="would not hold"):
        check_budget(ledger.total_cost, 0.006, 0.01)


@pytest.mark.parametrize("value", [-1, math.nan, math.inf], ids=["negative", "nan", "infinity"])
def test_an_invalid_budget_is_refused_where_it_is_set(ip: InteractiveShell, server: FakeOpenRouter, value: float) -> None:
    """``%config`` refuses it in one line and keeps the previous value; ``%granite usage`` and cells go on."""
    magics = magics_of(ip)
    magics.budget_usd = 0.5
    try:
        out = run_line(ip, f"config GraniteMagics.budget_usd = {value!r}".replace("nan", "float('nan')").replace("inf", "float('inf')"),
                       magic="config")
        (line,) = granite_lines(out)
        assert "budget_usd" in line and "it stays 0.5" in line, line
        assert magics.budget_usd == 0.5 and magics.session.settings.budget_usd == 0.5
        usage = run_line(ip, "usage")
        assert_no_traceback(usage)
        assert "of a $0.50 budget" in usage.stdout
        cell = run(ip, "--max-tokens 5 -o r", "Hi")
        assert_no_traceback(cell)
        assert ip.user_ns["r"].text
    finally:
        magics.budget_usd = None
        ip.config.GraniteMagics.pop("budget_usd", None)  # %config keeps what it was given in the shell's configuration


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_an_invalid_budget_in_the_environment_is_refused_at_load(ip: InteractiveShell, server: FakeOpenRouter,
                                                                  monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """``GRANITE_BUDGET_USD=abc``: one line when the extension loads, naming the variable; then line magics and cells
    work (no budget is set: the line says so)."""
    from IPython.utils.capture import capture_output

    monkeypatch.setenv("GRANITE_BUDGET_USD", value)
    try:
        with capture_output() as loading:
            ip.run_line_magic("unload_ext", "granite_magic")
            ip.run_line_magic("load_ext", "granite_magic")
        (line,) = granite_lines(loading)
        assert "GRANITE_BUDGET_USD" in line and repr(value) in line and "ignored" in line, line
        magics = magics_of(ip)
        magics.base_url = server.base_url
        magics.live = "terminal"
        usage = run_line(ip, "usage")
        assert_no_traceback(usage)
        assert granite_lines(usage) == []
        cell = run(ip, "--max-tokens 5 -o r", "Hi")
        assert_no_traceback(cell)
        assert ip.user_ns["r"].text and granite_lines(cell) == []
    finally:
        monkeypatch.delenv("GRANITE_BUDGET_USD")
        ip.run_line_magic("unload_ext", "granite_magic")
        ip.run_line_magic("load_ext", "granite_magic")


def test_a_huge_budget_prints_in_a_few_digits(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    magics = magics_of(ip)
    magics.budget_usd = 1e308
    try:
        out = run(ip, "--max-tokens 5", "Hi")
        usage = run_line(ip, "usage")
    finally:
        magics.budget_usd = None
    text = shown(out) + out.stderr + usage.stdout
    assert "$1e+308 budget" in text and "of a $1e+308 budget" in usage.stdout, text
    assert not re.search(r"\d{20}", text), text


# --- the probe -----------------------------------------------------------------------------------------------------

WORDS = ["the", "river", "carved", "stone", "slowly", "one", "patient", "season", "at", "a", "time", "while", "light", "moved"]


def _probe_answers(request: Any) -> Reply:
    """A provider whose usage lies: max_tokens 3 gets 40 text chunks and a claim of 1 completion token."""
    body = request.json or {}
    if body.get("max_tokens") == 3:
        chunks = [text_chunk(f"{WORDS[i % len(WORDS)]} ") for i in range(40)]
        claim = {"id": "gen-hostile", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}}
        return sse_reply(*chunks, finish_chunk("length"), claim)
    stop = body.get("stop") or []
    words = [word for word in WORDS[:12]]
    if stop:
        words = words[: words.index(stop[0])] if stop[0] in words else words
    return sse_reply(*(text_chunk(f"{word} ") for word in words), finish_chunk())


@pytest.fixture
def probes_at(ip: InteractiveShell, tmp_path: Path) -> Iterator[Path]:
    from granite_magic._probe import ProbeStore

    magics = magics_of(ip)
    before = magics.session.probes
    magics.session.probes = ProbeStore(tmp_path / "probes.json")
    yield tmp_path / "probes.json"
    magics.session.probes = before


def test_the_probe_judges_max_tokens_by_the_text_not_the_usage_claim(ip: InteractiveShell, hostile: HostileServer, probes_at: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    magics = magics_of(ip)
    magics.base_url = hostile.base_url
    hostile.default = _probe_answers
    try:
        out = run_line(ip, "probe hostile/model")
    finally:
        magics.session.clients.clear()
    assert_no_traceback(out)
    (report,) = magics.session.probes.find(hostile.base_url, "hostile/model")
    seen = report.get("max_tokens")
    assert seen is not None and seen.observed == "ignored", seen
    assert "40 words" in seen.evidence and "claimed 1" in seen.evidence, seen.evidence


PROBE_REPORT = {"host": "127.0.0.1", "model": "ibm-granite/granite-4.0-h-micro", "provider": "Fake", "date": "2026-01-01",
                "observations": [{"parameter": "seed", "declared": True, "observed": "ignored", "evidence": "seen"}],
                "cost": 0.0001, "requests": 9}
PROBE_FILES: dict[str, Any] = {
    "earlier-layout-missing-field": {"127.0.0.1|m|Fake": {k: v for k, v in PROBE_REPORT.items() if k != "requests"}},
    "another-format": {"format": 99, "reports": {}},
    "missing-field": {"format": 1, "reports": {"k": {k: v for k, v in PROBE_REPORT.items() if k != "date"}}},
    "wrong-types": {"format": 1, "reports": {"k": {**PROBE_REPORT, "observations": "many", "requests": "nine"}}},
    "bad-observation": {"format": 1, "reports": {"k": {**PROBE_REPORT, "observations": [{"parameter": "seed", "observed": 3}]}}},
    "a-list": [1, 2, 3],
    "not-json": "{{{ not json",
}


@pytest.mark.parametrize("content", PROBE_FILES.values(), ids=PROBE_FILES.keys())
def test_a_probes_file_from_another_version_is_ignored_with_one_warning(ip: InteractiveShell, server: FakeOpenRouter,
                                                                         probes_at: Path, content: Any,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Cells that set a parameter and ``%granite models`` run in full; the file is warned about once; the next probe
    writes it anew, with its format."""
    probes_at.write_text(content if isinstance(content, str) else json.dumps(content))
    with caplog.at_level("WARNING", logger="granite_magic"):
        for _ in range(2):
            out = run(ip, "--seed 3 --max-tokens 5 -o r", "Hi")
            assert_no_traceback(out)
            assert ip.user_ns["r"].text and not ip.user_ns["r"].partial
        models = run_line(ip, "models")
    assert_no_traceback(models)
    assert "not probed" in shown(models)
    warnings = [record.getMessage() for record in caplog.records if "probe reports" in record.getMessage()]
    assert len(warnings) == 1 and "ignored" in warnings[0] and "probes.json" in warnings[0], warnings
    run_line(ip, "probe")
    written = json.loads(probes_at.read_text())
    assert written["format"] == 1 and len(written["reports"]) == 1


EXTRA = {**PROBE_REPORT, "confidence": 0.9, "observations": [{**PROBE_REPORT["observations"][0], "samples": 3}]}


@pytest.mark.parametrize("content", [{"format": 1, "reports": {"k": EXTRA}}, {"k": EXTRA}], ids=["format-1", "before-formats"])
def test_a_probes_file_with_extra_fields_is_read(probes_at: Path, ip: InteractiveShell, content: Any,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Fields a later version adds are left aside, and the reports (in this format or the one before formats) read."""
    probes_at.write_text(json.dumps(content))
    with caplog.at_level("WARNING", logger="granite_magic"):
        (report,) = magics_of(ip).session.probes.find("http://127.0.0.1/v1", PROBE_REPORT["model"])
    seen = report.get("seed")
    assert seen is not None and seen.observed == "ignored" and report.requests == 9 and caplog.records == []


# --- smaller: the context refusal, a newline in --stop ------------------------------------------------------------


def test_the_context_refusal_names_max_tokens_only_when_it_was_set(ip: InteractiveShell, hostile: HostileServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    magics = magics_of(ip)
    magics.base_url = hostile.base_url
    hostile.models = json_reply(200, {"data": [{"id": "small/model", "context_length": 4000}]})
    prompt = "word " * 8000  # about 10,000 tokens by the 4-characters estimate
    try:
        (unset,) = granite_lines(run(ip, "-m small/model", prompt))
        (given,) = granite_lines(run(ip, "-m small/model --max-tokens 500", prompt))
    finally:
        magics.session.clients.clear()
    assert "max_tokens" not in unset and "max-tokens" not in unset and "4,000-token context" in unset, unset
    assert "500" in given and "4,000-token context" in given, given
    assert hostile.chat_requests == []


def test_stop_reads_backslash_n_as_a_newline_and_copies_back(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    r"""``--stop '\n'`` sends a newline, ``--stop '\\n'`` a backslash and an n, ``\d`` stays as typed; ``to_cell`` writes
    them back on one line, and the option help says so."""
    from granite_magic._cell import parse_cell, to_cell

    run(ip, r"--stop '\n' --stop '\\n' --stop 'a\d' --stop '\t.' --max-tokens 5", "Hi")
    assert server.chat_requests[-1].body["stop"] == ["\n", "\\n", "a\\d", "\t."]
    request = parse_cell(r"--stop '\n' --stop '\\n' --stop 'a\d'", "Hi", {})
    cell = to_cell(request)
    assert cell.count("\n") == 1 and cell.endswith("\nHi"), cell  # the options stay on the first line
    assert parse_cell(cell.split("\n", 1)[0].removeprefix("%%granite "), "Hi", {}).turn.sampling == request.turn.sampling
    from granite_magic._magic import help_text

    assert r"\n is a newline" in help_text()
