"""What a person sees in JupyterLab: a real server, a real kernel, headless Chromium driven by Playwright.

Needs Debian's chromium (/usr/bin/chromium) and the dev extra (jupyterlab, playwright).  CI sets
GRANITE_REQUIRE_BROWSER=1 so that a missing browser fails instead of skipping.  Screenshots of
each step go to test-artifacts/browser/.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from granite_magic.testing import FakeOpenRouter, Scenario, fake_reply

from .readable import cell_prompt, notebook_sources, problems

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts" / "browser"
TOKEN = "browser-test-token"
KEY = "sk-or-v1-browser-test-key-never-shown"

try:
    from playwright.sync_api import Locator, Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None  # type: ignore[assignment]

if sync_playwright is None or not Path(CHROMIUM).exists() or shutil.which("jupyter-lab") is None:
    if os.environ.get("GRANITE_REQUIRE_BROWSER") == "1":
        raise RuntimeError("GRANITE_REQUIRE_BROWSER=1 but chromium, playwright or jupyterlab is missing")
    pytest.skip("needs /usr/bin/chromium, playwright and jupyterlab", allow_module_level=True)

pytestmark = pytest.mark.slow

STREAM_CELL = "%%granite --seed 1\nTell me about granite"
PANEL_CELL = "%granite panel Tell me about granite"
SHIPPED_WITH_WIDGETS = ("04_panel.ipynb", "05_sampling_lens.ipynb")
QUICKSTART = "01_quickstart.ipynb"
DEMOS = Path(__file__).parent.parent / "demo_notebooks"
UNSAFE_CELL = "%%granite --seed 2\nShow me something unsafe"
LENS_CELL = "%%granite --probs 5 --seed 3 --temperature 0.8\nComplete the sentence: The oldest rocks on Earth are"
TOOL_DEF_CELL = "def convert(amount: float, currency: str) -> float:\n    return round(amount * 150.0, 2)"
TOOLS_CELL = "%%granite --tools convert --tool-mode native\nHow much is 120 dollars in yen?"
APPROVE_CELL = "%%granite --tools convert --tool-mode native --approve\nHow much is 7 dollars in yen?"
CACHE_CELL = "%%granite --cache auto --seed 9 --max-tokens 30\nName a mineral found in granite"
VERIFY_CELL = "%%granite --cache auto --seeds 4-5 --max-tokens 12 --verify\nName a rock"
BROKEN_DEF_CELL = "def broken(amount: float) -> float:\n    raise ValueError('the rates service is down')"
FAILING_TOOLS_CELL = "%%granite --tools broken,convert --tool-mode native\nHow much is 5 dollars in yen?"
PROMPTED_CELL = "%%granite --tools convert --tool-mode prompted --tool-choice convert\nHow much is 120 dollars in yen?"
KEEPS_CALLING_CELL = "%%granite --max-steps 2 --tools convert --tool-mode prompted --tool-choice convert\nHow much is 1 dollar in yen?"
OVER_CELL = "%%granite --over rows --max-tokens 30\nDescribe {item} in one line."
ROWS_CELL = "rows = [f'rock {n}' for n in range(30)]"
POLL_CELL = "%config GraniteMagics.batch_poll = 0"  # the fake's batch moves on at each poll: no wait between them
BATCH_CELL = "%%granite --over rows --via batch --max-tokens 8\nName {item} in one word."
SCHEMA_CELL = '%%granite --schema "sentiment: positive|negative|neutral, reason" --max-tokens 200\nClassify: a great hike.'
STRUCTURED = "09_structured_output.ipynb"
OVER_ROWS = "10_prompt_over_rows.ipynb"
FINAL_STATUS = re.compile(r"first token \d")
UNSAFE_TEXT = 'Look <img src=x onerror="window.__xss=1"> and <script>window.__xss2=1</script> end'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter(api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the quick-start demo with the cells under test right after %load_ext."""
    root = tmp_path_factory.mktemp("lab")
    nb = nbformat.read(Path(__file__).parent.parent / "demo_notebooks" / "01_quickstart.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if c.source.startswith("%load_ext")) + 1
    for offset, source in enumerate([STREAM_CELL, PANEL_CELL, UNSAFE_CELL, LENS_CELL, TOOL_DEF_CELL, TOOLS_CELL, APPROVE_CELL,
                                   CACHE_CELL, VERIFY_CELL, BROKEN_DEF_CELL, FAILING_TOOLS_CELL, PROMPTED_CELL,
                                   KEEPS_CALLING_CELL, SCHEMA_CELL, ROWS_CELL, OVER_CELL, POLL_CELL, BATCH_CELL]):
        nb.cells.insert(at + offset, nbformat.v4.new_code_cell(source))
    for each in nb.cells:  # saved counts would hide when a cell has run again
        if each.cell_type == "code":
            each.execution_count = None
    nbformat.write(nb, root / "demo.ipynb")
    for shipped in (*SHIPPED_WITH_WIDGETS, QUICKSTART, STRUCTURED, OVER_ROWS):  # as a person opens them, never run here
        (root / shipped).write_bytes((DEMOS / shipped).read_bytes())
    settings = root / ".settings"
    for plugin, values in {
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},  # every cell in the DOM
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return root


@pytest.fixture(scope="module")
def lab(fake: FakeOpenRouter, workdir: Path) -> Iterator[str]:
    port = _free_port()
    env = dict(os.environ, OPENROUTER_API_KEY=KEY, GRANITE_BASE_URL=fake.base_url,
               JUPYTERLAB_SETTINGS_DIR=str(workdir / ".settings"), JUPYTERLAB_WORKSPACES_DIR=str(workdir / ".workspaces"))
    log = open(workdir / "lab.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={workdir}", "--ServerApp.allow_root=True",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, (workdir / "lab.log").read_text()[-2000:]
        try:
            urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            assert time.monotonic() < deadline, "JupyterLab did not start"
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(20)
    log.close()


@pytest.fixture(scope="module")
def page(lab: str) -> Iterator[Page]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        open_notebook(page, lab)
        run_cell(page, "%load_ext granite_magic")
        yield page
        browser.close()


def open_notebook(page: Page, lab: str) -> None:
    page.goto(f"{lab}/lab/tree/demo.ipynb?token={TOKEN}&reset")
    page.wait_for_function("document.querySelectorAll('.jp-Notebook .jp-Cell').length > 30", timeout=60_000)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)


def cell(page: Page, source_start: str) -> Locator:
    return page.locator(".jp-Notebook .jp-CodeCell").filter(has=page.locator(".jp-InputArea", has_text=source_start.split("\n")[0])).first


def run_cell(page: Page, source_start: str, *, wait: bool = True) -> Locator:
    target = cell(page, source_start)
    prompt = target.locator(".jp-InputPrompt")
    before = prompt.inner_text()
    target.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    if wait:
        try:
            page.wait_for_function(
                "([el, before]) => /\\[\\d+\\]/.test(el.textContent) && el.textContent !== before",
                arg=[prompt.element_handle(), before], timeout=60_000)
        except Exception:
            shot(page, "failed-run-cell")
            raise
    return target


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_a_granite_cell_streams_then_renders(page: Page, fake: FakeOpenRouter) -> None:
    # 6 s of streaming: room for JupyterLab to load its widget manager on first use, on a busy machine
    fake.push(Scenario(tokens=120, tokens_per_s=20))
    target = run_cell(page, STREAM_CELL, wait=False)
    output = target.locator(".jp-Cell-outputArea")
    seen: list[str] = []
    everything: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = output.inner_text()
        if not everything or text != everything[-1]:
            everything.append(text)
        if "streaming" in text and (not seen or text != seen[-1]):
            seen.append(text)
            if len(seen) == 3:
                shot(page, "01-streaming")
                target.screenshot(path=str(ARTIFACTS / "01-streaming-cell.png"))
        if FINAL_STATUS.search(text):  # not "waiting for the first token", which is live
            break
        time.sleep(0.05)
    growing = [s.split("\n")[2] if s.count("\n") >= 2 else "" for s in seen]
    assert len(seen) >= 2, f"only {len(seen)} intermediate texts seen: {[t[:80] for t in everything]}"
    assert all(b.startswith(a.rstrip()) for a, b in itertools.pairwise(growing)), "the text did not grow"
    expected = "".join(fake_reply([{"role": "user", "content": "Tell me about granite"}], {"seed": 1}, tokens=120))
    rendered = output.locator(".jp-RenderedMarkdown").first
    rendered.wait_for()
    assert rendered.inner_text().strip() == expected
    assert FINAL_STATUS.search(output.inner_text())
    shot(page, "02-streamed")


def test_the_panel_compares_three_seeds_and_stops(page: Page, fake: FakeOpenRouter) -> None:
    target = run_cell(page, PANEL_CELL)
    panel = target.locator(".jp-Cell-outputArea")
    assert not panel.locator(".widget-text", has_text="seeds").is_visible()  # single mode shows what it uses
    panel.get_by_role("button", name="compare", exact=True).click()
    panel.locator(".widget-text", has_text="seeds").locator("input").fill("1-3")
    fake.default = Scenario(tokens=40, tokens_per_s=40)
    try:
        panel.get_by_role("button", name="Run").click()
        page.wait_for_function("el => el.querySelectorAll('.gm-col').length === 3 && el.textContent.includes('identical groups')",
                               arg=panel.element_handle(), timeout=30_000)
    finally:
        fake.default = Scenario()
    assert panel.locator(".gm-col").count() == 3
    for label in ("seed 1", "seed 2", "seed 3"):
        assert panel.locator(".gm-label", has_text=label).count() == 1
    panel.locator(".gm-summary").scroll_into_view_if_needed()
    shot(page, "03-panel-compare")
    target.screenshot(path=str(ARTIFACTS / "03-panel-compare-cell.png"))

    # Copy as cell puts the cell on the clipboard, and says so.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    panel.get_by_role("button", name="Copy as cell").click()
    panel.get_by_text("Copied: paste it into a new cell").wait_for(timeout=10_000)
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("%%granite --seeds 1,2,3") and copied.endswith("\nTell me about granite")

    # In a notebook 800 px wide the panel fits: nothing runs past the right edge.
    page.set_viewport_size({"width": 1060, "height": 1000})
    try:
        widget = panel.locator(".jp-OutputArea-output").first
        assert widget.evaluate("el => el.getBoundingClientRect().width") <= 810
        assert widget.evaluate("el => el.scrollWidth <= el.clientWidth + 1")
        target.screenshot(path=str(ARTIFACTS / "03-panel-800px.png"))
    finally:
        page.set_viewport_size({"width": 1400, "height": 1000})

    panel.get_by_role("button", name="single", exact=True).click()
    fake.push(Scenario(tokens=400, tokens_per_s=20))  # 20 s if nobody stops it
    panel.get_by_role("button", name="Run").click()
    panel.get_by_text("streaming").first.wait_for(timeout=30_000)
    panel.get_by_role("button", name="Stop").click()
    panel.get_by_text("Stopped: the request was cancelled and the partial reply is kept").wait_for(timeout=10_000)
    assert "partial reply (interrupted)" in panel.inner_text()
    assert panel.get_by_role("button", name="Run").is_enabled()
    shot(page, "04-panel-stopped")


def test_an_unsafe_reply_is_shown_as_text_and_runs_nothing(page: Page, fake: FakeOpenRouter) -> None:
    fake.push(Scenario(text=UNSAFE_TEXT))
    target = run_cell(page, UNSAFE_CELL)
    output = target.locator(".jp-Cell-outputArea")
    output.get_by_text(FINAL_STATUS).wait_for(timeout=30_000)
    assert '<img src=x onerror="window.__xss=1">' in output.inner_text()
    assert "<script>window.__xss2=1</script>" in output.inner_text()
    assert output.locator("img").count() == 0 and output.locator("script").count() == 0
    assert page.evaluate("() => window.__xss === undefined && window.__xss2 === undefined")
    shot(page, "05-unsafe-escaped")


def test_the_sampling_lens_shades_explains_resamples_and_branches(page: Page, fake: FakeOpenRouter) -> None:
    fake.push(Scenario(text="Granite is <b>old</b> and <img src=x onerror=\"window.__lens=1\"> deep"))
    target = run_cell(page, LENS_CELL)
    output = target.locator(".jp-Cell-outputArea")
    output.get_by_text(FINAL_STATUS).wait_for(timeout=30_000)
    # the reply, shaded token by token, each with its alternatives in a tooltip
    shaded = output.locator(".jp-RenderedHTMLCommon span.gm-lens-t")
    assert shaded.count() >= 5
    tooltip = shaded.nth(1).get_attribute("title") or ""
    assert "%" in tooltip and "▶" in tooltip
    # model text is never markup, here either
    assert output.locator("img").count() == 0 and page.evaluate("() => window.__lens === undefined")
    # the lens under it: moving the temperature slider changes the shown distribution, with no request
    table = output.locator(".gm-lens-table").last
    table.wait_for(timeout=30_000)
    # it starts at the run's settings (temperature 0.8 as sent, the rest the provider's), and untouched they change
    # nothing: "now" is the "at the run" column, the probability no token was listed for has its own row, and a
    # pick outside the five listed is said to be so, never called impossible
    temperature = output.locator(".widget-slider", has_text="temperature")
    assert temperature.locator(".widget-readout").inner_text().strip() == "0.80"
    lens_text = output.locator(".gm-lens-head").filter(has_text="sliders start").inner_text()
    assert "temperature 0.8 (sent)" in lens_text and "not sent: the API's documented defaults" in lens_text
    assert "at the run" in table.locator("tr").first.inner_text() and "all other tokens" in table.inner_text()
    columns = table.evaluate("t => [...t.querySelectorAll('tr')].slice(1).map(r => [...r.cells].map(c => c.innerText.trim()))")
    assert columns and all(row[3] == row[4].split()[0] for row in columns), columns
    summary = output.locator(".gm-lens-note").filter(has_text="forks").first.inner_text()
    assert "could not have been made" not in summary
    # one numbering: the token slider, the table and (below) the branch's column count tokens from 1
    picked = int(output.locator(".widget-slider", has_text="token").locator(".widget-readout").inner_text())
    assert f"token {picked} of " in table.locator("xpath=..").inner_text()  # the head above the table
    target.screenshot(path=str(ARTIFACTS / "06-lens-start-cell.png"))
    before, requests = table.inner_text(), len(fake.chat_requests)
    slider = temperature.locator(".noUi-handle")
    slider.focus()
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    page.wait_for_function("([el, before]) => el.innerText !== before", arg=[table.element_handle(), before], timeout=10_000)
    assert len(fake.chat_requests) == requests
    assert temperature.locator(".widget-readout").inner_text().strip() == "0.30"
    assert "\u2013" in table.inner_text()  # at 0.3 what the unlisted tokens could hold shows as ranges (an en dash)
    shot(page, "06-lens")
    target.screenshot(path=str(ARTIFACTS / "06-lens-cell.png"))
    # clicking an alternative continues the reply from there, in a new column beside the original
    output.locator("button.gm-lens-branch").last.click()
    page.wait_for_function("el => el.querySelectorAll('.gm-col').length === 2 && el.textContent.includes('identical groups')",
                           arg=output.element_handle(), timeout=30_000)
    assert fake.chat_requests[-1].body["messages"][-1]["role"] == "assistant"
    assert output.locator(".gm-label", has_text=f"branch at token {picked}:").count() == 1  # the lens's own number
    output.locator(".gm-col").last.scroll_into_view_if_needed()
    shot(page, "07-lens-branch")


def test_a_tool_call_shows_as_a_block_above_the_answer(page: Page, fake: FakeOpenRouter) -> None:
    run_cell(page, TOOL_DEF_CELL)
    target = run_cell(page, TOOLS_CELL)
    output = target.locator(".jp-Cell-outputArea")
    output.get_by_text(FINAL_STATUS).wait_for(timeout=30_000)
    block = output.locator("details.gm-tool")
    assert block.count() == 1 and "Ran convert" in block.locator("summary").inner_text()
    block.locator("summary").click()  # collapsible: opening it shows the arguments and the result
    assert "18000.0" in block.inner_text() and '"amount": 120' in block.inner_text()
    answer = output.get_by_text("The tool said: 18000.0")
    assert answer.count() >= 1
    assert block.bounding_box()["y"] < answer.first.bounding_box()["y"]  # the call comes above the answer
    shot(page, "08-tools")


def test_approve_asks_under_the_cell_while_it_runs(page: Page, fake: FakeOpenRouter) -> None:
    target = run_cell(page, APPROVE_CELL, wait=False)
    output = target.locator(".jp-Cell-outputArea")
    box = output.locator(".jp-Stdin-input")
    box.wait_for(timeout=30_000)
    assert "Run convert(amount=7, currency='yen')? [y/N]" in output.inner_text()
    waiting = output.inner_text()
    assert "waiting for your approval" in waiting and "streaming" not in waiting  # the status line says what it waits for
    assert "calling convert(amount=7, currency='yen')" in waiting
    target.screenshot(path=str(ARTIFACTS / "09-approve-waiting-cell.png"))
    box.fill("y")
    box.press("Enter")  # answered while the cell is still running
    output.get_by_text("The tool said: 1050.0").first.wait_for(timeout=30_000)
    assert output.locator("details.gm-tool").count() == 1
    shot(page, "09-approve")


def test_each_failed_call_says_which_tool_and_why_on_its_row(page: Page, fake: FakeOpenRouter) -> None:
    run_cell(page, BROKEN_DEF_CELL)
    fake.push(Scenario(tool_calls=3, tool_arguments="{not json"))  # three calls in one reply, the first malformed
    target = run_cell(page, FAILING_TOOLS_CELL)
    output = target.locator(".jp-Cell-outputArea")
    output.get_by_text(FINAL_STATUS).wait_for(timeout=30_000)
    rows = [row.inner_text() for row in output.locator("details.gm-tool summary").all()]
    assert len(rows) == 3 and len(set(rows)) == 3, rows
    assert rows[0].startswith("⚠ Did not run broken: the arguments are not valid JSON")
    assert rows[1].startswith("Ran convert")
    assert rows[2].startswith("⚠ broken failed") and "ValueError: the rates service is down" in rows[2]
    target.screenshot(path=str(ARTIFACTS / "08-tool-failures-cell.png"))


def test_prompted_tools_show_no_protocol_fragments_and_say_whose_calls_were_left(page: Page, fake: FakeOpenRouter) -> None:
    # a forced call, then an answer that closes a call it never opened and ends cut off inside another tag
    fake.push(Scenario(), Scenario(text="It is 18000 yen.</tool_call>\n<tool_call"))
    target = run_cell(page, PROMPTED_CELL)
    output = target.locator(".jp-Cell-outputArea")
    output.get_by_text(FINAL_STATUS).wait_for(timeout=30_000)
    assert output.get_by_text("It is 18000 yen.").count() >= 1
    assert "tool_call" not in output.inner_text() and output.locator("details.gm-tool").count() == 1
    target.screenshot(path=str(ARTIFACTS / "08-tools-prompted-cell.png"))
    fake.push(*[Scenario(tool_steps=9)] * 2)  # a model that keeps calling on its own
    target = run_cell(page, KEEPS_CALLING_CELL)
    output = target.locator(".jp-Cell-outputArea")
    output.get_by_text("forced only the first call").wait_for(timeout=30_000)
    assert ("stopped after 2 steps (--max-steps 2): the model kept calling tools on its own (--tool-choice convert forced "
            "only the first call)") in output.inner_text()
    target.screenshot(path=str(ARTIFACTS / "08-tools-stop-line-cell.png"))


def test_a_rerun_from_the_cache_says_cached_and_sends_nothing(page: Page, fake: FakeOpenRouter) -> None:
    target = run_cell(page, CACHE_CELL)
    output = target.locator(".jp-Cell-outputArea")
    output.get_by_text(FINAL_STATUS).wait_for(timeout=30_000)
    live, requests = output.locator(".jp-RenderedMarkdown").first.inner_text(), len(fake.chat_requests)
    assert "cached" not in output.inner_text()
    run_cell(page, CACHE_CELL)  # the same cell again: served from its recording
    output.get_by_text("cached").first.wait_for(timeout=30_000)
    assert output.locator(".jp-RenderedMarkdown").first.inner_text() == live
    assert len(fake.chat_requests) == requests
    shot(page, "10-cached")


def test_a_drift_check_says_per_seed_whether_the_text_repeats(page: Page, fake: FakeOpenRouter) -> None:
    target = run_cell(page, VERIFY_CELL)
    output = target.locator(".jp-Cell-outputArea")
    output.get_by_text("this run is now the recording").first.wait_for(timeout=30_000)
    requests = len(fake.chat_requests)
    run_cell(page, VERIFY_CELL)  # live again, compared with the recordings the first run made
    output.get_by_text("seed 4 identical to the recording · seed 5 identical to the recording").wait_for(timeout=30_000)
    assert len(fake.chat_requests) == requests + 2
    shot(page, "11-verified")


def test_the_reply_survives_saving_and_reopening(page: Page, lab: str, workdir: Path) -> None:
    page.locator(".jp-Notebook").click()
    page.keyboard.press("Control+s")
    expected = "".join(fake_reply([{"role": "user", "content": "Tell me about granite"}], {"seed": 1}, tokens=120))
    deadline = time.monotonic() + 20
    while expected not in (workdir / "demo.ipynb").read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    saved: Any = nbformat.read(workdir / "demo.ipynb", as_version=4)
    streamed = next(c for c in saved.cells if c.source == STREAM_CELL)
    assert any(o.get("data", {}).get("text/markdown") == expected for o in streamed.outputs)
    assert KEY not in (workdir / "demo.ipynb").read_text()
    open_notebook(page, lab)
    output = cell(page, STREAM_CELL).locator(".jp-Cell-outputArea")
    assert output.locator(".jp-RenderedMarkdown").first.inner_text().strip() == expected
    shot(page, "06-reopened")


@pytest.mark.parametrize("shipped", SHIPPED_WITH_WIDGETS)
def test_a_shipped_demo_opened_without_running_shows_no_widget_error(page: Page, lab: str, shipped: str) -> None:
    """A shipped demo opened before any cell runs (as from the repository): where the panel and the lens were, one
    line says what was there; never "Error displaying widget: model not found", never a VBox(...) repr."""
    page.goto(f"{lab}/lab/tree/{shipped}?token={TOKEN}&reset")
    page.locator(".lm-TabBar-tab.lm-mod-current", has_text=shipped).wait_for(timeout=60_000)
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
    said = notebook.get_by_text("(an interactive widget: run the cell in Jupyter to use it").first
    said.wait_for(timeout=60_000)
    said.scroll_into_view_if_needed()
    shot(page, f"12-reopened-{shipped.removesuffix('.ipynb')}")
    text = notebook.inner_text()
    assert "Error displaying widget" not in text and "model not found" not in text
    assert "VBox(" not in text and "LensView(" not in text and "Panel(children" not in text
    page.goto(f"{lab}/lab/tree/demo.ipynb?token={TOKEN}&reset")  # back to the notebook the other tests use
    page.wait_for_function("document.querySelectorAll('.jp-Notebook .jp-Cell').length > 30", timeout=60_000)


def test_the_shipped_quick_start_s_first_reply_reads_as_text(page: Page, lab: str) -> None:
    """The quick start opened as from the repository: the first reply it shows does not begin by repeating its
    prompt, has no letters of a script the notebook does not use and no line three times (tests/readable.py)."""
    shipped: Any = nbformat.read(DEMOS / QUICKSTART, as_version=4)
    # the first output the package marked as a reply (not a listing, a dry run, a tool block or a status line)
    cell_index, index, meta = next((n, i, o.metadata["granite_magic"]) for n, c in enumerate(shipped.cells) if c.cell_type == "code"
                                   for i, o in enumerate(c.outputs) if "granite_magic" in o.get("metadata", {}))
    source = shipped.cells[cell_index].source
    page.goto(f"{lab}/lab/tree/{QUICKSTART}?token={TOKEN}&reset")
    page.locator(".lm-TabBar-tab.lm-mod-current", has_text=QUICKSTART).wait_for(timeout=60_000)
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
    target = notebook.locator(".jp-Cell").nth(cell_index)  # every cell is in the DOM (windowingMode none), in order
    assert source.split("\n")[0] in target.locator(".jp-InputArea").inner_text()
    output = target.locator(".jp-OutputArea-child").nth(index)
    # a single reply is Markdown; a comparison is a grid whose first column is its first reply
    shown_at = output.locator(".gm-col .gm-text" if "comparison" in meta else ".jp-RenderedMarkdown").first
    shown_at.wait_for(timeout=60_000)
    shown_at.scroll_into_view_if_needed()
    target.screenshot(path=str(ARTIFACTS / "13-quickstart-first-reply-cell.png"))
    # textContent, not innerText: a Markdown paragraph keeps the line breaks of its source there, which the rule
    # on repeated lines needs (innerText shows a soft break as the space the reader sees)
    shown = shown_at.evaluate("el => el.textContent")
    assert shown.strip(), "the first reply shows no text"
    prompt, system = cell_prompt(source)
    prompt = meta.get("comparison", {}).get("prompt") or prompt  # a comparison keeps the prompt as sent
    assert problems(shown, prompt, notebook_sources(shipped), system=system) == [], shown
    page.goto(f"{lab}/lab/tree/demo.ipynb?token={TOKEN}&reset")  # back to the notebook the other tests use
    page.wait_for_function("document.querySelectorAll('.jp-Notebook .jp-Cell').length > 30", timeout=60_000)


def test_a_schema_reply_ends_as_its_json_a_field_table_and_the_verdict(page: Page) -> None:
    """What a person reads under a --schema cell: the JSON as written (monospace), a table of the checked fields, and
    a line saying it fits, how it was obtained and in how many requests."""
    target = run_cell(page, SCHEMA_CELL)
    output = target.locator(".jp-Cell-outputArea")
    table = output.locator("table.gm-fields")
    table.wait_for(timeout=30_000)
    assert [row.inner_text().split("\t")[0] for row in table.locator("tr").all()] == ["sentiment", "reason"]
    assert output.locator("pre.gm-json").inner_text().startswith('{"sentiment": ')
    assert "schema valid (prompted, 1 request)" in output.inner_text()
    target.screenshot(path=str(ARTIFACTS / "14-schema-field-table.png"))


def test_the_shipped_structured_output_notebook_shows_its_tables_when_opened(page: Page, lab: str) -> None:
    """Opened from the repository, never run: every --schema reply shows its field table and verdict, and the
    comparison its per-field agreement."""
    page.goto(f"{lab}/lab/tree/{STRUCTURED}?token={TOKEN}&reset")
    page.locator(".lm-TabBar-tab.lm-mod-current", has_text=STRUCTURED).wait_for(timeout=60_000)
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
    notebook.locator("table.gm-fields").first.wait_for(timeout=60_000)
    shown = notebook.inner_text()
    assert shown.count("schema valid (grammar, 1 request)") >= 2 and "schema INVALID (prompted, 2 requests)" in shown
    assert "✓ agree" in shown and "distinct" in shown  # the seeds' field agreement
    notebook.locator("table.gm-fields").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "15-structured-output-notebook.png"))
    page.goto(f"{lab}/lab/tree/demo.ipynb?token={TOKEN}&reset")  # back to the notebook the other tests use
    page.wait_for_function("document.querySelectorAll('.jp-Notebook .jp-Cell').length > 30", timeout=60_000)


