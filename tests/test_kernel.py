"""%%granite in a real kernel: a notebook executed with nbclient, and a kernel interrupt."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from granite_magic.testing import FakeOpenRouter, Scenario, fake_reply

from .conftest import TEST_KEY

pytestmark = pytest.mark.slow


def test_saved_notebook_keeps_the_reply_as_markdown_with_metadata(
    server: FakeOpenRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_KEY)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(f"%load_ext granite_magic\n%config GraniteMagics.base_url = {server.base_url!r}"),
        nbformat.v4.new_code_cell("%%granite --seed 4 --temperature 0.7 -o r\nTell me about granite"),
        nbformat.v4.new_code_cell("print(r.finish_reason, r.partial)"),
        nbformat.v4.new_code_cell("import granite_magic\nprint(list(granite_magic.usage()['cell']))"),
    ]
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    path = tmp_path / "saved.ipynb"
    nbformat.write(nb, path)

    saved = nbformat.read(path, as_version=4)
    outputs = saved.cells[1].outputs
    replies = [o for o in outputs if o.get("output_type") == "display_data" and "granite_magic" in o.get("metadata", {})]
    assert len(replies) == 1
    expected = "".join(fake_reply([{"role": "user", "content": "Tell me about granite"}], {"seed": 4, "temperature": 0.7}))
    assert replies[0].data["text/plain"] == expected
    assert replies[0].data["text/markdown"] == expected
    meta = replies[0].metadata["granite_magic"]
    assert meta["model"] == "ibm-granite/granite-4.0-h-micro" and meta["params"] == {"seed": 4, "temperature": 0.7}
    assert meta["finish_reason"] == "stop" and meta["usage"]["completion_tokens"] == len(expected.split())
    assert meta["usage"]["cost"] > 0
    # the live widget was replaced by the static output, so the reply does not depend on widget state
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert saved.cells[2].outputs[0]["text"].strip() == "stop False"
    assert saved.cells[3].outputs[0]["text"].strip() == f"[{saved.cells[1].execution_count}]"  # the ledger's cell is In[N]
    assert TEST_KEY not in path.read_text()


def _execute(kc: Any, code: str, timeout: float = 30) -> list[dict[str, Any]]:
    msg_id = kc.execute(code)
    messages = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return messages


@contextmanager
def _kernel(server: FakeOpenRouter) -> Iterator[tuple[KernelManager, Any]]:
    """A real kernel with the extension loaded and pointed at ``server``; shut down afterwards."""
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        _execute(kc, f"%load_ext granite_magic\n%config GraniteMagics.base_url = {server.base_url!r}")
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_kernel_interrupt_stops_the_stream_and_keeps_the_partial_text(server: FakeOpenRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_KEY)
    with _kernel(server) as (km, kc):
        server.push(Scenario(tokens=600, tokens_per_s=20))  # 30 s if nobody stops it
        msg_id = kc.execute("%%granite -o partial\nWrite slowly")
        while True:  # wait until the widget shows streamed text
            msg = kc.get_iopub_msg(timeout=30)
            if msg["msg_type"] == "comm_msg" and "streaming" in json.dumps(msg["content"]["data"]):
                break
        km.interrupt_kernel()
        while True:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        # the stream was closed (not left running after the cell), far before its 600 tokens
        assert server.chat_requests[-1].disconnected or _wait_disconnected(server)

        messages = _execute(kc, "print(partial.ended, len(partial.text.split()))")
        printed = "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")
        ended, words = printed.split()
        assert ended == "interrupted" and 0 < int(words) < 600


def _wait_disconnected(server: FakeOpenRouter) -> bool:
    from .conftest import wait_until

    return wait_until(lambda: server.chat_requests[-1].disconnected)


def test_after_loading_the_warm_up_finishes_and_the_first_cell_works(server: FakeOpenRouter,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The cell that loads the extension starts a warm-up thread when it has finished (imports, the option parser,
    the background loop, one loopback request); it ends on its own and leaves the first cell working."""
    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_KEY)
    with _kernel(server) as (_, kc):

        def printed(code: str) -> str:
            messages = _execute(kc, code)
            assert not [m for m in messages if m["msg_type"] == "error"], messages
            return "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")

        warmed = printed(
            "import sys, threading\n"
            "warm_up = get_ipython().find_cell_magic('granite').__self__.warm_up\n"
            "warm_up.join(30)\n"
            "print(warm_up.is_alive(), sorted(m for m in ('httpx', 'httpcore', 'ipywidgets') if m in sys.modules),\n"
            "      [t.name for t in threading.enumerate() if t.name.startswith('granite-magic')])"
        )
        assert warmed.strip() == "False ['httpcore', 'httpx', 'ipywidgets'] ['granite-magic']"  # done; the loop runs
        assert server.chat_requests == []  # the warm-up's request went to a server of its own
        _execute(kc, "%%granite --seed 4 -o r\nTell me about granite")
        expected = "".join(fake_reply([{"role": "user", "content": "Tell me about granite"}], {"seed": 4}))
        assert printed(f"print(r.text == {expected!r}, r.finish_reason)").strip() == "True stop"
