"""What a person sees: the live streaming view and the final static output.

Model output is untrusted: it reaches the front end only as plain text or as
``safe_markdown`` (see ``markdown.py``), never as HTML.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ._events import Progress
from ._markdown import extract_code, fenced, markdown_literal, safe_markdown
from ._result import Result, json_ready, plain_value
from ._settings import UPDATES_PER_SECOND

if TYPE_CHECKING:
    import ipywidgets

__all__ = [
    "LiveView",
    "TerminalView",
    "WidgetView",
    "reply_bundle",
    "status_line",
    "tool_calls_bundle",
]

MIME_MARKDOWN = "text/markdown"
MIME_PLAIN = "text/plain"
METADATA_KEY = "granite_magic"


# --- status line ------------------------------------------------------------------------


# While streaming, a reply longer than this shows only its end: every refresh resends what is shown,
# so a 10 MB reply must not be sent whole 15 times a second.  The final output holds all of it.
LIVE_TEXT_LIMIT = 100_000


def describe_params(model: str | None, params: Mapping[str, Any]) -> str:
    shown = " · ".join(f"{name.replace('_', ' ')} {value}" for name, value in json_ready(params).items())
    return " · ".join(part for part in (model or "", shown) if part)


def live_status(live: Progress) -> str:
    """``▌ streaming · 1.4 s · 212 tokens · 151 tok/s`` (or what the client is waiting for)."""
    tokens = live.usage.completion_tokens or live.chunks
    elapsed = live.elapsed_s
    if live.ttft_s is None:
        return f"▌ {live.note or 'waiting for the first token'} · {elapsed:.1f} s"
    generating = elapsed - live.ttft_s
    rate = f" · {tokens / generating:.0f} tok/s" if generating > 0.05 and tokens > 1 else ""
    return f"▌ streaming · {elapsed:.1f} s · {tokens} tokens{rate}"


def live_text(live: Progress) -> str:
    text = live.text
    if len(text) <= LIVE_TEXT_LIMIT:
        return text
    return f"[… {len(text) - LIVE_TEXT_LIMIT:,} characters above, shown in full when the reply ends]\n" + text[-LIVE_TEXT_LIMIT:]


def status_line(result: Result) -> str:
    """``3.1 s · first token 0.28 s · 480 tokens · 155 tok/s · $0.000054``."""
    parts = [f"{result.duration_s or 0:.1f} s"]
    if result.ttft_s is not None:
        parts.append(f"first token {result.ttft_s:.2f} s")
    parts.append(f"{result.completion_tokens} tokens")
    if result.tokens_per_s:
        parts.append(f"{result.tokens_per_s:.0f} tok/s")
    if result.cached:
        parts.append("cached" + (f" (first run ${result.cost:.6f})" if result.cost else ""))
    elif result.cost == 0:
        parts.append("free")  # a local model, or a free model: not "$0.000000"
    elif result.cost is not None:
        parts.append(f"${result.cost:.6f}")
    if result.schema_method is not None:
        parts.append(schema_words(result))
    if result.partial:
        parts.append(f"partial reply ({result.ended})")
    elif result.finish_reason and result.finish_reason != "stop":
        parts.append(f"finish: {result.finish_reason}")
    return " · ".join(parts)


def schema_words(result: Result) -> str:
    """``schema valid (grammar, 1 request)``: whether the reply fits its ``--schema``, how that was obtained, and the
    requests it took (a repair is the second)."""
    requests = f"{result.schema_attempts} request{'s' if result.schema_attempts != 1 else ''}"
    verdict = "valid" if not result.schema_errors else "INVALID"
    return f"schema {verdict} ({result.schema_method}, {requests})"


# --- the final output ----------------------------------------------------------------------


def reply_bundle(result: Result, fmt: str = "markdown", extra: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(data, metadata) of the static output that stays in the saved notebook."""
    data: dict[str, Any] = {MIME_PLAIN: result.text}
    if result.schema_method is not None:  # --schema: the JSON as written, and the fields it gave
        data[MIME_MARKDOWN] = fenced(result.text, "json")
        data["text/html"] = structured_html(result)
    elif fmt == "markdown":
        data[MIME_MARKDOWN] = safe_markdown(result.text)
        if result.tokens:  # --probs: the reply shaded by probability, alternatives in each token's tooltip (escaped HTML)
            from ._lens import shaded_html

            data["text/html"] = shaded_html(result.tokens, kind=result.probs_kind, text=result.text)  # spells exactly the text
    elif fmt == "code":
        code, language = extract_code(result.text)
        data[MIME_PLAIN] = code
        data[MIME_MARKDOWN] = fenced(code, language)
    elif fmt == "json" and result.value is not None:
        data["application/json"] = result.value
        data[MIME_MARKDOWN] = fenced(json.dumps(result.value, indent=2, ensure_ascii=False), "json")
    else:  # text, or JSON that did not parse: shown verbatim
        data[MIME_MARKDOWN] = fenced(result.text, "text")
    # The text is in the data already; the metadata holds everything else, so a long reply is sent twice, not three times.
    facts = {k: v for k, v in result.to_dict().items() if k not in ("text", "value")}
    metadata = {METADATA_KEY: {**facts, "format": fmt, **(extra or {})}}
    return data, metadata


