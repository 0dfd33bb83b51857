"""``map`` over a Dask DataFrame: each partition's rows run through ``map``'s pandas path, on the Dask workers.

The driver checks what it can before anything is sent (the options a partition cannot honour, the prompt's
columns, the schema, the sampling and the target) and returns a lazy Dask DataFrame whose columns and dtypes are
those the pandas path gives a table whose rows were all answered.  A worker runs each partition it is given through
``map`` itself (the function the API passes in), with the session of its own process: its own clients, and its own
rate-limit gate for each partition it runs.  Every worker uses the driver's cache directory (made absolute), so a
rerun, or a partition Dask runs again after losing its worker, re-pays no row already answered.

What travels in the task graph: the prompt, ``map``'s options, the sampling and the settings of the driver's session
(base URL, model, backend, budget, cache mode and directory: in a notebook, ``%config`` over the environment) as
the ``GRANITE_*`` variables that set them, which a worker takes into its environment before it runs a partition.
Never the API key: each worker reads ``OPENROUTER_API_KEY`` from its own environment (the workers of a
``LocalCluster`` inherit the driver's).  A budget is a session's, so each worker holds it on its own.

Dask is an optional extra: nothing here imports it.  A Dask DataFrame is recognised by the class of the
``dask.dataframe`` module already imported (``sys.modules``), and is driven through its own methods.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._errors import InvalidParameterError
from ._result import Result, Usage
from ._rows import Rows, expect_column, read_rows, result_frame, row_prompts
from ._settings import Settings
from ._spec import OutputSchema, output_schema
from ._turn import new_turn

__all__ = ["is_dask_frame", "map_dask"]

# ``map``'s options that mean nothing partition by partition: refused in one line, before anything is sent.
_TRY_FEW = "map over ddf.head(N) (a pandas frame) to try a few rows"
_REFUSED = {
    "limit": f"limit={{value!r}} would keep each partition's first rows, not the table's: {_TRY_FEW}",
    "sample": "sample={value!r} would draw rows in each partition on its own: map over ddf.sample(frac=..., random_state=0) "
              "(the same rows each time, so a rerun is cached)",
    "seeds": "seeds={value!r} indexes the result by row and setting, which a Dask DataFrame cannot hold: run the settings "
             "over a pandas frame (ddf.head(N), or ddf.compute())",
    "sweep": "sweep={value!r} indexes the result by row and setting, which a Dask DataFrame cannot hold: run the settings "
             "over a pandas frame (ddf.head(N), or ddf.compute())",
    "via": "via={value!r} answers a whole table by batch, which a partition cannot wait for: a Dask DataFrame's rows go "
           "live (via='live'); batch a pandas frame",
    "batch_file": "batch_file={value!r} is for via='jsonl', which a Dask DataFrame does not take: its rows go live",
    "dry_run": f"dry_run=True measures a whole table before sending, which a Dask DataFrame is not until computed: {_TRY_FEW}",
}
_TARGET = ("system", "model", "base_url", "backend", "api", "schema_mode")  # checked once on the driver, as new_turn does
_PER_RUN = ("rows", "rate_limited", "fewest_at_once")  # attrs of one partition's run, dropped so that the partitions agree


def is_dask_frame(obj: Any) -> bool:
    """Whether ``obj`` is a Dask DataFrame; imports nothing (a program that made one has imported ``dask.dataframe``)."""
    dataframe = sys.modules.get("dask.dataframe")
    return dataframe is not None and isinstance(obj, dataframe.DataFrame)


def map_dask(run: Callable[..., Any], over: Any, prompt: str, *, settings: Settings,
             params: Mapping[str, Any] | None = None, **options: Any) -> Any:
    """``run(partition, prompt, **options, **params)`` (``map``'s pandas path) over each partition of the Dask
    DataFrame ``over``, on the workers: a lazy Dask DataFrame with the columns and dtypes of the pandas path, in input
    order and index.  ``.compute()`` gives the pandas path's frame, its ``attrs`` less the counts of one partition's
    run (``rows``, ``rate_limited``, ``fewest_at_once``).  ``limit``, ``sample``, ``seeds``, ``sweep``, a batch
    ``via`` and ``dry_run`` are refused here, before anything is sent (see ``_REFUSED``); any other option is each
    partition's (``concurrency``: rows in flight per partition)."""
    for name, value in options.items():
        if name in _REFUSED and _given(name, value):
            raise InvalidParameterError(_REFUSED[name].format(value=value), names=(name,))
    sampling = dict(params or {})
    rows = Rows([], [], [str(column) for column in over.columns])
    # every {name} a column, one at least, none in the system text: refused once here, not on every worker
    row_prompts(prompt, rows, system=options.get("system"))
    schema = output_schema(options["schema"]) if options.get("schema") is not None else None
    new_turn(prompt, sampling, schema=schema, **{name: options[name] for name in _TARGET if options.get(name) is not None})
    expect = options.get("expect")
    if isinstance(expect, str):
        expect_column(expect, rows)
    meta = _meta(over, schema, scored=expect is not None)
    plan = _Plan(run, prompt, options, sampling, _driver_settings(settings), meta)
    return over.map_partitions(_run_partition, plan, meta=meta, align_dataframes=False)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a worker needs for a partition (the task graph holds it): no key, and no object that holds one."""

    run: Callable[..., Any]
    prompt: str
    options: Mapping[str, Any]
    params: Mapping[str, Any]
    settings: Mapping[str, str]  # GRANITE_* variable -> the driver's value ("" for unset)
    meta: Any  # the empty frame of the result's columns and dtypes
    # Dask names a graph's keys from its arguments, so two calls alike would share keys, and a rerun computed while
    # the scheduler still held the first run's results would be given them back (statuses "ok", nothing read or
    # recorded, a record-mode rerun not re-sent): each call is a run of its own.
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)


def _given(name: str, value: Any) -> bool:
    """Whether an option was given a value other than its "not used" default."""
    if name == "via":
        return value not in (None, "live")
    if isinstance(value, (str, tuple, list, dict)):
        return bool(value)
    return value is not None and value is not False


def _driver_settings(settings: Settings) -> dict[str, str]:
    """The driver's ``settings`` (its session's: ``%config`` over the environment in a notebook), as the variables
    that set them (the cache directory absolute, so that every worker finds the same one)."""
    found: dict[str, str] = {}
    for each in dataclasses.fields(Settings):
        name = each.metadata.get("env")
        if name:
            value = getattr(settings, each.name)
            if each.name == "cache_dir":
                value = Path(value).expanduser().resolve()
            found[name] = "" if value is None else str(value)
    return found


def _meta(over: Any, schema: OutputSchema | None, *, scored: bool) -> Any:
    """The result's columns and dtypes, empty: the pandas path's frame for one row of ``over``'s kind answered with
    a value of each field's type (strings typed as pandas infers them, the index rebuilt from its labels, as there)."""
    example = read_rows(over._meta_nonempty.iloc[:1])
    fields = schema.fields() if schema is not None else None
    value = {name: _example(each) for name, each in schema.schema["properties"].items()} if schema is not None else None
    answered = Result(text="reply", value=value, usage=Usage(cost=0.0), duration_s=0.0,
                      schema_method="prompted" if schema is not None else None)
    frame = result_frame(example, [(answered, None)], fields, {}, expect=(lambda record, answer: 1.0) if scored else None)
    return frame.iloc[:0]


