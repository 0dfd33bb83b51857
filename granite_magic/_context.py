"""Notebook context for a prompt: variables described within a cap, documents read from files, cells from history.

Everything here is pure: values, file paths and IPython's ``In``/``Out`` come in, text goes out, and
nothing is sent anywhere.  The front end decides where the text goes (the system side of a request).

* ``describe(name, value)`` is one ``### name (type)`` section of at most ``DESCRIBE_MAX_CHARS``
  characters, chosen from ``_DESCRIBERS`` by the value's type; ``context_block(items)`` wraps the
  sections in ``<context>`` ... ``</context>``.
* ``load_documents(patterns, base=...)`` reads files (globs allowed) with the reader ``_READERS`` names for
  their extension, refusing with one line what cannot be attached; ``documents_block`` is the same text
  for a system prompt, ``granite_documents`` the list that Granite's chat template takes as ``documents``.
* ``cell_source(In, Out, n)`` is the source (and value) of notebook cell ``n``, ``-1`` the previous one.

pandas and NumPy are never imported here unless a value of theirs is being described: types are
recognised by their module and class name, so a user without them is unaffected.
"""

from __future__ import annotations

import errno
import glob
import html
import itertools
import json
import math
import numbers
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import InvalidParameterError, shown_path

__all__ = [
    "CELL_OUTPUT_MAX_CHARS",
    "CELL_SOURCE_MAX_CHARS",
    "DESCRIBE_MAX_CHARS",
    "MAX_DOCUMENT_BYTES",
    "NOTEBOOK_FILE_FACTOR",
    "Document",
    "FileRefused",
    "cell_source",
    "context_block",
    "describe",
    "documents_block",
    "estimate_tokens",
    "granite_documents",
    "load_documents",
    "read_capped",
]

CHARS_PER_TOKEN = 4  # English text and code average about four characters per token in BPE vocabularies
DESCRIBE_MAX_CHARS = 1200  # one variable's section: at most 300 estimated tokens, however big the value
MIN_DESCRIBE_CHARS = 100  # below this not even a heading and a truncation marker fit
MAX_DOCUMENT_BYTES = 1_000_000  # 1 MB of text is ~250k tokens: already more than Granite's 131k context
NOTEBOOK_FILE_FACTOR = 20  # an .ipynb may be this much bigger than its text: images and HTML outputs are dropped
CELL_SOURCE_MAX_CHARS = 8000
CELL_OUTPUT_MAX_CHARS = 2000  # Out[N] is a repr; pandas already shortens frames, other objects may not

# Shown parts of big values: enough for a model to see the shape of the data, few enough to stay small.
# (head rows, rows with a missing value after them): the most that fit the cap, tried in this order.  Rows with a
# missing value are shown besides the head because questions are often about them.
HEAD_ROWS = ((3, 3), (3, 1), (2, 1), (1, 1))
SMALL_FRAME_ROWS = 10  # a frame this small is shown whole (when it fits the cap)
FRAME_COLUMNS = 12  # columns listed with their dtypes (a wide frame says how many more)
HEAD_COLUMNS = 10
STAT_COLUMNS = 6
MISSING_COLUMNS = 8
SAMPLE_ITEMS = 8
TYPE_SCAN = 10_000  # element types are counted over at most this many items, so a huge list stays cheap
SORT_LIMIT = 10_000  # sets up to this size are sorted so that their sample is the same in every process
CELL_CHARS = 24  # a head cell or a sample item longer than this is cut
ERROR_CHARS = 200
CAP_NOTE = "(more left out to stay within the size cap)"


