"""Untrusted model text made safe to render as Markdown, and code/JSON pulled out of it.

A trusted notebook (every output made in the current session is trusted) does
not sanitise Markdown: JupyterLab would run an ``onerror`` handler written by
the model.  So every ``<`` outside code is escaped (inside code Markdown shows
it verbatim anyway) and links to ``javascript:``, ``vbscript:`` and ``data:``
are defused.  ``<img src=x onerror=...>`` then displays as text and runs nothing.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["escape_html", "extract_code", "fenced", "markdown_literal", "parse_json_reply", "safe_markdown"]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_SCRIPT_URL = re.compile(r"\]\(\s*<?\s*(javascript|vbscript|data)\s*:", re.IGNORECASE)


def safe_markdown(text: str) -> str:
    """Markdown with every raw-HTML ``<`` escaped, except inside code, and no script links."""
    out: list[str] = []
    fence: str | None = None
    prose: list[str] = []
    for line in text.splitlines(keepends=True):
        match = _FENCE.match(line)
        if fence is None and match:
            out.append(_escape_prose("".join(prose)))
            prose = []
            fence = match.group(1)
            out.append(line)
        elif fence is not None:
            out.append(line)
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) and not line.strip()[len(match.group(1)):]:
                fence = None
        else:
            prose.append(line)
    out.append(_escape_prose("".join(prose)))
    return "".join(out)


def _escape_prose(text: str) -> str:
    pieces: list[str] = []
    last = 0
    for span in _CODE_SPAN.finditer(text):
        pieces.append(escape_html(text[last : span.start()]))
        pieces.append(span.group(0))
        last = span.end()
    pieces.append(escape_html(text[last:]))
    return "".join(pieces)


def markdown_literal(text: str) -> str:
    """Our own text (status lines, tables) for a Markdown output: no HTML, and no ``$`` pairs
    that Jupyter would typeset as LaTeX (two prices on one line would become "math")."""
    return escape_html(text).replace("$", "\\$")


def escape_html(text: str) -> str:
    return _SCRIPT_URL.sub(lambda m: "](#blocked-" + m.group(1).lower() + ":", text.replace("<", "&lt;"))


_FENCED_BLOCK = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([\w+-]*)[^\n]*\n(.*?)^ {0,3}\1[ \t]*$", re.DOTALL | re.MULTILINE)


def extract_code(text: str) -> tuple[str, str]:
    """(code, language) from a reply: the fenced blocks joined, or the whole text if none."""
    blocks = _FENCED_BLOCK.findall(text)
    if not blocks:
        return text.strip(), ""
    language = next((lang for _, lang, _ in blocks if lang), "")
    return "\n\n".join(code.rstrip("\n") for _, _, code in blocks), language


def parse_json_reply(text: str) -> Any:
    """The JSON value in a reply (fences allowed); raises ValueError with the position."""
    code, _ = extract_code(text)
    return json.loads(code)


def fenced(text: str, language: str = "") -> str:
    """``text`` in a code fence longer than any backtick run inside it, so it cannot close early."""
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"
