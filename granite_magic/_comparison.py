"""Side-by-side runs: the grid of specs, and pure metrics over finished results.

``plan_runs`` turns seeds, sweeps and repeats into labelled run specs;
``Comparison`` holds one ``Run`` (spec, result, error) per column and computes, on demand, identical groups,
pairwise similarity, first divergence, word diffs, per-run statistics and the
determinism audit.  No I/O here.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

from ._errors import InvalidParameterError
from ._params import Sampling, get_param, validate
from ._result import Result, json_ready, plain_value

__all__ = [
    "Comparison",
    "Divergence",
    "Run",
    "RunSpec",
    "first_divergence",
    "identical_groups",
    "parse_seeds",
    "parse_sweep",
    "parse_sweeps",
    "plan_runs",
    "similarity",
    "word_diff",
]

MAX_RUNS = 64  # a grid bigger than this is almost surely a typo (1-1000)


# --- planning ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One run of a batch: what it changes of the turn, and how it is labelled.

    A grid's column changes sampling values (its seed, a swept value); a branch of the sampling lens continues an
    assistant ``prefix``; a row of a dataset asks its own ``prompt``.  Whatever changes, the batch is one driver.
    """

    label: str
    params: Sampling = field(default_factory=Sampling)  # the seed and swept values of this column
    repeat: int = 0  # 0 for the first run of these settings, 1 for the second, ...
    prompt: str | None = None  # another prompt than the turn's (None: the turn's)
    prefix: str | None = None  # the start of the reply, to be continued (None: the turn's)

    @property
    def turn_changes(self) -> dict[str, str]:
        """What this run changes of the turn besides sampling, as ``Turn`` fields."""
        return {name: value for name, value in (("prompt", self.prompt), ("prefix", self.prefix)) if value is not None}

    @property
    def settings_key(self) -> tuple[tuple[str, Any], ...]:
        """Runs with the same key differ only by repetition."""
        return tuple(sorted((k, repr(v)) for k, v in (*self.params.items(), *self.turn_changes.items())))


_RANGE = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)\s*$")


def parse_seeds(text: str | Iterable[int]) -> list[int]:
    """``"1,2,3"``, ``"1-4"`` or ``"1-3,7"`` (or a list of ints) to a list of seeds."""
    if not isinstance(text, str):
        return [validate("seed", s) for s in text]
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _RANGE.match(part)
        if match:
            low, high = int(match.group(1)), int(match.group(2))
            if high < low or high - low >= MAX_RUNS:
                raise InvalidParameterError(f"seed range {part!r} is invalid: write LOW-HIGH with at most {MAX_RUNS} seeds")
            seeds.extend(range(low, high + 1))
        else:
            seeds.append(validate("seed", part))
    if not seeds:
        raise InvalidParameterError(f"seeds={text!r} names no seed: write 1,2,3 or 1-4", names=("seeds",))
    return seeds


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """``"temperature=0,0.7,1.4"`` to ``("temperature", [0.0, 0.7, 1.4])``, each value validated."""
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not values.strip():
        raise InvalidParameterError(f"--sweep {text!r} is invalid: write NAME=V1,V2,... e.g. temperature=0,0.7,1.4")
    param = get_param(name)
    if param.kind in ("stop", "logit_bias"):
        raise InvalidParameterError(f"--sweep {name} is not possible: sweep a numeric parameter")
    checked = [validate(name, v.strip()) for v in values.split(",") if v.strip()]
    if not checked:
        raise InvalidParameterError(f"--sweep {text!r} names no value: write NAME=V1,V2,... e.g. temperature=0,0.7,1.4")
    return name, checked


def parse_sweeps(texts: Iterable[str]) -> dict[str, list[Any]]:
    """Several ``--sweep`` options; the same parameter twice is refused rather than one silently dropped."""
    sweeps: dict[str, list[Any]] = {}
    for text in texts:
        name, values = parse_sweep(text)
        if name in sweeps:
            raise InvalidParameterError(f"--sweep {name} is given twice: list all its values in one --sweep {name}=V1,V2,...")
        sweeps[name] = values
    return sweeps