def estimate_tokens(text: str) -> int:
    """An estimate of the tokens in ``text`` (characters / 4, rounded up), not a count.

    Exact counts need the model's own tokenizer; this is for caps and for labelled estimates.
    """
    return -(-len(text) // CHARS_PER_TOKEN)


# --- text helpers ------------------------------------------------------------------------------


def _marker(hidden: int) -> str:
    return f"\n[truncated: {hidden} more characters]"


def _truncate(text: str, limit: int) -> str:
    """``text``, or its start and a visible marker saying how many characters are hidden, in at most ``limit``."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(_marker(len(text))))  # the widest marker this text can need
    return text[:keep] + _marker(len(text) - keep)


def _cut(text: str, limit: int = CELL_CHARS) -> str:
    """One short line: newlines shown as ``\\n`` and an ellipsis when cut (for cells and samples)."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _exception_text(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:  # an exception whose str() raises too: its type still says something
        message = ""
    return f"{type(exc).__name__}: {_cut(message, ERROR_CHARS)}" if message else type(exc).__name__


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:  # user objects may raise anything from __repr__; the block must still be built
        return f"<repr failed: {_exception_text(exc)}>"


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception as exc:
        return f"<str failed: {_exception_text(exc)}>"


def _num(x: Any) -> str:
    """A number rounded for reading: integers exact, others to four significant digits."""
    try:
        f = float(x)
    except (TypeError, ValueError, OverflowError):
        return _cut(_safe_str(x))
    if math.isnan(f) or math.isinf(f):
        return str(f)
    if f.is_integer() and abs(f) < 1e15:
        return str(int(f))
    if 1e-3 <= abs(f) < 1e6:
        decimals = max(0, 3 - math.floor(math.log10(abs(f))))
        text = f"{f:.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{f:.3e}"


def _cell(value: Any) -> str:
    """A table cell or sample item on one short line."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return _num(value)  # floats (NumPy's too) rounded, so 0.1 + 0.2 does not show 17 digits
    if isinstance(value, str):
        return _cut(value)
    return _cut(_safe_str(value))


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _type_name(value: Any) -> str:
    """``int``, ``list``, a notebook's own ``Point``; others qualified by their top-level package: ``pandas.DataFrame``."""
    cls = type(value)
    package = cls.__module__.split(".")[0]
    return cls.__qualname__ if package in ("builtins", "__main__") else f"{package}.{cls.__qualname__}"


def _type_counts(items: Iterable[Any]) -> str:
    counts = Counter(_type_name(item) for item in itertools.islice(items, TYPE_SCAN))
    return ", ".join(f"{name} {n:,}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _fits(blocks: Sequence[str], budget: int) -> bool:
    return len("\n".join(block for block in blocks if block)) <= budget


def _fit(blocks: Sequence[str], budget: int) -> str:
    """The blocks (empty ones skipped) that fit in ``budget`` characters, in priority order; a note when some did not."""
    blocks = [block for block in blocks if block]
    if _fits(blocks, budget):
        return "\n".join(blocks)
    kept: list[str] = []
    for block in blocks:
        if _fits([*kept, block, CAP_NOTE], budget):
            kept.append(block)
    return "\n".join([*kept, CAP_NOTE])


# --- pandas ------------------------------------------------------------------------------------


def _frame_columns(frame: Any) -> str:
    columns = [f"{_cut(_safe_str(name))} {dtype}" for name, dtype in itertools.islice(frame.dtypes.items(), FRAME_COLUMNS)]
    more = frame.shape[1] - len(columns)
    return "columns: " + (", ".join(columns) or "none") + (f", and {more:,} more" if more > 0 else "")


def _missing(names: Sequence[str], counts: Sequence[int]) -> str:
    found = [(name, n) for name, n in zip(names, counts, strict=True) if n]
    if not found:
        return "missing values: none"
    shown = ", ".join(f"{name} {n:,}" for name, n in found[:MISSING_COLUMNS])
    more = len(found) - MISSING_COLUMNS
    return "missing values: " + shown + (f", and {more:,} more columns with some" if more > 0 else "")


def _is_stat_dtype(dtype: Any) -> bool:
    from pandas.api import types  # only reached for a pandas value, so pandas is already imported

    return bool(types.is_numeric_dtype(dtype) and not types.is_bool_dtype(dtype) and not types.is_complex_dtype(dtype))


def _stat_row(series: Any) -> str:
    # count/mean/std/min/max are single passes; describe() would also sort for its quartiles
    values = (series.count(), series.mean(), series.std(), series.min(), series.max())
    return " | ".join(_num(v) for v in values)


def _frame_stats(frame: Any) -> str:
    positions = [i for i, dtype in enumerate(frame.dtypes) if _is_stat_dtype(dtype)]
    if not positions:
        return ""
    rows = [f"{_cut(_safe_str(frame.columns[i]))} | {_stat_row(frame.iloc[:, i])}" for i in positions[:STAT_COLUMNS]]
    more = len(positions) - STAT_COLUMNS
    tail = [f"(and {more:,} more numeric columns)"] if more > 0 else []
    return "\n".join(["numeric summary:", "column | count | mean | std | min | max", *rows, *tail])


def _has_default_index(index: Any) -> bool:
    return type(index).__name__ == "RangeIndex" and index.start == 0 and index.step == 1


def _shown_rows(frame: Any, rows: tuple[int, int] | None) -> tuple[list[int], str]:
    """The positions of the rows to show and how to call them: every row (``rows`` None), or the first ``n`` and
    the first ``missing`` rows with a missing value after them."""
    if rows is None:
        return list(range(len(frame))), f"all {_count(len(frame), 'row')}"
    n, missing = rows
    first = list(range(min(n, len(frame))))
    gaps = [int(i) for i in frame.isna().to_numpy().any(axis=1).nonzero()[0][: n + missing] if i >= n][:missing]
    words = f"first {_count(len(first), 'row')}"
    return first + gaps, words + (f", and {_count(len(gaps), 'row')} with a missing value" if gaps else "")


def _frame_head(frame: Any, rows: tuple[int, int] | None) -> str:
    positions, words = _shown_rows(frame, rows)
    head = frame.iloc[positions, :HEAD_COLUMNS]  # only these cells are ever turned into text
    if len(head) == 0:
        return ""
    # A row's label says where it is when the rows shown are not the first ones in order.
    with_index = not _has_default_index(frame.index) or positions != list(range(len(positions)))
    names = (["(index)"] if with_index else []) + [_cut(_safe_str(c)) for c in head.columns]
    lines = [words + (f" (first {HEAD_COLUMNS} columns):" if frame.shape[1] > HEAD_COLUMNS else ":")]
    lines.append(" | ".join(names))
    for i in range(len(head)):
        cells = [_cell(head.index[i])] if with_index else []
        lines.append(" | ".join(cells + [_cell(head.iat[i, j]) for j in range(head.shape[1])]))
    return "\n".join(lines)


def _describe_frame(frame: Any, budget: int) -> str:
    rows, cols = frame.shape
    missing = _missing([_cut(_safe_str(c)) for c in frame.columns], [rows - int(n) for n in frame.count()])
    fixed = [f"{_count(rows, 'row')}, {_count(cols, 'column')}", _frame_columns(frame), missing, _frame_stats(frame)]
    # Head rows come last and shrink first: the shape, dtypes and statistics say more per character.
    for shown in ((None,) if rows <= SMALL_FRAME_ROWS else ()) + HEAD_ROWS:
        blocks = [*fixed, _frame_head(frame, shown)]
        if _fits(blocks, budget):
            return "\n".join(block for block in blocks if block)
    return _fit(blocks, budget)


def _describe_series(series: Any, budget: int) -> str:
    name = "" if series.name is None else f", name {_cut(_safe_str(series.name))}"
    summary = f"{_count(len(series), 'value')}, dtype {series.dtype}{name}"
    missing = len(series) - int(series.count())
    stats = f"count | mean | std | min | max: {_stat_row(series)}" if _is_stat_dtype(series.dtype) else ""
    head = series.iloc[:SAMPLE_ITEMS]
    if _has_default_index(series.index):
        shown = ", ".join(_cell(v) for v in head)
    else:  # a labelled series (dates, names): the labels are half of the data
        shown = ", ".join(f"{_cell(i)}: {_cell(v)}" for i, v in zip(head.index, head, strict=True))
    more = ", …" if len(series) > SAMPLE_ITEMS else ""
    return _fit([summary, f"missing values: {missing:,}" if missing else "missing values: none", stats, f"first values: {shown}{more}"], budget)


# --- NumPy -------------------------------------------------------------------------------------


def _array_stats(array: Any) -> str:
    import numpy  # only reached for an ndarray, so NumPy is already imported

    if array.size == 0 or not (numpy.issubdtype(array.dtype, numpy.integer) or numpy.issubdtype(array.dtype, numpy.floating)):
        return ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN array has no min; "nan" says so
        low, high, mean = numpy.nanmin(array), numpy.nanmax(array), numpy.nanmean(array)
    nans = int(numpy.isnan(array).sum()) if numpy.issubdtype(array.dtype, numpy.floating) else 0
    return f"min {_num(low)}, max {_num(high)}, mean {_num(mean)}" + (f", NaN {nans:,}" if nans else "")


def _describe_array(array: Any, budget: int) -> str:
    summary = f"shape {tuple(array.shape)}, dtype {array.dtype}"
    flat = " (flattened)" if array.ndim > 1 else ""
    sample = array.flat[:SAMPLE_ITEMS].tolist()  # .flat copies only these items, even from a non-contiguous view
    more = ", …" if array.size > SAMPLE_ITEMS else ""
    first = f"first values{flat}: " + ", ".join(_short(v) for v in sample) + more
    return _fit([summary, first, _array_stats(array)], budget)


# --- built-in values ---------------------------------------------------------------------------

_BRACKETS = {"list": ("[", "]"), "tuple": ("(", ")"), "set": ("{", "}"), "frozenset": ("{", "}"), "dict": ("{", "}")}


def _short(value: Any) -> str:
    """An item of a sample: nested containers only by their size, so the description stays shallow."""
    kind = next((cls.__name__ for cls in type(value).__mro__ if cls.__name__ in _BRACKETS and cls.__module__ == "builtins"), None)
    if kind is not None:
        opening, closing = _BRACKETS[kind]
        return f"{opening}… {_count(len(value), 'key' if kind == 'dict' else 'item')}{closing}"
    if _type_key(value) in _SHAPED:
        return f"<{_type_name(value)} shape {tuple(value.shape)}>"
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return _num(value)
    return _cut(_safe_repr(value), CELL_CHARS * 2)


def _sample(items: Iterable[Any], length: int) -> str:
    shown = ", ".join(_short(item) for item in itertools.islice(items, SAMPLE_ITEMS))
    return shown + (", …" if length > SAMPLE_ITEMS else "")


def _ordered(items: Collection[Any]) -> Iterable[Any]:
    """A set's items in an order that does not depend on hash seeds (small sets are sorted)."""
    if len(items) > SORT_LIMIT:
        return iter(items)
    try:
        return sorted(items)
    except TypeError:  # mixed types: order by type, then text
        return sorted(items, key=lambda x: (_type_name(x), _safe_repr(x)))


def _describe_collection(value: Any, budget: int) -> str:
    items = _ordered(value) if isinstance(value, (set, frozenset)) else value
    summary = f"{_count(len(value), 'item')}; types: {_type_counts(value) or 'none'}"
    if len(value) > TYPE_SCAN:
        summary += f" (of the first {TYPE_SCAN:,})"
    return _fit([summary, f"first items: {_sample(items, len(value))}"], budget)


def _describe_mapping(value: Any, budget: int) -> str:
    summary = f"{_count(len(value), 'key')}; key types: {_type_counts(value) or 'none'}; value types: {_type_counts(value.values()) or 'none'}"
    pairs = itertools.islice(value.items(), SAMPLE_ITEMS)
    shown = ", ".join(f"{_short(k)}: {_short(v)}" for k, v in pairs) + (", …" if len(value) > SAMPLE_ITEMS else "")
    return _fit([summary, f"first items: {{{shown}}}"], budget)


def _describe_text(value: Any, budget: int) -> str:
    return _truncate(str(value), budget)


def _describe_bytes(value: Any, budget: int) -> str:
    # repr() of a large bytes object is four times its size; show the start only
    return _fit([_count(len(value), "byte"), f"starts: {_safe_repr(bytes(value[:CELL_CHARS * 4]))}"], budget)


def _describe_repr(value: Any, budget: int) -> str:
    return _truncate(_safe_repr(value), budget)


Describer = Callable[[Any, int], str]

# How each kind of value is described, looked up along the value's class hierarchy (so a dict subclass
# is a mapping) by "top-level package.class name": pandas and NumPy are recognised without importing them.
_DESCRIBERS: dict[str, Describer] = {
    "pandas.DataFrame": _describe_frame,
    "pandas.Series": _describe_series,
    "numpy.ndarray": _describe_array,
    "builtins.str": _describe_text,
    "builtins.bytes": _describe_bytes,
    "builtins.bytearray": _describe_bytes,
    "builtins.dict": _describe_mapping,
    "builtins.list": _describe_collection,
    "builtins.tuple": _describe_collection,
    "builtins.set": _describe_collection,
    "builtins.frozenset": _describe_collection,
}
_SHAPED = frozenset({"pandas.DataFrame", "pandas.Series", "numpy.ndarray"})  # shown by shape when nested


def _type_key(value: Any) -> str | None:
    for cls in type(value).__mro__:
        key = f"{cls.__module__.split('.')[0]}.{cls.__name__}"
        if key in _DESCRIBERS:
            return key
    return None


def describe(name: str, value: Any, *, max_chars: int = DESCRIBE_MAX_CHARS) -> str:
    """A ``### name (type)`` section describing ``value`` in at most ``max_chars`` characters; never raises.

    The same value gives the same text every time.  Large values are summarised (shape, types, a sample,
    statistics), never converted to text whole.
    """
    if max_chars < MIN_DESCRIBE_CHARS:
        raise InvalidParameterError(f"max_chars={max_chars} is too small to describe anything (at least {MIN_DESCRIBE_CHARS}).")
    heading = f"### {name} ({_type_name(value)})\n"
    key = _type_key(value)
    describer = _DESCRIBERS[key] if key is not None else _describe_repr
    try:
        body = describer(value, max_chars - len(heading))
    except Exception as exc:  # a broken or exotic subclass: say so, and fall back to its repr
        body = f"<description failed: {_exception_text(exc)}>\n" + _safe_repr(value)
    return _truncate(heading + body, max_chars)


def _guarded(text: str, tag: str) -> str:
    """Text that cannot close the block it sits in (a value or a file containing ``</context>``)."""
    return text.replace(f"</{tag}", f"<\\/{tag}")


def _block(tag: str, preamble: str, parts: Sequence[str]) -> str:
    return f"<{tag}>\n" + "\n\n".join([preamble, *parts]) + f"\n</{tag}>"


CONTEXT_PREAMBLE = (
    "These are variables from the user's Jupyter notebook (Python), described in summary: large values show "
    "their shape, types, a sample and statistics rather than every value."
)


def context_block(items: Sequence[tuple[str, Any]], *, max_chars: int = DESCRIBE_MAX_CHARS) -> str:
    """One ``<context>`` ... ``</context>`` block describing each ``(name, value)``; ``""`` when there are none.

    ``max_chars`` caps each variable's section, not the block.
    """
    if not items:
        return ""
    sections = [_guarded(describe(name, value, max_chars=max_chars), "context") for name, value in items]
    return _block("context", CONTEXT_PREAMBLE, sections)


# --- documents ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """A file's text as the model will read it; ``name`` is its path as the user gave it (relative to the base)."""

    name: str
    text: str
    kind: str  # "text", "markdown", "code" or "notebook"


def _refusal(name: str, why: str) -> InvalidParameterError:
    return InvalidParameterError(f"Cannot attach {name}: {why}".replace("\n", " "))


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return _count(n, "byte")


def _decode(data: bytes, name: str) -> str:
    if b"\x00" in data:  # text files never hold NUL; images, archives, PDFs and pickles almost always do
        raise _refusal(name, "it is a binary file, not text.")
    try:
        text = data.decode("utf-8-sig")  # -sig: a byte-order mark is not part of the text
    except UnicodeDecodeError:
        raise _refusal(name, "it is not UTF-8 text (a binary file, or another encoding).") from None
    return text.replace("\r\n", "\n")


def _read_text(data: bytes, name: str) -> str:
    return _decode(data, name)


def _joined(source: Any) -> str:
    """nbformat stores multi-line strings either whole or as a list of lines."""
    return "".join(source) if isinstance(source, list) else str(source)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours in stream output and tracebacks mean nothing to a model

# What each kind of output contributes: its text, never images or HTML.
_OUTPUT_TEXT: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "stream": lambda out: _joined(out.get("text", "")),
    "execute_result": lambda out: _joined(out.get("data", {}).get("text/plain", "")),
    "display_data": lambda out: _joined(out.get("data", {}).get("text/plain", "")),
    "error": lambda out: f"{out.get('ename', 'Error')}: {out.get('evalue', '')}",
}


def _notebook_cell(number: int, cell: Mapping[str, Any]) -> str:
    count = cell.get("execution_count")
    label = f"{cell.get('cell_type', 'cell')}, In [{count}]" if count else str(cell.get("cell_type", "cell"))
    parts = [f"--- cell {number} ({label}) ---", _joined(cell.get("source", "")).rstrip("\n")]
    outputs = [_OUTPUT_TEXT[o["output_type"]](o) for o in cell.get("outputs", []) if o.get("output_type") in _OUTPUT_TEXT]
    if any(text.strip() for text in outputs):
        parts += ["--- output ---", _ANSI.sub("", "".join(o if o.endswith("\n") else o + "\n" for o in outputs)).rstrip("\n")]
    return "\n".join(parts)


def _read_notebook(data: bytes, name: str) -> str:
    try:
        notebook = json.loads(_decode(data, name))
        cells = notebook["cells"]
        return "\n\n".join(_notebook_cell(i, cell) for i, cell in enumerate(cells, start=1))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _refusal(name, "it is not a Jupyter notebook in nbformat 4 (its JSON has no list of cells).") from None


Reader = Callable[[bytes, str], str]

# The kinds of document, by file extension.  A file whose extension is not listed is read as plain text;
# the binary check refuses it if it is not text.
_READERS: dict[str, tuple[str, Reader]] = {
    **dict.fromkeys((".md", ".markdown", ".mdx", ".qmd", ".rmd"), ("markdown", _read_text)),
    **dict.fromkeys(
        (".py", ".pyi", ".ipy", ".r", ".jl", ".sql", ".sh", ".bash", ".js", ".mjs", ".ts", ".tsx", ".jsx",
         ".java", ".kt", ".scala", ".c", ".h", ".cc", ".cpp", ".hpp", ".cs", ".go", ".rs", ".rb", ".php",
         ".swift", ".lua", ".html", ".css", ".xml", ".toml", ".yaml", ".yml", ".json", ".ini", ".cfg"),
        ("code", _read_text),
    ),
    **dict.fromkeys((".txt", ".text", ".rst", ".log", ".csv", ".tsv"), ("text", _read_text)),
    ".ipynb": ("notebook", _read_notebook),
}
_PLAIN_TEXT: tuple[str, Reader] = ("text", _read_text)


class FileRefused(ValueError):
    """A path that is not read: not a regular file, or over a size limit; ``reason`` says which, in a clause."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# What a path is when it is not a regular file, by the kind of its inode.
_NOT_FILES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (a named pipe)"), (stat.S_ISCHR, "a character device"),
              (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_a_file(mode: int) -> str | None:
    return next((what for test, what in _NOT_FILES if test(mode)), None if stat.S_ISREG(mode) else "not a regular file")


def read_capped(path: Path | str, limit: int) -> bytes:
    """The bytes of the regular file at ``path`` (links followed), at most ``limit`` of them.

    Files a notebook names or a repository ships may be anything: a FIFO (reading it waits for a writer forever),
    a device (``/dev/zero`` never ends), a 2 GB sparse file.  The file is opened without waiting (``O_NONBLOCK``),
    its kind and size are checked on the open descriptor, and no more than ``limit`` + 1 bytes are ever read, so
    time and memory are bounded whatever the path is.  ``FileRefused`` says why a path is not read;
    ``FileNotFoundError`` and other ``OSError`` (a link that loops: ``errno.ELOOP``) pass through.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket, or a FIFO opened for writing only: nothing to read
            raise FileRefused("it is a socket, not a regular file") from None
        raise
    with os.fdopen(descriptor, "rb") as file:
        info = os.fstat(descriptor)
        what = _not_a_file(info.st_mode)
        if what is not None:
            raise FileRefused(f"it is {what}, not a regular file")
        if info.st_size > limit:  # checked before reading, so a huge file costs nothing
            raise FileRefused(f"it is {_size(info.st_size)}, over the {_size(limit)} limit")
        data = file.read(limit + 1)  # a file that grew since the check is still read no further
    if len(data) > limit:
        raise FileRefused(f"it is over the {_size(limit)} limit")
    return data


def _read_document(path: Path, name: str, max_bytes: int) -> Document:
    kind, reader = _READERS.get(path.suffix.lower(), _PLAIN_TEXT)
    file_limit = max_bytes * NOTEBOOK_FILE_FACTOR if kind == "notebook" else max_bytes
    try:
        data = read_capped(path, file_limit)
    except FileRefused as exc:
        limit = f" for a {kind} file" if exc.reason.endswith("limit") else ""
        raise _refusal(name, f"{exc.reason}{limit}.") from None
    except OSError as exc:
        raise _refusal(name, _unreadable(exc)) from None
    text = reader(data, name)
    if len(text.encode()) > max_bytes:
        raise _refusal(name, f"its text is {_size(len(text.encode()))}, over the {_size(max_bytes)} limit for a document.")
    return Document(name, text, kind)


def _name(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:  # an absolute path elsewhere keeps its own name
        return str(path)


_GLOB = re.compile(r"[*?[]")


def _matching(pattern: str, base: Path) -> list[Path]:
    expanded = os.path.expanduser(pattern.strip())
    if not expanded:
        raise _refusal(repr(pattern), "an empty path.")
    if _GLOB.search(expanded):
        files = [base / m for m in sorted(glob.glob(expanded, root_dir=base, recursive=True))]
        files = [path for path in files if path.is_file()]
        if not files:
            raise _refusal(pattern, f"no file matches this pattern (in {shown_path(base)}).")
        return files
    path = base / expanded  # an absolute path stays as it is
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise _refusal(pattern, _unreadable(exc, base)) from None
    if stat.S_ISDIR(mode):
        raise _refusal(pattern, "it is a directory; name its files, or a pattern such as dir/*.md.")
    return [path]  # anything else that is not a regular file is refused by name when it is read


def _unreadable(exc: OSError, base: Path | None = None) -> str:
    """Why a path cannot be read, in words: missing, a dangling or looping link, or the system's own reason."""
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link that loops (or one of too many links in a row)."
    if isinstance(exc, FileNotFoundError) and exc.filename is not None and os.path.islink(exc.filename):
        try:
            target = f" to {os.readlink(exc.filename)}"
        except OSError:  # removed meanwhile
            target = ""
        return f"it is a symbolic link{target}, which does not exist."
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return f"no such file (in {shown_path(base)})." if base is not None else "no such file."
    return f"it cannot be read ({_exception_text(exc)})."


def load_documents(patterns: Sequence[str], *, base: Path, max_bytes: int = MAX_DOCUMENT_BYTES) -> list[Document]:
    """The documents that ``patterns`` name (paths or globs, relative to ``base``), in order, each file once.

    Refuses with one ``InvalidParameterError`` line: a missing file, a pattern matching no file, a directory,
    a binary or non-UTF-8 file, a file over ``max_bytes`` (a notebook may be ``NOTEBOOK_FILE_FACTOR`` times
    larger as a file, as long as its text is within ``max_bytes``).
    """
    documents: dict[Path, Document] = {}
    for pattern in patterns:
        for path in _matching(pattern, base):
            key = path.resolve()
            if key not in documents:
                documents[key] = _read_document(path, _name(path, base), max_bytes)
    return list(documents.values())


DOCUMENTS_PREAMBLE = "The user attached these documents. Use them where they are relevant, and say which document you rely on."


def documents_block(documents: Sequence[Document]) -> str:
    """One ``<documents>`` block (each ``<document name=...>``) for a system prompt; ``""`` when there are none."""
    if not documents:
        return ""
    parts = [
        f'<document name="{html.escape(doc.name)}" kind="{doc.kind}">\n{_guarded(doc.text, "document")}\n</document>'
        for doc in documents
    ]
    return _block("documents", DOCUMENTS_PREAMBLE, parts)


def granite_documents(documents: Sequence[Document]) -> list[dict[str, str]]:
    """The ``documents`` argument of Granite's chat template: ``{"doc_id", "title", "text"}`` per document.

    Granite 4.0 writes each dict as JSON inside ``<documents>`` in the system turn; Granite 3.3 reads
    ``doc_id`` and ``text``; Granite 3.1 and 3.2 read ``text``.  ``doc_id`` counts from "1".
    """
    return [{"doc_id": str(i), "title": doc.name, "text": doc.text} for i, doc in enumerate(documents, start=1)]


# --- notebook cells ----------------------------------------------------------------------------


def cell_source(history: Sequence[str], outputs: Mapping[int, Any], n: int, *, current: int | None = None) -> str:
    """The source of cell ``In[n]`` and its value ``Out[n]`` if it has one; ``n = -1`` is the cell before this one.

    ``history`` is IPython's ``In`` (``In[0]`` is empty) and ``outputs`` its ``Out``.  ``current`` is the number
    of the running cell (the shell's ``execution_count`` while a cell runs); by default the last entry of
    ``history``, since IPython stores a cell's input before running it.  Only earlier cells can be named.
    Printed output is not kept by IPython, so only ``Out[n]`` (the cell's value) is shown.
    """
    now = len(history) - 1 if current is None else current
    earlier = min(now, len(history)) - 1  # the cells 1..earlier exist and come before the running one
    number = now + n if n < 0 else n
    if earlier < 1:
        raise InvalidParameterError(f"--cell {n}: there is no earlier cell in this session to include.")
    if n == 0 or not 1 <= number <= earlier:
        raise InvalidParameterError(f"--cell {n} is out of range: use 1 to {earlier}, or -1 to -{earlier} counting back from this cell.")
    parts = [f"In [{number}]:", _truncate(history[number].rstrip("\n"), CELL_SOURCE_MAX_CHARS)]
    if number in outputs:
        parts += [f"Out[{number}]:", _truncate(_safe_repr(outputs[number]), CELL_OUTPUT_MAX_CHARS)]
    return "\n".join(parts)