def test_a_prompt_over_rows_shows_its_progress_then_a_summary_that_stays(page: Page, fake: FakeOpenRouter) -> None:
    """While the rows run: a progress bar and a line of rows done, rows a second and the cost; when they end, the
    summary (rows by status, cost) and the first rows of the result, as static HTML."""
    fake.default = Scenario(tokens_per_s=60, tokens=12)  # about a fifth of a second a row: the progress can be seen
    try:
        run_cell(page, ROWS_CELL)
        target = run_cell(page, OVER_CELL, wait=False)
        output = target.locator(".jp-Cell-outputArea")
        output.locator("progress").wait_for(timeout=30_000)
        output.get_by_text(re.compile(r"[1-9]\d* of 30 rows · .* rows/s · .* left")).first.wait_for(timeout=30_000)
        target.screenshot(path=str(ARTIFACTS / "16-rows-progress.png"))
        output.get_by_text(re.compile(r"30 rows · 30 ok")).wait_for(timeout=120_000)
        assert output.locator("progress").count() == 0  # the live view gave way to the summary
        table = output.locator("table.dataframe")
        assert table.count() == 1 and "rock 0" in table.inner_text() and "_status" in table.inner_text()
        target.screenshot(path=str(ARTIFACTS / "17-rows-summary.png"))
    finally:
        fake.default = Scenario()