def plan_runs(seeds: Sequence[int] = (), sweep: Mapping[str, Sequence[Any]] | None = None, repeat: int = 1) -> list[RunSpec]:
    """The grid: every seed times every combination of swept values, each ``repeat`` times."""
    if repeat < 1:
        raise InvalidParameterError(f"repeat={repeat} is out of range: must be an integer >= 1", names=("repeat",))
    if seeds and "seed" in (sweep or {}):
        raise InvalidParameterError("seeds are given twice, by seeds= and by a sweep of seed: use one of them", names=("seeds",))
    axes: list[list[tuple[str, Any]]] = []
    if seeds:
        axes.append([("seed", s) for s in seeds])
    for name, values in (sweep or {}).items():
        axes.append([(name, v) for v in values])
    combos = [dict(c) for c in itertools.product(*axes)] if axes else [{}]
    total = len(combos) * repeat
    if total > MAX_RUNS:
        raise InvalidParameterError(f"that grid has {total} runs; at most {MAX_RUNS} are allowed")
    # every value was validated by parse_seeds / parse_sweep (or validate) on the way in
    return [RunSpec(_label(combo, r), Sampling._trusted(combo), r) for combo in combos for r in range(repeat)]


def _label(params: Mapping[str, Any], repeat: int) -> str:
    text = " · ".join(f"{name.replace('_', ' ')} {_number(value)}" for name, value in params.items()) or "run"
    return text + "'" * repeat  # seed 1, seed 1', seed 1'' ...


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


# --- metrics -----------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