def structured_html(result: Result) -> str:
    """A ``--schema`` reply as a person reads it: the JSON as the model wrote it (monospace), the validated value as a
    small field/value table, or what is still wrong with it (the status line under it says the method and the
    requests).  Escaped HTML, static in the saved notebook."""
    import html as html_module

    e = html_module.escape
    parts = [f'<pre class="gm-json" style="white-space:pre-wrap">{e(result.text)}</pre>']
    value = plain_value(result.value)
    if isinstance(value, Mapping):
        rows = "".join(f"<tr><th style=\"text-align:left\">{e(str(name))}</th><td style=\"text-align:left\">{e(_cell_text(item))}</td></tr>"
                       for name, item in value.items())
        parts.append(f'<table class="gm-fields">{rows}</table>')
    if result.schema_errors:  # what is wrong, under the text it is wrong about (the status line says the rest)
        problems = "; ".join(result.schema_errors[:5]) + ("; ..." if len(result.schema_errors) > 5 else "")
        parts.append(f'<div class="gm-schema-note" style="font-size:90%;color:#b00020">does not fit the schema: {e(problems)} '
                     "(the text is kept as the model wrote it)</div>")
    return "".join(parts)


def _cell_text(value: Any) -> str:
    """A field's value in a table cell: text as it is, anything else as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


# A tool-using turn's saved output shows this many calls one by one and counts the rest in a line (a model can
# ask for hundreds in one reply); every call stays whole in the Result (-o NAME's .tool_calls).
CALL_BLOCKS = 20
ARGUMENTS_PREVIEW = 500  # characters of a call's arguments shown


def tool_calls_bundle(result: Result) -> tuple[dict[str, Any], dict[str, Any]]:
    """One collapsible block per call (name, arguments, result or error, time): escaped HTML, Markdown and text.

    What a call returned is shown as a preview of at most ``PREVIEW_CHARS`` characters that says how much was
    cut (the model got more, and the ``Result`` keeps the value itself); whatever the value, nothing raises."""
    import html as html_module

    from ._tools import calls_summary
    from ._values import PREVIEW_CHARS, value_text

    blocks, markdown, plain = [], [], []
    e = html_module.escape
    for i, call in enumerate(result.tool_calls[:CALL_BLOCKS]):
        arguments = value_text(call.arguments if call.arguments is not None else call.raw_arguments, ARGUMENTS_PREVIEW)
        outcome = f"error: {value_text(call.error, PREVIEW_CHARS)}" if call.error else value_text(call.result, PREVIEW_CHARS)
        if not call.error and len(outcome) > PREVIEW_CHARS:  # cut: say where the whole value is
            outcome += f" (the whole value: .tool_calls[{i}].result of the Result, -o NAME)"
        before, name, after = call_head(call)  # the row says which tool and, when it did not run or failed, why
        head = f"{before}{name}{after}"
        blocks.append(f'<details class="gm-tool"><summary>{e(before)}<code>{e(name)}</code>{e(after)}</summary><div>arguments: '
                      f'<code>{e(arguments)}</code></div><pre style="white-space:pre-wrap">{e(outcome)}</pre></details>')
        markdown.append(f"**{markdown_literal(head)}** · arguments `{markdown_literal(arguments)}`\n\n{fenced(outcome, 'text')}")
        plain.append(f"{head}\n  arguments {arguments} -> {outcome}")
    if len(result.tool_calls) > CALL_BLOCKS:
        more = f"… and {calls_summary(result.tool_calls[CALL_BLOCKS:])} (all in .tool_calls of the Result, -o NAME)"
        blocks.append(f"<div>{html_module.escape(more)}</div>")
        markdown.append(markdown_literal(more))
        plain.append(more)
    data = {"text/html": "".join(blocks), MIME_MARKDOWN: "\n\n".join(markdown), MIME_PLAIN: "\n".join(plain)}
    return data, {}  # the reply's own output below carries the metadata, calls included


REASON_CHARS = 160  # of why a call did not run or failed, on its row (the block holds all of it)


def call_head(call: Any) -> tuple[str, str, str]:
    """A call's row as (before the name, the name, after it): ``Ran convert · 3 ms``, ``⚠ convert failed · 2 ms:
    ValueError: ...``, ``⚠ Did not run convert: the user declined to run this call``.  Rows of calls that went
    wrong differ by what went wrong, not only by a warning sign."""
    name = call.name or "(no name)"
    took = f" · {call.duration_s * 1000:.0f} ms" if call.duration_s else ""
    reason = _one_line(call.error or "", REASON_CHARS)
    if not call.ran:
        return "⚠ Did not run ", name, f": {reason}" if reason else ""
    if call.error:
        return "⚠ ", name, f" failed{took}: {reason}"
    return "Ran ", name, took


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_bundle(text: str) -> dict[str, Any]:
    return {MIME_PLAIN: text, MIME_MARKDOWN: f"<sub>{markdown_literal(text)}</sub>"}


# --- live views ------------------------------------------------------------------------------


class LiveView(Protocol):
    def show(self) -> None: ...
    async def run(self, acc: Progress) -> None: ...
    def finish(self, result: Result, fmt: str, extra: Mapping[str, Any] | None = None, *, note: str | None = None) -> None: ...


class ThrottledOutput:
    """An ``Output`` widget refreshed from the background loop, throttled.

    One trait (``outputs``) carries everything shown, so each refresh is one
    comm message; refreshes happen at most ``rate`` times a second however
    fast tokens arrive (each message resends the whole text, so unthrottled
    updates would make a long reply quadratic).  Trait values are set from the
    background thread, never ``with output:``.  Subclasses say what to show
    (``outputs``) and how far the stream has got (``progress``).
    """

    STATUS_EVERY_S = 0.25  # refresh for the clock alone this often when no text arrives

    def __init__(self, *, rate: float = UPDATES_PER_SECOND, embedded: bool = False) -> None:
        import ipywidgets

        self.interval = 1.0 / rate
        self.embedded = embedded  # inside another widget (the panel) rather than a cell's output
        self.widget: ipywidgets.Output = ipywidgets.Output()
        self._handle: Any = None
        self._sent_progress = -1
        self._sent_at = 0.0
        self.updates = 0

    def outputs(self, state: Any) -> tuple[dict[str, Any], ...]:
        raise NotImplementedError

    def progress(self, state: Any) -> int:
        raise NotImplementedError

    def show_widget(self, initial: tuple[dict[str, Any], ...]) -> None:
        if not self.embedded:
            from IPython.display import display

            self._handle = display(self.widget, display_id=True)  # type: ignore[no-untyped-call]
        self.widget.outputs = initial

    async def run(self, state: Any) -> None:
        """Refresh until cancelled: the stream's companion task on the background loop."""
        while True:
            self.refresh(state)
            await asyncio.sleep(self.interval)

    def refresh(self, state: Any, *, force: bool = False) -> None:
        now = time.monotonic()
        progress = self.progress(state)
        if not force and progress == self._sent_progress and now - self._sent_at < self.STATUS_EVERY_S:
            return
        self._sent_progress, self._sent_at = progress, now
        self.widget.outputs = self.outputs(state)
        self.updates += 1

    def replace_with(self, data: dict[str, Any], metadata: dict[str, Any], *after: dict[str, Any]) -> None:
        """Swap the widget for static outputs, so the result survives without widget state.

        The first output takes the widget's place; the others follow it.  Embedded in the panel,
        the widget stays and shows the static outputs instead.
        """
        if self.embedded:
            self.widget.outputs = ({"output_type": "display_data", "data": data, "metadata": metadata}, *after)
            return
        if self._handle is not None:
            self._handle.update(data, metadata=metadata, raw=True)
        self.close()
        for output in after:
            display_raw(output["data"], output["metadata"])


    def close(self) -> None:
        """Close the widget and the Layout it made, so no widget outlives its cell."""
        self.widget.layout.close()
        self.widget.close()