def test_the_shipped_over_rows_notebook_shows_its_summaries_the_gap_refused_and_the_second_question(page: Page,
                                                                                                    lab: str) -> None:
    """Opened from the repository, never run: each run's saved summary (rows by status) and first rows, the table with
    a gap refused in one line before sending, and the second question's table keeping the first run's columns."""
    page.goto(f"{lab}/lab/tree/{OVER_ROWS}?token={TOKEN}&reset")
    page.locator(".lm-TabBar-tab.lm-mod-current", has_text=OVER_ROWS).wait_for(timeout=60_000)
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
    notebook.locator("table.dataframe").first.wait_for(timeout=60_000)
    shown = notebook.inner_text()
    assert "3 rows · 3 ok" in shown and "12 rows · 9 ok · 3 cached" in shown and "12 rows · 12 cached" in shown
    refusal = notebook.get_by_text(re.compile(r"row 12 has no value for \{text\}"))
    assert refusal.count() == 1 and "(nothing was sent)" in refusal.inner_text() and "Traceback" not in shown
    assert "_status_input" in shown
    refusal.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "19-rows-gap-refused.png"))
    page.goto(f"{lab}/lab/tree/demo.ipynb?token={TOKEN}&reset")  # back to the notebook the other tests use
    page.wait_for_function("document.querySelectorAll('.jp-Notebook .jp-Cell').length > 30", timeout=60_000)


def test_rows_sent_as_a_batch_show_the_batch_s_counts_then_the_same_summary(page: Page, fake: FakeOpenRouter) -> None:
    """--via batch: the poll's line (batches, requests done) stays above the summary a live run ends with."""
    run_cell(page, ROWS_CELL)
    run_cell(page, POLL_CELL)
    target = run_cell(page, BATCH_CELL)
    output = target.locator(".jp-Cell-outputArea")
    output.get_by_text(re.compile(r"30 rows · 30 ok")).wait_for(timeout=60_000)
    shown = output.inner_text()
    assert re.search(r"batch: 1 batch\(es\), 30 request\(s\): 30 done, 0 failed \(completed\)", shown), shown
    assert fake.batch_creates and len(fake.batch_creates[-1]["requests"]) == 30
    target.screenshot(path=str(ARTIFACTS / "18-rows-batch.png"))