def _example(schema: Any) -> Any:
    """A value of a field's JSON Schema type (None when it has none: an object column)."""
    if not isinstance(schema, Mapping):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for choice in ("anyOf", "oneOf"):
        options = [each for each in schema.get(choice) or () if not (isinstance(each, Mapping) and each.get("type") == "null")]
        if options:
            return _example(options[0])
    kinds = schema.get("type")
    kind = next((each for each in kinds if each != "null"), None) if isinstance(kinds, list) else kinds
    return {"string": "text", "integer": 0, "number": 0.5, "boolean": False, "array": [], "object": {}}.get(str(kind))


def _run_partition(partition: Any, plan: _Plan) -> Any:
    """On a worker: one partition through the pandas path, with the driver's settings; typed as the meta says where
    a column of this partition alone has no value to type it by."""
    if not len(partition):
        return plan.meta
    for name, value in plan.settings.items():  # this process's own: the session of a worker reads them
        if value:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)
    frame = plan.run(partition, plan.prompt, **plan.options, **plan.params)
    return _typed(frame, plan.meta)


def _typed(frame: Any, meta: Any) -> Any:
    """``frame`` whose all-empty columns take the meta's dtype when it is numeric or text (a partition whose rows
    all failed then concatenates with the others as the pandas path's whole column would type), and whose ``attrs``
    are the run's, not this partition's counts."""
    import pandas as pd

    for column, dtype in meta.dtypes.items():
        values = frame[column]
        if values.dtype == dtype or not values.isna().all():
            continue
        if dtype.kind in "iuf":
            frame[column] = values.astype("float64")  # an integer column with gaps is a float one in pandas
        elif isinstance(dtype, pd.StringDtype):
            frame[column] = values.astype(dtype)
    for name in _PER_RUN:
        frame.attrs.pop(name, None)
    return frame
