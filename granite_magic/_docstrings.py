"""A function's docstring as a summary and per-argument descriptions, in Google, NumPy or Sphinx style.

Pure text work: ``parse_docstring`` reads all three styles (each argument described once, the first
style to name it wins: Sphinx, then NumPy, then Google), so a tool's description and its parameters'
descriptions come from the docstring the function already has.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence

__all__ = ["parse_docstring"]

_GOOGLE_ARGS = re.compile(r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters):\s*$")
_GOOGLE_HEADER = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")  # Returns:, Raises:, Example: ...
_GOOGLE_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")  # name (type): text
_NUMPY_ARGS = ("Parameters", "Other Parameters")
_NUMPY_RULE = re.compile(r"^\s*-{3,}\s*$")
_NUMPY_ENTRY = re.compile(r"^(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)\s*(?::.*)?$")  # name[, name] : type
_SPHINX_ENTRY = re.compile(r"^:(?:param|parameter|arg|argument|key|keyword)\s+(?:[^:]*?\s)?\*{0,2}(\w+)\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The first paragraph, and per-argument descriptions from Google, NumPy or Sphinx style sections."""
    lines = inspect.cleandoc(doc or "").splitlines()
    arguments: dict[str, str] = {}
    for style in (_sphinx_arguments, _numpy_arguments, _google_arguments):
        for name, text in style(lines).items():
            arguments.setdefault(name, text)
    return _summary(lines), arguments


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _starts_section(lines: Sequence[str], i: int) -> bool:
    text = lines[i].strip()
    underlined = i + 1 < len(lines) and bool(_NUMPY_RULE.match(lines[i + 1]))
    return bool(_GOOGLE_HEADER.match(text)) or text.startswith(":") or underlined


def _summary(lines: Sequence[str]) -> str:
    paragraph: list[str] = []
    for i, line in enumerate(lines):
        if not line.strip() and paragraph:
            break
        if line.strip() and _starts_section(lines, i):
            break
        if line.strip():
            paragraph.append(line.strip())
    return " ".join(paragraph)


def _append(found: dict[str, str], name: str, text: str) -> None:
    found[name] = f"{found[name]} {text}".strip()


def _google_arguments(lines: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    i = 0
    while i < len(lines):
        if _GOOGLE_ARGS.match(lines[i].strip()):
            i = _google_section(lines, i + 1, _indent(lines[i]), found)
        else:
            i += 1
    return found


def _google_section(lines: Sequence[str], start: int, header_indent: int, found: dict[str, str]) -> int:
    """Read entries from ``start``; return where the section ends."""
    entry_indent: int | None = None
    current: str | None = None
    for i in range(start, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        if _indent(line) <= header_indent:  # dedented back to the header: the section is over
            return i
        entry_indent = _indent(line) if entry_indent is None else entry_indent
        match = _GOOGLE_ENTRY.match(line.strip()) if _indent(line) == entry_indent else None
        if match:
            current = match[1]
            found[current] = match[2].strip()
        elif current is not None:
            _append(found, current, line.strip())
    return len(lines)


def _numpy_arguments(lines: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for i in range(len(lines) - 1):
        if lines[i].strip() in _NUMPY_ARGS and _NUMPY_RULE.match(lines[i + 1]):
            _numpy_section(lines, i + 2, _indent(lines[i]), found)
    return found


def _numpy_section(lines: Sequence[str], start: int, header_indent: int, found: dict[str, str]) -> None:
    current: list[str] = []
    for i in range(start, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        if i + 1 < len(lines) and _NUMPY_RULE.match(lines[i + 1]):  # the next underlined section begins
            return
        if _indent(line) <= header_indent:
            match = _NUMPY_ENTRY.match(line.strip())
            current = [n.strip().lstrip("*") for n in match[1].split(",")] if match else []
            found.update(dict.fromkeys(current, ""))
        else:
            for name in current:
                _append(found, name, line.strip())


def _sphinx_arguments(lines: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    current: str | None = None
    for line in lines:
        text = line.strip()
        match = _SPHINX_ENTRY.match(text)
        if match:
            current = match[1]
            found[current] = match[2].strip()
        elif not text or text.startswith(":") or _indent(line) == 0:
            current = None
        elif current is not None:
            _append(found, current, text)
    return found
