"""One prompt over every row of a table (``--over``, ``map``): the rows read, each row's prompt, and the result frame.

Pure but for building the frame with pandas.  A row's prompt is the cell's ``{name}`` rule applied to the row: every
``{name}`` must be a column (``{item}`` for a list of strings), and one that is not is refused before anything is
sent.  The result frame has one row per input row, in input order, whatever happened to it: the input's index and
columns, the reply (``reply``, or the schema's fields as columns), and how it went (``_status`` and the columns after
it).  The runs themselves are a batch like a grid's (``Session.start_map``): concurrency, the budget, a cache entry per
row (a rerun re-pays no finished row) and the ledger come with it.
"""

from __future__ import annotations

import math
import random
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

from ._errors import InvalidParameterError
from ._result import Result, plain_value

__all__ = ["ROW_COLUMNS", "STATUSES", "Expect", "Rows", "Setting", "disagreeing_rows", "expect_column", "interval",
           "looks_like_rows", "read_rows",
           "result_frame", "row_prompts", "row_status", "score", "setting_summary"]

# How a row went: replied (and fitted its schema), fitted after one repair, did not fit, failed, came from a
# recording, or never ran (the budget was spent, or an interrupt came first).
Status = Literal["ok", "repaired", "invalid", "error", "cached", "skipped"]
STATUSES: tuple[Status, ...] = ("ok", "repaired", "invalid", "error", "cached", "skipped")
ROW_COLUMNS = ("_status", "_error", "_attempts", "_cost", "_latency_s", "_method")  # after the reply's columns
ITEM = "item"  # the one column of a list of strings
_IDENTIFIER = r"[A-Za-z_]\w*"  # the cell's {name}: one that is no column is refused
INPUT_SUFFIX = "_input"  # an input column named as a column the result writes keeps its values under this suffix


@dataclass(frozen=True)
class Rows:
    """The rows a prompt goes over: each row's values by column, the input's index labels, and its columns."""

    records: Sequence[Mapping[str, Any]]
    index: list[Any]
    columns: list[str]
    index_name: Any = None

    def __len__(self) -> int:
        return len(self.records)

    def only(self, keep: Sequence[int]) -> Rows:
        """These rows (``--limit``, ``--sample``), in the order given."""
        records = self.records.only(keep) if isinstance(self.records, Records) else [self.records[i] for i in keep]
        return Rows(records, [self.index[i] for i in keep], self.columns, self.index_name)


