"""Robustness specifications: the client against a hostile server, the magic against bad input.

The contract: every failure raises a ``GraniteError`` subclass (never an httpx,
Attribute, Type or Value error) whose ``result`` keeps the text that arrived
before it (``partial`` True, ``ended`` "failed" or "interrupted"), with a short
message that never holds the API key.  Every test talks to a real HTTP server on
127.0.0.1 (``tests/hostile.py``); nothing is mocked, no test sleeps, and no
assertion bounds wall-clock time.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import CapturedIO, capture_output

import granite_magic
from granite_magic import AuthenticationError, GraniteClient, GraniteError, InvalidParameterError, Result, StallError

from .conftest import KEY, run, shown
from .hostile import (
    DONE,
    SSE_HEADERS,
    HostileServer,
    Reply,
    endless_line,
    event,
    finish_chunk,
    json_reply,
    normal_reply,
    sse_reply,
    text_chunk,
    trickle,
)

if TYPE_CHECKING:
    from granite_magic.testing import FakeOpenRouter

HELLO = (text_chunk("Hel"), text_chunk("lo "))  # two good chunks before the fault: "Hello " must be kept
FULL = "Hello world."  # HELLO, then "world." if the fault is skipped

T = TypeVar("T")


# --- fixtures and helpers -----------------------------------------------------------------




@pytest.fixture
def client(hostile: HostileServer, make_client: Callable[..., GraniteClient]) -> GraniteClient:
    """A client of the hostile server (shadows conftest's client of the fake OpenRouter)."""
    return make_client(hostile.base_url)


def outcome(call: Callable[[], T]) -> T | GraniteError:
    """What ``call`` returned, or the GraniteError it raised; any other exception fails the test."""
    try:
        return call()
    except GraniteError as exc:
        return exc
    except Exception as exc:
        pytest.fail(f"raised {type(exc).__module__}.{type(exc).__name__}, not a GraniteError: {exc}")


def failure(call: Callable[[], object], kind: type[GraniteError] = GraniteError) -> GraniteError:
    """The ``kind`` of GraniteError that ``call`` must raise."""
    got = outcome(call)
    if not isinstance(got, GraniteError):
        pytest.fail(f"expected {kind.__name__}, but the call returned {got!r}")
    if not isinstance(got, kind):
        pytest.fail(f"expected {kind.__name__}, got {type(got).__name__}: {got}")
    return got


def success(call: Callable[[], T]) -> T:
    got = outcome(call)
    if isinstance(got, GraniteError):
        pytest.fail(f"expected success, got {type(got).__name__}: {got}")
    return got


def exported(name: str) -> type[GraniteError]:
    """An error class the contract adds to ``granite_magic``."""
    kind = getattr(granite_magic, name, None)
    if not (isinstance(kind, type) and issubclass(kind, GraniteError)):
        pytest.fail(f"granite_magic.{name} is not exported as a GraniteError subclass")
    return kind


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert KEY not in text and "Bearer sk-or-" not in text, f"the API key leaked: {text[:300]!r}"


def assert_kept(exc: GraniteError, text: str) -> None:
    """The failure contract: the partial result is kept, the message is short, the key is nowhere."""
    result = exc.result
    assert isinstance(result, Result), f"{type(exc).__name__} carries no Result"
    assert result.text == text
    assert result.partial is True
    message = str(exc)
    assert_no_key(message, exc.message, repr(result), str(result), repr(result.to_dict()))
    assert len(message) < 400 and "Traceback" not in message, message
    assert getattr(result, "ended", None) in ("failed", "interrupted"), "Result.ended must say how the reply ended"


def assert_fine(result: Result, text: str = FULL) -> None:
    assert result.text == text and not result.partial
    assert_no_key(repr(result), str(result), repr(result.to_dict()))


# --- wrong shapes in the stream -------------------------------------------------------------

WRONG_SHAPES = {
    "choices-string": {"choices": "abc"},
    "delta-string": {"choices": [{"index": 0, "delta": "xyz", "finish_reason": None}]},
    "content-number": text_chunk(5),
}


def faulty_stream(bad: object) -> Reply:
    """Two good chunks, the bad one, then what a well-behaved reply would go on with."""
    return sse_reply(*HELLO, bad, text_chunk("world."), finish_chunk())


@pytest.mark.parametrize("bad", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_wrong_shaped_chunk_fails_cleanly_and_keeps_the_partial_text(hostile: HostileServer, client: GraniteClient, bad: object) -> None:
    """Valid JSON of the wrong shape where text could be lost is a GraniteError (ProtocolError or such), not a crash."""
    hostile.default = faulty_stream(bad)
    assert_kept(failure(lambda: client.chat("hi")), "Hello ")


def test_string_error_field_is_an_error_with_its_text(hostile: HostileServer, client: GraniteClient) -> None:
    """``"error": "kaput"`` (a string, not an object) still ends the reply with the server's words."""
    hostile.default = faulty_stream({"error": "kaput"})
    exc = failure(lambda: client.chat("hi"))
    assert "kaput" in str(exc)
    assert_kept(exc, "Hello ")


IGNORABLE = {
    "choices-null": {"choices": [None]},  # a null choice carries nothing: skipping it is allowed
    "usage-string": {"choices": [], "usage": "lots"},
    "completion-tokens-string": {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": "many", "total_tokens": 3}},
}


@pytest.mark.parametrize("bad", IGNORABLE.values(), ids=IGNORABLE.keys())
def test_ignorable_wrong_shape_is_skipped_or_a_clean_error(hostile: HostileServer, client: GraniteClient, bad: object) -> None:
    """A wrong shape that carries no text (a null choice, bad usage) may be skipped (the text completes) or refused;
    never a crash, now or later in to_dict()."""
    hostile.default = faulty_stream(bad)
    got = outcome(lambda: client.chat("hi"))
    if isinstance(got, GraniteError):
        assert_kept(got, "Hello ")
    else:
        assert isinstance(got.usage.completion_tokens, int | None) and isinstance(got.completion_tokens, int), got.usage
        assert_fine(got)


# --- bodies that are not what they claim -------------------------------------------------------


def _gzip_hello() -> bytes:
    """The start of a gzip stream holding "Hello ", flushed so that it decodes on its own."""
    compressor = zlib.compressobj(wbits=31)
    good = compressor.compress(b"".join(event(c) for c in HELLO)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return good


@pytest.mark.parametrize(
    ("pieces", "kept"),
    [([b"this is not gzip at all\n"], ""), ([_gzip_hello(), b"\xff\xfe this is not deflate data"], "Hello ")],
    ids=["not-gzip", "corrupt-after-hello"],
)
def test_gzip_body_that_does_not_decompress(hostile: HostileServer, client: GraniteClient, pieces: list[bytes], kept: str) -> None:
    """Content-Encoding: gzip over bad bytes is a GraniteError, not httpx.DecodingError; what decoded is kept."""
    hostile.default = Reply(headers={**SSE_HEADERS, "Content-Encoding": "gzip"}, pieces=pieces)  # one HTTP chunk each
    assert_kept(failure(lambda: client.chat("hi")), kept)


def test_html_page_with_status_200_is_refused_without_retry(hostile: HostileServer, client: GraniteClient) -> None:
    """A captive portal or proxy login page is not a stream: say text/html, and do not ask again."""
    page = b"<!doctype html><html><head><title>Sign in</title></head><body><h1>Sign in to the Wi-Fi</h1></body></html>\n"
    hostile.default = Reply(headers={"Content-Type": "text/html; charset=utf-8"}, pieces=[page], chunked=False)
    exc = failure(lambda: client.chat("hi"))
    assert len(hostile.chat_requests) == 1, "a page that is not a stream must not be asked for again"
    assert "text/html" in str(exc)
    assert_kept(exc, "")


# --- size and time limits ------------------------------------------------------------------------


def test_line_without_end_is_refused_as_too_long(hostile: HostileServer, client: GraniteClient) -> None:
    """20 MB without a newline must not grow a buffer forever: ProtocolError past the 16 MB event limit."""
    hostile.default = endless_line(20, before=[event(text_chunk("Hello "))])
    exc = failure(lambda: client.chat("hi"))
    assert re.search(r"too (long|large|big)|longer than|exceed", str(exc), re.IGNORECASE), str(exc)
    assert_kept(exc, "Hello ")
    assert isinstance(exc, exported("ProtocolError"))


def test_ten_megabyte_token_properly_framed_arrives_whole(hostile: HostileServer, client: GraniteClient) -> None:
    """The event limit does not refuse a large but well-framed event (10 MB < 16 MB)."""
    big = "a" * (10 * 2**20)
    data = event(text_chunk(big))
    pieces = [data[i : i + 2**20] for i in range(0, len(data), 2**20)]
    hostile.default = Reply(pieces=[*pieces, event(finish_chunk()), DONE])
    result = success(lambda: client.chat("hi"))
    assert len(result.text) == len(big) and result.text == big and not result.partial


def test_keepalive_trickle_without_events_is_a_stall(hostile: HostileServer, make_client: Callable[..., GraniteClient]) -> None:
    """A byte of SSE comment every 0.2 s keeps the socket busy but says nothing: StallError after read_timeout_s."""
    hostile.script(trickle(b":\n", interval_s=0.2))
    hostile.default = json_reply(503, {"error": {"code": 503, "message": "only the first request trickles"}})
    client = make_client(hostile.base_url, read_timeout_s=1)
    exc = failure(lambda: client.chat("hi"), StallError)
    assert len(hostile.chat_requests) == 1
    assert_kept(exc, "")


def test_overall_deadline_stops_a_slow_reply_and_keeps_its_tokens(hostile: HostileServer, make_client: Callable[..., GraniteClient]) -> None:
    """timeout_s bounds the whole call even while tokens keep coming: DeadlineError with the tokens so far."""
    tokens = [f"t{i} " for i in range(30)]
    hostile.default = normal_reply(*tokens, delay_s=0.3)  # the first token is sent at once
    try:
        client = make_client(hostile.base_url, timeout_s=1.0)
    except TypeError as refused:
        pytest.fail(f"GraniteClient does not take timeout_s: {refused}")
    exc = failure(lambda: client.chat("hi"))
    kept = exc.result.text if exc.result is not None else ""
    assert kept in {"".join(tokens[:n]) for n in range(1, len(tokens))}, f"not the tokens received so far: {kept!r}"
    assert_kept(exc, kept)
    assert isinstance(exc, exported("DeadlineError"))


# --- the key never leaks ---------------------------------------------------------------------------

ECHOES = {
    "401-body": (json_reply(401, {"error": {"code": 401, "message": "Invalid key: {AUTH}"}}), AuthenticationError, ""),
    "error-event-first": (sse_reply({"error": {"code": 400, "message": "bad {AUTH}"}}, done=False), GraniteError, ""),
    "error-event-mid-stream": (
        sse_reply(*HELLO, {"error": {"code": 400, "message": "upstream refused {AUTH}"},
                           "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}, done=False),
        GraniteError, "Hello ",
    ),
}


@pytest.mark.parametrize(("reply", "kind", "kept"), ECHOES.values(), ids=ECHOES.keys())
def test_server_echoing_the_key_does_not_leak_it(
    hostile: HostileServer, client: GraniteClient, reply: Reply, kind: type[GraniteError], kept: str
) -> None:
    """An error text that quotes the Authorization header is redacted everywhere the error and result show."""
    hostile.default = reply
    exc = failure(lambda: client.chat("hi"), kind)
    assert hostile.chat_requests[0].authorization == f"Bearer {KEY}"  # so the echo did hold the key
    assert_kept(exc, kept)


# --- retries -------------------------------------------------------------------------------------------


def test_transient_error_as_first_event_is_retried(hostile: HostileServer, client: GraniteClient) -> None:
    """A server_error event before any token is retried like an HTTP 5xx; the second answer completes the chat."""
    hostile.script(sse_reply({"error": {"type": "server_error", "code": None, "message": "x"}}, done=False))
    hostile.default = normal_reply("Hello ", "world.")
    result = success(lambda: client.chat("hi"))
    assert len(hostile.chat_requests) == 2
    assert hostile.chat_requests[0].json == hostile.chat_requests[1].json
    assert_fine(result)


def test_invalid_base_url_is_a_parameter_error(make_client: Callable[..., GraniteClient]) -> None:
    """``notaurl`` is refused at once as an invalid base URL, not retried as a dropped connection."""
    exc = failure(lambda: make_client("notaurl").chat("hi"), InvalidParameterError)
    assert re.search(r"base[ _-]?url", str(exc), re.IGNORECASE), str(exc)
    assert_no_key(str(exc))


# --- /models ----------------------------------------------------------------------------------------------

ODD_LISTINGS = {
    "list-not-object": [{"id": "hostile/model"}],
    "non-object-items": {"data": [1, "x", None]},
    "data-string": {"data": "abc"},
    "wrong-field-types": {"data": [{"id": "m", "pricing": "free", "top_provider": [], "supported_parameters": 7, "context_length": "big"}]},
}


@pytest.mark.parametrize("listing", ODD_LISTINGS.values(), ids=ODD_LISTINGS.keys())
def test_odd_models_listing_is_an_error_or_a_dict(hostile: HostileServer, client: GraniteClient, listing: object) -> None:
    """A /models answer of the wrong shape never crashes models(): GraniteError or a dict."""
    hostile.models = json_reply(200, listing)
    got = outcome(client.models)
    if isinstance(got, GraniteError):
        assert len(str(got)) < 400 and "Traceback" not in str(got)
    else:
        assert isinstance(got, dict)


def test_models_404_is_an_error(hostile: HostileServer, client: GraniteClient) -> None:
    """A server without /models answers 404: a GraniteError, not an httpx error."""
    hostile.models = json_reply(404, {"error": {"code": 404, "message": "no route"}})
    failure(client.models)


def test_models_that_never_answer_end_at_the_read_timeout(hostile: HostileServer, make_client: Callable[..., GraniteClient]) -> None:
    """A /models request the server holds forever ends as a GraniteError after read_timeout_s."""
    hostile.models = Reply(hang=True)
    client = make_client(hostile.base_url, read_timeout_s=1)
    exc = failure(client.models)
    assert_no_key(str(exc))


# --- comparisons ------------------------------------------------------------------------------------------


def test_comparison_keeps_good_columns_when_one_stream_is_wrong_shaped(hostile: HostileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """One column's broken stream fails that column only; the others complete with their full text."""
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    good, bad = normal_reply("Hello ", "world."), faulty_stream(WRONG_SHAPES["delta-string"])
    hostile.default = lambda request: bad if (request.json or {}).get("seed") == 2 else good
    comparison = success(lambda: granite_magic.compare("hi", seeds=[1, 2, 3], base_url=hostile.base_url, max_tokens=5))
    assert len(comparison.results) == 3
    by_seed = {result.params.get("seed"): (result, error) for result, error in zip(comparison.results, comparison.errors, strict=True)}
    assert set(by_seed) == {1, 2, 3}
    for seed in (1, 3):
        result, error = by_seed[seed]
        assert error is None
        assert_fine(result)
    broken, error = by_seed[2]
    assert error and broken.partial and broken.text == "Hello "
    assert_no_key(error, repr(broken), repr(broken.to_dict()))


# --- the magic refuses bad input with one line ----------------------------------------------------------------


@pytest.fixture
def tidy_ns(ip: InteractiveShell) -> Iterator[InteractiveShell]:
    """Remove what a test added to the (process-wide) user namespace, e.g. ``print`` or ``1 bad name``."""
    before = set(ip.user_ns)
    yield ip
    for name in set(ip.user_ns) - before:
        del ip.user_ns[name]


def run_cell(ip: InteractiveShell, line: str, cell: str) -> CapturedIO:
    """``%%granite line`` + cell; an exception escaping the magic (a traceback in a notebook) fails the test."""
    try:
        return run(ip, line, cell)
    except Exception as exc:
        pytest.fail(f"%%granite {line} raised {type(exc).__name__}: {exc} (a notebook shows a traceback)")


def assert_refused(out: CapturedIO, server: FakeOpenRouter) -> str:
    """One ``granite:`` line on stderr, no traceback, nothing sent; returns the line."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("granite:"), f"expected one 'granite:' line, got {out.stderr!r}"
    assert "Traceback" not in out.stderr + shown(out)
    assert server.chat_requests == [], "a refused cell must send nothing"
    return lines[0]


BAD_CELLS = {
    "unbalanced-quote": ('-s "abc', "hi"),
    "empty-sweep": ("--sweep temperature=,", "hi"),
    "one-parameter-swept-twice": ("--sweep temperature=0,1 --sweep temperature=0.5", "hi"),
    "seeds-and-seed-sweep": ("--seeds 1-2 --sweep seed=7,8", "hi"),
    "out-not-an-identifier": ("-o '1 bad name'", "hi"),
    "whitespace-only-prompt": ("", "  \n\t \n   "),
}


@pytest.mark.parametrize(("line", "cell"), BAD_CELLS.values(), ids=BAD_CELLS.keys())
def test_magic_refuses_bad_input_with_one_line(tidy_ns: InteractiveShell, server: FakeOpenRouter, line: str, cell: str) -> None:
    """Bad options or an empty prompt: one ``granite:`` line, no traceback, no request."""
    assert_refused(run_cell(tidy_ns, line, cell), server)


def test_magic_refuses_a_variable_whose_str_raises(tidy_ns: InteractiveShell, server: FakeOpenRouter) -> None:
    """``{boom}`` whose ``__str__`` raises is a one-line error about the cell, not a traceback from interpolation."""

    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("__str__ exploded")

    tidy_ns.user_ns["boom"] = Boom()
    assert_refused(run_cell(tidy_ns, "", "Explain {boom}"), server)


def test_magic_refuses_an_invalid_base_url(tidy_ns: InteractiveShell, server: FakeOpenRouter) -> None:
    """``--base-url notaurl`` is refused before sending, naming the base URL."""
    line = assert_refused(run_cell(tidy_ns, "--base-url notaurl", "hi"), server)
    assert re.search(r"base[ _-]?url", line, re.IGNORECASE), line


def test_magic_out_name_shadowing_a_builtin_works_with_a_warning(tidy_ns: InteractiveShell, server: FakeOpenRouter) -> None:
    """``-o print`` stores the result (the user asked) but warns, in one line, that it shadows ``print``."""
    out = run_cell(tidy_ns, "-o print", "hi")
    assert isinstance(tidy_ns.user_ns.get("print"), Result)
    assert len(server.chat_requests) == 1
    assert "Traceback" not in out.stderr + shown(out)
    warnings = [line for line in out.stderr.splitlines() if line.startswith("granite:")]
    assert len(warnings) == 1 and "print" in warnings[0], f"expected one warning naming print, got {out.stderr!r}"


def test_line_magic_with_unbalanced_quote_prints_one_line(ip: InteractiveShell, server: FakeOpenRouter) -> None:
    """``%granite panel "abc`` is a one-line error, not a shlex traceback."""
    with capture_output() as out:
        try:
            ip.run_line_magic("granite", 'panel "abc')
        except Exception as exc:
            pytest.fail(f"%granite panel \"abc raised {type(exc).__name__}: {exc} (a notebook shows a traceback)")
    assert_refused(out, server)


# --- the /models lookup only ever adds a warning ------------------------------------------------------


@pytest.mark.parametrize("models", [Reply(hang=True), json_reply(200, ["not", "an", "object"]), json_reply(404, {"error": "no"})],
                         ids=["never-answers", "a-list", "404"])
def test_a_broken_model_listing_never_breaks_a_cell_and_is_asked_once(ip: InteractiveShell, hostile: HostileServer,
                                                                      models: Reply) -> None:
    """Two cells stream in full with no traceback; a failed listing is remembered, not asked again for every cell."""
    from .conftest import magics_of

    hostile.models = models
    hostile.default = normal_reply("Hello ", "world.")
    magics_of(ip).base_url = hostile.base_url
    for _ in range(2):
        out = run(ip, "--temperature 0.5 -o r", "Hi")
        assert ip.user_ns["r"].text == "Hello world." and not ip.user_ns["r"].partial
        assert "Traceback" not in out.stderr + out.stdout and "granite:" not in out.stderr
    assert sum(1 for r in hostile.requests if r.path.endswith("/models")) == 1