def identical_groups(texts: Sequence[str]) -> list[list[int]]:
    """Indexes of runs with exactly the same text, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(text, []).append(i)
    return list(groups.values())


def similarity(a: str, b: str) -> float:
    """Word-level similarity in [0, 1] (difflib's ratio over word sequences)."""
    if a == b:
        return 1.0
    return difflib.SequenceMatcher(None, _words(a), _words(b), autojunk=False).ratio()


@dataclass(frozen=True)
class Divergence:
    word: int  # index of the first differing word
    reference: str  # the reference's word there ("" if it had ended)
    other: str  # this run's word there ("" if it had ended)


def first_divergence(reference: str, other: str) -> Divergence | None:
    """Where ``other`` first differs from ``reference``, word by word; None if identical."""
    ref, oth = _words(reference), _words(other)
    for i, (a, b) in enumerate(zip(ref, oth, strict=False)):
        if a != b:
            return Divergence(i, a, b)
    if len(ref) == len(oth):
        return None
    i = min(len(ref), len(oth))
    return Divergence(i, ref[i] if i < len(ref) else "", oth[i] if i < len(oth) else "")


def word_diff(reference: str, other: str) -> list[tuple[str, str]]:
    """(op, text) pieces: op is ``equal``, ``delete`` (only in reference) or ``insert`` (only in other)."""
    ref, oth = _words(reference), _words(other)
    pieces: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(None, ref, oth, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            pieces.append(("equal", " ".join(ref[i1:i2])))
            continue
        if i2 > i1:
            pieces.append(("delete", " ".join(ref[i1:i2])))
        if j2 > j1:
            pieces.append(("insert", " ".join(oth[j1:j2])))
    return pieces


# --- the comparison ----------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One column of a comparison: what it changed, what came back, and how it failed (if it did)."""

    spec: RunSpec
    result: Result
    error: str | None = None
    verified: str | None = None  # with --verify: how the live text compares with its recording


@dataclass(frozen=True)
class FieldAgreement:
    """One field of a ``--schema`` comparison: each run's value (label, value), and whether they are all the same."""

    name: str
    values: list[tuple[str, Any]]

    @property
    def distinct(self) -> int:
        return len({json.dumps(value, sort_keys=True, default=str) for _, value in self.values})

    @property
    def agree(self) -> bool:
        return self.distinct == 1

    @property
    def summary(self) -> str:
        """``sentiment agrees`` / ``reason differs (3 distinct of 3)``."""
        return f"{self.name} agrees" if self.agree else f"{self.name} differs ({self.distinct} distinct of {len(self.values)})"


@dataclass
class Comparison:
    """The runs of one comparison, with metrics computed when first asked for."""

    prompt: str
    runs: list[Run]
    wall_s: float | None = None
    base_params: dict[str, Any] = field(default_factory=dict)
    reference: int = 0
    not_run: list[str] = field(default_factory=list)  # the labels of runs an interrupt stopped before they started

    # How a comparison draws itself as HTML; the grid module registers it, so this module imports no renderer.
    html_renderer: ClassVar[Callable[[Comparison], str] | None] = None

    @property
    def specs(self) -> list[RunSpec]:
        return [run.spec for run in self.runs]

    @property
    def results(self) -> list[Result]:
        return [run.result for run in self.runs]

    @property
    def errors(self) -> list[str | None]:
        return [run.error for run in self.runs]

    @property
    def labels(self) -> list[str]:
        return [run.spec.label for run in self.runs]

    @property
    def texts(self) -> list[str]:
        return [run.result.text for run in self.runs]

    @cached_property
    def groups(self) -> list[list[int]]:
        return identical_groups(self.texts)

    def group_of(self, index: int) -> int:
        return next(g for g, members in enumerate(self.groups) if index in members)

    @cached_property
    def similarity_matrix(self) -> list[list[float]]:
        texts = self.texts
        return [[similarity(a, b) for b in texts] for a in texts]

    @cached_property
    def divergences(self) -> list[Divergence | None]:
        ref = self.texts[self.reference]
        return [first_divergence(ref, text) for text in self.texts]

    def diff(self, index: int) -> list[tuple[str, str]]:
        return word_diff(self.texts[self.reference], self.texts[index])

    @cached_property
    def determinism(self) -> list[tuple[str, bool]]:
        """For settings run more than once: (label, whether every repeat gave the same text)."""
        by_settings: dict[tuple[Any, ...], list[int]] = {}
        for i, spec in enumerate(self.specs):
            by_settings.setdefault(spec.settings_key, []).append(i)
        audit = []
        for members in by_settings.values():
            complete = [i for i in members if not self.results[i].partial]
            if len(complete) >= 2:
                texts = {self.results[i].text for i in complete}
                audit.append((self.specs[members[0]].label, len(texts) == 1))
        return audit

    @cached_property
    def field_agreement(self) -> list[FieldAgreement]:
        """With ``--schema``: per field of the validated values, what each run gave and whether they all agree (the
        determinism audit, field by field).  Runs whose reply did not fit have no value and are left out; nothing
        when no run has one."""
        values = [(i, plain_value(run.result.value)) for i, run in enumerate(self.runs)
                  if run.result.schema_method is not None and isinstance(plain_value(run.result.value), Mapping)]
        names = list(dict.fromkeys(name for _, value in values for name in value))
        return [FieldAgreement(name, [(self.labels[i], value.get(name)) for i, value in values]) for name in names]

    @property
    def seed_honoured(self) -> bool | None:
        """True if every repeated seed reproduced its text; None if nothing was repeated."""
        return all(same for _, same in self.determinism) if self.determinism else None

    @property
    def total_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.results)

    @property
    def total_cost(self) -> float | None:
        costs = [r.cost for r in self.results if r.cost is not None]
        return sum(costs) if costs else None

    @property
    def summary(self) -> str:
        """The comparison in a few lines of plain text."""
        if not self.runs:
            return f"nothing ran: interrupted before any run started ({', '.join(self.not_run)})"
        lines = [self._groups_line()]
        if self.determinism:
            honoured = sum(same for _, same in self.determinism)
            lines.append(f"determinism: {honoured} of {len(self.determinism)} repeated settings gave identical text"
                         + (" (seed honoured)" if honoured == len(self.determinism) else " (seed NOT reliably honoured)"))
        ref = self.labels[self.reference]
        others = [i for i in range(len(self.results)) if i != self.reference]
        if others:
            sims = " · ".join(f"{self.labels[i]} {self.similarity_matrix[self.reference][i]:.2f}" for i in others)
            lines.append(f"similarity vs {ref}: {sims}")
        for i in others:
            div = self.divergences[i]
            if div is not None:
                lines.append(f"first divergence: {self.labels[i]} at word {div.word} ({div.reference!r} -> {div.other!r})")
        if self.field_agreement:
            lines.append("fields: " + " · ".join(f.summary for f in self.field_agreement))
        verified = [f"{run.spec.label} {run.verified}" for run in self.runs if run.verified]
        if verified:
            lines.append("verified: " + " · ".join(verified))
        if self.not_run:
            lines.append(f"not run (interrupted before they started): {', '.join(self.not_run)}")
        lines.append(self._totals_line())
        return "\n".join(lines)

    def _groups_line(self) -> str:
        parts = ["{" + ", ".join(self.labels[i] for i in g) + "}" for g in self.groups]
        return f"identical groups: {' '.join(parts)} ({len(self.groups)} distinct of {len(self.results)})"

    def _totals_line(self) -> str:
        wall = f"{self.wall_s:.1f} s wall · " if self.wall_s is not None else ""
        cost = f" · ${self.total_cost:.6f}" if self.total_cost is not None else ""
        failed = sum(1 for run in self.runs if run.error)
        return f"total {wall}{self.total_tokens} tokens{cost}" + (f" · {failed} failed (partial text kept)" if failed else "")

    def rows(self) -> list[dict[str, Any]]:
        """One plain dict per run: what ``to_dataframe`` holds."""
        swept = sorted({k for s in self.specs for k in s.params if k != "seed"})
        rows = []
        for i, (spec, result, error) in enumerate((run.spec, run.result, run.error) for run in self.runs):
            rows.append({
                "label": spec.label,
                "seed": spec.params.get("seed", result.params.get("seed")),
                **{name: spec.params.get(name) for name in swept},
                "repeat": spec.repeat,
                "text": result.text,
                "tokens": result.completion_tokens,
                "ttft_s": result.ttft_s,
                "duration_s": result.duration_s,
                "tokens_per_s": result.tokens_per_s,
                "cost": result.cost,
                "finish_reason": result.finish_reason,
                "partial": result.partial,
                "error": error,
                "group": self.group_of(i),
                "similarity_to_reference": self.similarity_matrix[self.reference][i],
            })
        return rows

    def to_dataframe(self) -> Any:
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe() needs pandas: pip install pandas (or use .rows())") from None
        return pd.DataFrame(self.rows())

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "params": json_ready(self.base_params),
            "labels": self.labels,
            "groups": self.groups,
            "similarity": self.similarity_matrix,
            "determinism": self.determinism,
            "seed_honoured": self.seed_honoured,
            "wall_s": self.wall_s,
            "total_tokens": self.total_tokens,
            "total_cost": self.total_cost,
            "runs": [{"label": run.spec.label, **run.result.to_dict(), "run_error": run.error, "verified": run.verified}
                     for run in self.runs],
            "not_run": list(self.not_run),
            "fields": [{"field": f.name, "agree": f.agree, "values": [value for _, value in f.values]} for f in self.field_agreement],
        }

    def _repr_html_(self) -> str | None:
        renderer = type(self).html_renderer  # read from the class: a plain function, not bound to self
        return None if renderer is None else renderer(self)

    def __repr__(self) -> str:
        return f"<Comparison of {len(self.runs)} runs: {len(self.groups)} distinct texts>"