class Records(Sequence[Mapping[str, Any]]):
    """A DataFrame's rows as mappings of column to value, each made when read: a tuple of values a row (about a
    quarter of a dict's size) for a map over 100,000 rows."""

    def __init__(self, columns: Sequence[str], values: list[tuple[Any, ...]]) -> None:
        self.columns, self.values = columns, values

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, index: int) -> Mapping[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Mapping[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> Mapping[str, Any] | Sequence[Mapping[str, Any]]:
        if isinstance(index, slice):
            return Records(self.columns, self.values[index])
        return dict(zip(self.columns, self.values[index], strict=True))

    def only(self, keep: Sequence[int]) -> Records:
        return Records(self.columns, [self.values[i] for i in keep])


def read_rows(over: Any, *, limit: int | None = None, sample: int | None = None) -> Rows:
    """``over`` (a DataFrame, a Series, a list of dicts or a list of strings) as ``Rows``; ``limit`` keeps the first N
    rows, ``sample`` N rows drawn at random (always the same N for the same table), kept in input order."""
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
    return rows.only(keep)


def looks_like_rows(value: Any) -> bool:
    """Whether ``value`` is something a prompt can go over, at a glance (a list's first 50 items): what the panel
    offers; ``read_rows`` still reads it all."""
    if _is_frame(value) or _is_series(value):
        return True
    return isinstance(value, list) and bool(value) and (all(isinstance(v, str) for v in value[:50])
                                                       or all(isinstance(v, Mapping) for v in value[:50]))


def _is_frame(value: Any) -> bool:  # pandas is never imported for this: a frame is known by what it has
    return hasattr(value, "itertuples") and hasattr(value, "columns") and hasattr(value, "index")


def _is_series(value: Any) -> bool:  # an Index has to_frame too, but no index
    return hasattr(value, "to_frame") and hasattr(value, "index") and not hasattr(value, "columns")


def _rows_of(over: Any) -> Rows:
    if _is_series(over):
        over = over.to_frame(name=ITEM if over.name is None else over.name)  # its one column: {its name}, or {item}
    if _is_frame(over):
        columns = [str(column) for column in over.columns]
        twice = sorted({column for column in columns if columns.count(column) > 1})
        if twice:  # {name} would be ambiguous, and a row's values by column would lose one of them
            raise InvalidParameterError(f"--over has more than one column named {', '.join(twice)}: rename them first "
                                        "(frame.columns = [...])", names=("over",))
        return Rows(Records(columns, list(over.itertuples(index=False, name=None))), list(over.index), columns, over.index.name)
    if isinstance(over, Sequence) and not isinstance(over, (str, bytes)):
        items = list(over)
        if all(isinstance(item, str) for item in items):
            return Rows([{ITEM: item} for item in items], list(range(len(items))), [ITEM])
        if all(isinstance(item, Mapping) for item in items):
            columns = list(dict.fromkeys(str(key) for item in items for key in item))
            return Rows([{str(k): v for k, v in item.items()} for item in items], list(range(len(items))), columns)
    raise InvalidParameterError(f"--over takes a DataFrame, a Series, a list of dicts or a list of strings, not "
                                f"{type(over).__name__}", names=("over",))


def row_prompts(template: str, rows: Rows, *, system: str | None = None) -> list[str]:
    """Each row's prompt: ``{column}`` is the row's value (``{{name}}`` a literal ``{name}``).  Refused before anything
    is sent when a ``{name}`` is no column of the rows, when the prompt names none (every row would ask the same), when
    a row has no value (None, NaN, a key a dict lacks) for a column the prompt names, or when the ``system`` text
    names a column (it is the same for every row: it would be sent with the braces)."""
    placeholder = _placeholder(rows.columns)
    said = system if isinstance(system, str) else ""  # another type is refused with the turn
    shared = [match.group(2) for match in placeholder.finditer(said) if match.group(2) in rows.columns]
    if shared:
        raise InvalidParameterError(f"the system text names {', '.join('{' + name + '}' for name in dict.fromkeys(shared))}, "
                                    "a column: columns fill the prompt only (the system text is the same for every row, "
                                    "read once): move it into the prompt", names=("system",))
    named = list(dict.fromkeys(match.group(2) for match in placeholder.finditer(template) if match.group(2)))
    missing = [name for name in named if name not in rows.columns]
    if missing:
        raise InvalidParameterError(f"the prompt names {', '.join('{' + name + '}' for name in missing)}, which "
                                    f"{'is no column' if len(missing) == 1 else 'are no columns'} of the rows (they have "
                                    f"{', '.join(rows.columns)})", names=("over",))
    if not named:
        raise InvalidParameterError(f"the prompt names no column, so every row would ask the same: write one as "
                                    f"{{{rows.columns[0]}}}", names=("over",))
    prompts, gaps = [], []
    for n, record in enumerate(rows.records):
        if any(_no_value(record.get(name)) for name in named):
            gaps.append(n)
        elif not gaps:  # once a row is refused, the rest are only counted
            prompts.append(_filled(placeholder, template, record))
    if gaps:
        raise _rows_without_values(rows, named, gaps)
    return prompts


def _placeholder(columns: Sequence[str]) -> re.Pattern[str]:
    """``{name}`` as the cell writes it, or ``{the name}`` of a column whose name is no identifier (``{first name}``,
    ``{0}``); any other braces are the prompt's own text (a JSON example) and stay as written."""
    others = sorted((re.escape(column) for column in columns
                     if column and not re.fullmatch(_IDENTIFIER, column) and not set(column) & set("{}\n")),
                    key=len, reverse=True)  # the longest first: {a b c} before {a b}
    name = "|".join([*others, _IDENTIFIER])
    return re.compile(rf"\{{\{{({name})\}}\}}|\{{({name})\}}")


def _filled(placeholder: re.Pattern[str], template: str, record: Mapping[str, Any]) -> str:
    def replace(match: re.Match[str]) -> str:
        escaped, name = match.groups()
        return "{" + escaped + "}" if escaped is not None else str(record[name])

    return placeholder.sub(replace, template)


def _no_value(value: Any) -> bool:
    """None, NaN, and pandas' own missing values (``pd.NA``, ``NaT``): a row that has nothing to say there."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    pandas = sys.modules.get("pandas")  # a value of pandas' is only made where pandas is imported
    return pandas is not None and (value is pandas.NA or value is pandas.NaT)


def _rows_without_values(rows: Rows, named: Sequence[str], gaps: Sequence[int]) -> InvalidParameterError:
    """The refusal of rows with no value for a column the prompt names: how many, the first, and what to do."""
    first = rows.records[gaps[0]]
    empty = ", ".join("{" + name + "}" for name in named if _no_value(first.get(name)))
    which = (f"{len(gaps)} of the {len(rows)} rows have no value for {empty} (the first: row {rows.index[gaps[0]]!r})"
             if len(gaps) > 1 else f"row {rows.index[gaps[0]]!r} has no value for {empty}")
    if isinstance(rows.records, Records):  # a DataFrame
        subset = ", ".join(repr(name) for name in named)
        advice = f"drop those rows (frame.dropna(subset=[{subset}])) or fill them (frame.fillna(...)) first"
    else:
        advice = "leave those rows out, or give each a value, first"
    return InvalidParameterError(f"{which}, which would be sent as the word None or nan: {advice}", names=("over",))


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


Expect = Callable[[Mapping[str, Any], Any], Any]  # (the row, its answer) -> a score: True/False or a number


@dataclass(frozen=True)
class Setting:
    """One setting a dataset is run under (``--seeds``/``--sweep`` with ``--over``): its label and sampling values."""

    label: str
    params: Mapping[str, Any]


def result_frame(rows: Rows, outcomes: Sequence[tuple[Result | None, str | None]], fields: Sequence[str] | None,
                 attrs: Mapping[str, Any], *, settings: Sequence[Setting] = (), expect: Expect | None = None) -> Any:
    """The result as a DataFrame: one row per input row in input order (per setting, with ``settings``: the index is
    then the input's index and the setting's label), its columns, the setting's values, the reply (the schema's
    ``fields`` as columns, or ``reply``), ``_score`` with ``expect``, and how it went (``ROW_COLUMNS``); ``attrs``
    (the run's settings) travel in ``frame.attrs``.  ``outcomes`` are row-major: every setting of a row, then the next."""
    import pandas as pd

    each = list(settings) or [Setting("", {})]
    swept = list(dict.fromkeys(name for setting in each for name in setting.params))
    reply = list(fields) if fields is not None else ["reply"]
    written = [*swept, *reply, *(["_score"] if expect is not None else []), *ROW_COLUMNS]
    kept = _kept_names(rows.columns, written)
    renamed = {column: name for column, name in kept.items() if column != name}
    table: dict[str, list[Any]] = {name: [] for name in [*kept.values(), *written]}  # by column: a row costs its values
    for n, (result, error) in enumerate(outcomes):
        record, setting = rows.records[n // len(each)], each[n % len(each)]
        answer = reply_columns(result, fields)
        scored = {"_score": score(expect, record, answer, result, fields)} if expect is not None else {}
        given = {kept[k]: v for k, v in record.items() if k in kept} if renamed else record
        values = {**given, **{name: setting.params.get(name) for name in swept}, **answer, **scored,
                  **row_columns(result, error)}
        for name, column in table.items():
            column.append(values.get(name))
    labels = [label for label in rows.index for _ in each]
    index = (pd.MultiIndex.from_arrays([labels, [setting.label for _ in rows.index for setting in each]],
                                       names=[rows.index_name or "row", "setting"])
             if settings else pd.Index(labels, name=rows.index_name))
    frame = pd.DataFrame(table, index=index, columns=list(table))
    frame.attrs.update(attrs)
    if renamed:
        frame.attrs["renamed"] = renamed
    return frame


def _kept_names(columns: Sequence[str], written: Sequence[str]) -> dict[str, str]:
    """Each input column's name in the result: its own, or with ``INPUT_SUFFIX`` where the result writes a column of
    that name (a map over an earlier map's frame: its ``reply`` and ``_status`` are kept, beside this run's)."""
    taken = set(columns) | set(written)
    kept: dict[str, str] = {}
    for column in columns:
        name = column
        while name in written or (name != column and name in taken):
            name += INPUT_SUFFIX
        kept[column] = name
        taken.add(name)
    return kept


def expect_column(column: str, rows: Rows) -> Expect:
    """``--expect COLUMN``: a reply scores 1 when it gives the row's value of ``column``: the schema's field of that
    name (else its first field) equal to it, ignoring case and surrounding space; a plain reply holding it as a word.
    A row with no value there (None, NaN) is not scored."""
    if column not in rows.columns:
        raise InvalidParameterError(f"--expect names {column}, which is no column of the rows (they have "
                                    f"{', '.join(rows.columns)})", names=("expect",))

    def expected(record: Mapping[str, Any], answer: Any) -> bool | None:
        if _no_value(record.get(column)):  # an unlabelled row is not scored: "nan" is no label to be wrong about
            return None
        wanted = str(record[column]).strip().casefold()
        if isinstance(answer, str) and answer is not None and " " in answer.strip():  # a sentence: the value as a word
            return re.search(rf"(?<!\w){re.escape(wanted)}(?!\w)", answer.casefold()) is not None
        return str(answer).strip().casefold() == wanted

    expected.column = column  # type: ignore[attr-defined]  # which field of a schema it is compared with
    return expected


def score(expect: Expect, record: Mapping[str, Any], answer: Mapping[str, Any], result: Result | None,
          fields: Sequence[str] | None) -> float | None:
    """A row's score (None when it has no answer to score: it failed, did not fit, or never ran)."""
    if result is None or result.partial or (fields is not None and result.schema_errors):
        return None
    if fields is None:
        value: Any = answer["reply"]
    else:
        wanted = str(getattr(expect, "column", ""))
        value = answer[wanted] if wanted in answer else answer[fields[0]] if fields else None
    got = expect(record, value)
    return float(got) if isinstance(got, (bool, int, float)) else None


def setting_summary(frame: Any) -> Any:
    """Per setting of a ``--over`` grid: rows, the mean score with its 95% interval (Wilson's for 0/1 scores, else
    the normal approximation), the agreement of the answers across seeds (rows whose answer all seeds of the other
    values share), the cost and the median latency.  A DataFrame, one row per setting."""
    import pandas as pd

    if "setting" not in getattr(getattr(frame, "index", None), "names", ()):
        raise InvalidParameterError("setting_summary takes the frame of a map run with seeds= or sweep= (--seeds or "
                                    "--sweep with --over): one row per input row and setting")
    answer = _answer_columns(frame)
    rows = []
    for label, group in frame.groupby(level="setting", sort=False):
        scores = group["_score"].dropna() if "_score" in group else pd.Series(dtype=float)
        low, mean, high = interval(list(scores))
        rows.append({"setting": label, "rows": len(group), "score": mean, "ci_low": low, "ci_high": high,
                     "cost": group["_cost"].fillna(0).sum(), "latency_s": group["_latency_s"].median(),
                     "failed": int(group["_status"].isin(["error", "invalid"]).sum())})
    summary = pd.DataFrame(rows).set_index("setting")
    swept = list(frame.attrs.get("swept") or ())
    if "seed" in swept and frame["seed"].nunique() > 1:
        agreement = _seed_agreement(frame, answer, [name for name in swept if name != "seed"])
        summary["seed_agreement"] = [agreement.get(label) for label in summary.index]
    return summary


def disagreeing_rows(frame: Any) -> list[Any]:
    """The input rows whose answer is not the same under every setting (where the settings change the outcome)."""
    keys = frame[_answer_columns(frame)].astype(str).agg("\x1f".join, axis=1)
    return [row for row, values in keys.groupby(level=0, sort=False) if values.nunique() > 1]


def _answer_columns(frame: Any) -> list[str]:
    return list(frame.attrs.get("fields") or ["reply"])


def _seed_agreement(frame: Any, answer: Sequence[str], others: Sequence[str]) -> dict[Any, float]:
    """For every setting: the share of rows whose answer all the seeds of its other values give alike."""
    found: dict[Any, float] = {}
    groups = frame.groupby(list(others), sort=False, dropna=False) if others else [((), frame)]
    for _, group in groups:
        keys = group[list(answer)].astype(str).agg("\x1f".join, axis=1)
        share = float((keys.groupby(level=0, sort=False).nunique() == 1).mean())
        for label in group.index.get_level_values("setting").unique():
            found[label] = share
    return found


def interval(scores: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(low, mean, high): the mean score and its 95% interval; Wilson's score interval when every score is 0 or 1
    (it stays inside [0, 1] and is honest for small samples), else mean ± 1.96 standard errors."""
    n = len(scores)
    if not n:
        return None, None, None
    mean = sum(scores) / n
    z = 1.959963984540054
    if all(value in (0.0, 1.0) for value in scores):
        centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), mean, min(1.0, centre + half)
    spread = math.sqrt(sum((value - mean) ** 2 for value in scores) / (n - 1)) if n > 1 else 0.0
    return mean - z * spread / math.sqrt(n), mean, mean + z * spread / math.sqrt(n)


def reply_columns(result: Result | None, fields: Sequence[str] | None) -> dict[str, Any]:
    if fields is None:
        return {"reply": result.text if result is not None else None}
    value = plain_value(result.value) if result is not None else None
    return {name: value.get(name) if isinstance(value, Mapping) else None for name in fields}


def row_columns(result: Result | None, error: str | None) -> dict[str, Any]:
    status = row_status(result, error)
    if result is None:
        return {"_status": status, "_error": error, "_attempts": 0, "_cost": None, "_latency_s": None, "_method": None}
    problem = error or result.error or ("; ".join(result.schema_errors) if result.schema_errors else None)
    return {"_status": status, "_error": problem, "_attempts": result.schema_attempts or 1, "_cost": result.cost,
            "_latency_s": result.duration_s, "_method": result.schema_method}
