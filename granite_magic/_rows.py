"""One prompt over every row of a table (``--over``, ``map``): the rows read, each row's prompt, and the result frame.

Pure but for building the frame with pandas.  A row's prompt is the cell's ``{name}`` rule applied to the row: every
``{name}`` must be a column (``{item}`` for a list of strings), and one that is not is refused before anything is
sent.  The result frame has one row per input row, in input order, whatever happened to it: the input's index and
columns, the reply (``reply``, or the schema's fields as columns), and how it went (``_status`` and the columns after
it).  The runs themselves are a batch like a grid's (``Session.start_map``): concurrency, the budget, a cache entry per
row (a rerun re-pays no finished row) and the ledger come with it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import InvalidParameterError
from ._result import Result, plain_value

__all__ = ["ROW_COLUMNS", "STATUSES", "Rows", "read_rows", "result_frame", "row_prompts", "row_status"]

# How a row went: replied (and fitted its schema), fitted after one repair, did not fit, failed, came from a
# recording, or never ran (the budget was spent, or an interrupt came first).
Status = Literal["ok", "repaired", "invalid", "error", "cached", "skipped"]
STATUSES: tuple[Status, ...] = ("ok", "repaired", "invalid", "error", "cached", "skipped")
ROW_COLUMNS = ("_status", "_error", "_attempts", "_cost", "_latency_s", "_method")  # after the reply's columns
ITEM = "item"  # the one column of a list of strings
_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_]\w*)\}\}|\{([A-Za-z_]\w*)\}")


@dataclass(frozen=True)
class Rows:
    """The rows a prompt goes over: each row's values by column, the input's index labels, and its columns."""

    records: list[dict[str, Any]]
    index: list[Any]
    columns: list[str]
    index_name: Any = None

    def __len__(self) -> int:
        return len(self.records)


def read_rows(over: Any, *, limit: int | None = None, sample: int | None = None) -> Rows:
    """``over`` (a DataFrame, a list of dicts or a list of strings) as ``Rows``; ``limit`` keeps the first N rows,
    ``sample`` N rows drawn at random (always the same N for the same table), kept in input order."""
    rows = _rows_of(over)
    if not rows.records:
        raise InvalidParameterError("--over has no rows", names=("over",))
    for name, value in (("limit", limit), ("sample", sample)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidParameterError(f"{name}={value!r} is out of range: must be an integer >= 1", names=(name,))
    if limit is not None and sample is not None:
        raise InvalidParameterError("limit= and sample= both choose rows: give one of them", names=("limit", "sample"))
    keep = list(range(len(rows)))
    if limit is not None:
        keep = keep[:limit]
    elif sample is not None and sample < len(keep):
        keep = sorted(random.Random(0).sample(keep, sample))  # a fixed draw: the same rows each time, so a rerun is cached
    return Rows([rows.records[i] for i in keep], [rows.index[i] for i in keep], rows.columns, rows.index_name)


def _rows_of(over: Any) -> Rows:
    if hasattr(over, "to_dict") and hasattr(over, "columns") and hasattr(over, "index"):  # a pandas DataFrame
        columns = [str(column) for column in over.columns]
        records = [dict(zip(columns, values, strict=True)) for values in over.itertuples(index=False, name=None)]
        return Rows(records, list(over.index), columns, over.index.name)
    if isinstance(over, Sequence) and not isinstance(over, (str, bytes)):
        items = list(over)
        if all(isinstance(item, str) for item in items):
            return Rows([{ITEM: item} for item in items], list(range(len(items))), [ITEM])
        if all(isinstance(item, Mapping) for item in items):
            columns = list(dict.fromkeys(str(key) for item in items for key in item))
            return Rows([{str(k): v for k, v in item.items()} for item in items], list(range(len(items))), columns)
    raise InvalidParameterError(f"--over takes a DataFrame, a list of dicts or a list of strings, not {type(over).__name__}",
                                names=("over",))


def row_prompts(template: str, rows: Rows) -> list[str]:
    """Each row's prompt: ``{column}`` is the row's value (``{{name}}`` a literal ``{name}``).  Refused before anything
    is sent when a ``{name}`` is no column of the rows, or when the prompt names none (every row would ask the same)."""
    named = [match.group(2) for match in _PLACEHOLDER.finditer(template) if match.group(2)]
    missing = [name for name in dict.fromkeys(named) if name not in rows.columns]
    if missing:
        raise InvalidParameterError(f"the prompt names {', '.join('{' + name + '}' for name in missing)}, which "
                                    f"{'is no column' if len(missing) == 1 else 'are no columns'} of the rows (they have "
                                    f"{', '.join(rows.columns)})", names=("over",))
    if not named:
        raise InvalidParameterError(f"the prompt names no column, so every row would ask the same: write one as "
                                    f"{{{rows.columns[0]}}}", names=("over",))
    return [_filled(template, record) for record in rows.records]


def _filled(template: str, record: Mapping[str, Any]) -> str:
    def replace(match: re.Match[str]) -> str:
        escaped, name = match.groups()
        return "{" + escaped + "}" if escaped is not None else str(record[name])

    return _PLACEHOLDER.sub(replace, template)


def row_status(result: Result | None, error: str | None) -> Status:
    """How one row went (None: it never ran)."""
    if result is None:
        return "skipped"
    if error is not None or result.partial:
        return "error"
    if result.cached:
        return "cached"
    if result.schema_method is not None and result.schema_errors:
        return "invalid"
    return "repaired" if result.schema_attempts > 1 else "ok"


def result_frame(rows: Rows, outcomes: Sequence[tuple[Result | None, str | None]], fields: Sequence[str] | None,
                 attrs: Mapping[str, Any]) -> Any:
    """The result as a DataFrame: one row per input row in input order, its index and columns, then the reply (the
    schema's ``fields`` as columns, or ``reply``), then how it went (``ROW_COLUMNS``); ``attrs`` (the run's settings)
    travel in ``frame.attrs``."""
    import pandas as pd

    table = [{**record, **_reply_columns(result, fields), **_row_columns(result, error)}
             for record, (result, error) in zip(rows.records, outcomes, strict=True)]
    reply = list(fields) if fields is not None else ["reply"]
    frame = pd.DataFrame(table, index=pd.Index(rows.index, name=rows.index_name), columns=[*rows.columns, *reply, *ROW_COLUMNS])
    frame.attrs.update(attrs)
    return frame


def _reply_columns(result: Result | None, fields: Sequence[str] | None) -> dict[str, Any]:
    if fields is None:
        return {"reply": result.text if result is not None else None}
    value = plain_value(result.value) if result is not None else None
    return {name: value.get(name) if isinstance(value, Mapping) else None for name in fields}


def _row_columns(result: Result | None, error: str | None) -> dict[str, Any]:
    status = row_status(result, error)
    if result is None:
        return {"_status": status, "_error": error, "_attempts": 0, "_cost": None, "_latency_s": None, "_method": None}
    problem = error or result.error or ("; ".join(result.schema_errors) if result.schema_errors else None)
    return {"_status": status, "_error": problem, "_attempts": result.schema_attempts or 1, "_cost": result.cost,
            "_latency_s": result.duration_s, "_method": result.schema_method}