class WidgetView(ThrottledOutput):
    """One reply streaming as Markdown (made safe), with a status line (and, with tools, a line per call)."""

    def __init__(self, title: str, *, rate: float = UPDATES_PER_SECOND, embedded: bool = False) -> None:
        super().__init__(rate=rate, embedded=embedded)
        self.title = title
        self.lines: list[str] = []  # what the tool loop did so far: "calling convert(amount=120)", "  → 14400.0"
        self._state: Progress | None = None  # the step shown last: between two steps the view still shows it
        self._status: str | None = None  # what the status line says between steps instead of the stream's own
        self.monospace = False  # --schema: the JSON streams as written, not as Markdown

    def show(self) -> None:
        self.show_widget((self._header(), _markdown_output(""), _plain_output("▌ sending…")))

    async def run(self, state: Progress) -> None:
        self._state, self._status = state, None  # a step streams: the status line is the stream's again
        await super().run(state)

    def log(self, line: str) -> None:
        """A line of what the tool loop does, shown at once: between two steps nothing else refreshes the view."""
        self.lines.append(line)
        self.status(self._status or "running the tool calls")

    def status(self, text: str | None) -> None:
        """Say ``text`` on the status line now (the cell is between two steps: running a tool, or waiting for an
        answer); None: the stream's own status again."""
        self._status = text
        if self._state is not None:
            self.refresh(self._state, force=True)

    def _header(self) -> dict[str, Any]:
        return _markdown_output(f"**{markdown_literal(self.title)}**")

    def progress(self, state: Progress) -> int:
        return state.chunks

    def outputs(self, state: Progress) -> tuple[dict[str, Any], ...]:
        calls = (_plain_output("\n".join(self.lines)),) if self.lines else ()
        status = f"▌ {self._status}" if self._status else live_status(state)
        text = fenced(live_text(state), "json") if self.monospace else safe_markdown(live_text(state))
        return (self._header(), *calls, _markdown_output(text), _plain_output(status))

    def finish(self, result: Result, fmt: str = "markdown", extra: Mapping[str, Any] | None = None, *, note: str | None = None) -> None:
        line = f"{self.title} · {status_line(result)}" + (f" · {note}" if note else "")
        status = {"output_type": "display_data", "data": status_bundle(line), "metadata": {}}
        data, metadata = reply_bundle(result, fmt, extra)
        reply: dict[str, Any] = {"output_type": "display_data", "data": data, "metadata": metadata}
        if result.tool_calls:  # the calls, collapsible, above the answer they led to
            self.replace_with(*tool_calls_bundle(result), reply, status)
        else:
            self.replace_with(reply["data"], reply["metadata"], status)


class TerminalView:
    """Terminal IPython: print the text as it arrives, then the status line."""

    def __init__(self, title: str, *, stream: Any = None) -> None:
        self.title = title
        self.stream = stream or sys.stdout
        self.monospace = False  # text in a terminal is monospace already
        self._printed = 0

    def show(self) -> None:
        print(self.title, file=self.stream, flush=True)

    async def run(self, acc: Progress) -> None:
        while True:
            self.print_new(acc)
            await asyncio.sleep(0.05)

    def print_new(self, acc: Progress) -> None:
        text = acc.text
        if len(text) > self._printed:
            self.stream.write(text[self._printed :])
            self.stream.flush()
            self._printed = len(text)

    def log(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def finish(self, result: Result, fmt: str, extra: Mapping[str, Any] | None = None, *, note: str | None = None) -> None:
        rest = result.text[self._printed :]
        self.stream.write(rest + "\n")
        print(status_line(result) + (f" · {note}" if note else ""), file=self.stream, flush=True)


def _markdown_output(markdown: str) -> dict[str, Any]:
    return {"output_type": "display_data", "data": {MIME_MARKDOWN: markdown, MIME_PLAIN: markdown}, "metadata": {}}


def _plain_output(text: str) -> dict[str, Any]:
    return {"output_type": "display_data", "data": {MIME_PLAIN: text}, "metadata": {}}


def display_raw(data: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    from IPython.display import display

    display(data, metadata=metadata or {}, raw=True)  # type: ignore[no-untyped-call]
