"""Which parameters a provider really honours, measured with a handful of tiny requests.

A model listing *declares* parameters; a provider may still ignore them.  ``probe``
sends at most ``MAX_REQUESTS`` short requests that can only come out one way if
a parameter is honoured (the same seed twice, temperature 0 twice, top-k 1 against
greedy, a stop string taken from the greedy text, a small max_tokens, token
probabilities), and reports each as honoured, ignored, rejected or not tested,
with the evidence.  Reports are kept per (API host, model, provider) with their
date in the user's cache directory, so later cells can warn about a parameter
observed as ignored.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from ._client import BaseClient
from ._context import read_capped
from ._errors import BadRequestError, GraniteError, shown_path
from ._events import Accumulator
from ._ledger import known_cost
from ._params import Sampling
from ._result import Result
from ._shapes import Request, Structure, build_messages
from ._tools import Tool, tool_from_function

__all__ = ["MAX_REQUESTS", "PROBES_FORMAT", "Observation", "ProbeReport", "ProbeStore", "probe", "probe_requests",
           "probed_parameters"]

logger = logging.getLogger("granite_magic")

Observed = Literal["honoured", "ignored", "rejected", "not tested"]

PROMPT = "Write one sentence about a river in autumn."
PROBE_TOKENS = 12  # enough words to tell two texts apart, cheap enough to run on every new provider
MAX_REQUESTS = 20


@dataclass(frozen=True)
class Observation:
    parameter: str
    declared: bool | None  # named by the model's listing (None: no listing)
    observed: Observed
    evidence: str


@dataclass(frozen=True)
class ProbeReport:
    host: str
    model: str
    provider: str | None
    date: str  # ISO date of the probe
    observations: tuple[Observation, ...]
    cost: float | None
    requests: int

    def get(self, parameter: str) -> Observation | None:
        return next((o for o in self.observations if o.parameter == parameter), None)

    def table(self) -> str:
        rows = [f"| {o.parameter} | {_declared(o.declared)} | {o.observed} | {o.evidence} |" for o in self.observations]
        cost = "unknown" if self.cost is None else f"${self.cost:.6f}"
        head = f"{self.model} via {self.provider or 'an unnamed provider'} at {self.host}, {self.date}: {self.requests} requests, {cost}"
        return "\n".join([head, "", "| parameter | declared | observed | evidence |", "|---|---|---|---|", *rows])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ProbeReport:
        """A report as ``to_dict`` wrote it; ``ValueError`` saying what is missing or of the wrong type.  Fields this
        version does not know are left aside: a later version may add some."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a report is a {type(data).__name__}, not an object")
        observations = _checked(data, "observations", list)
        cost = _checked(data, "cost", (int, float, type(None)))
        return cls(host=_checked(data, "host", str), model=_checked(data, "model", str),
                   provider=_checked(data, "provider", (str, type(None))), date=_checked(data, "date", str),
                   observations=tuple(_observation(o) for o in observations),
                   cost=None if cost is None else known_cost(cost), requests=_checked(data, "requests", int))


def _checked(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in data:
        raise ValueError(f"{name} is missing")
    value = data[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))):
        raise ValueError(f"{name} is a {type(value).__name__}")
    return value


def _observation(data: Any) -> Observation:
    if not isinstance(data, Mapping):
        raise ValueError(f"an observation is a {type(data).__name__}, not an object")
    observed = _checked(data, "observed", str)
    if observed not in get_args(Observed):
        raise ValueError(f"observed is {observed!r}")
    return Observation(_checked(data, "parameter", str), _checked(data, "declared", (bool, type(None))), observed,
                       _checked(data, "evidence", str))


def _declared(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "no")


# --- the requests ------------------------------------------------------------------------------


@dataclass
class _Runner:
    client: BaseClient
    model: str
    on_result: Callable[[Result], None]
    results: list[Result] = field(default_factory=list)
    greedy: Result | GraniteError | None = None  # the first temperature-0 reply
    batches: int = 0  # batch creates sent (requests too, though not replies)

    def _keep(self, result: Result) -> None:
        self.results.append(result)
        self.on_result(result)

    async def run(self, *, prompt: str = PROMPT, tools: tuple[Tool, ...] = (), structure: Structure | None = None,
                  **params: Any) -> Result | GraniteError:
        request = Request(self.model, build_messages(prompt), Sampling({"max_tokens": PROBE_TOKENS, **params}), tools=tools,
                          structure=structure)
        try:
            result = await self.client.stream(request, Accumulator(request.sampling))
        except GraniteError as exc:
            if exc.result is not None:
                self._keep(exc.result)
            return exc
        self._keep(result)
        return result


@dataclass(frozen=True)
class _Step:
    """One measured parameter: the most requests it sends, and how it turns their replies into an observation."""

    parameter: str
    requests: int
    measure: Callable[[_Runner], Awaitable[Observation]]


async def _measure_seed(runner: _Runner) -> Observation:
    return _seed(await runner.run(seed=11, temperature=1.0), await runner.run(seed=11, temperature=1.0),
                 await runner.run(seed=12, temperature=1.0))


async def _measure_temperature(runner: _Runner) -> Observation:
    runner.greedy = await runner.run(temperature=0.0)  # also what top_k and stop compare with
    return _temperature(runner.greedy, await runner.run(temperature=0.0))


async def _measure_top_k(runner: _Runner) -> Observation:
    return _top_k(runner.greedy, await runner.run(top_k=1, temperature=1.0, seed=13))


async def _measure_stop(runner: _Runner) -> Observation:
    return await _stop(runner, runner.greedy)


async def _measure_max_tokens(runner: _Runner) -> Observation:
    return _max_tokens(await runner.run(temperature=0.0, max_tokens=3))


async def _measure_logprobs(runner: _Runner) -> Observation:
    return _logprobs(await runner.run(temperature=0.0, logprobs=True, top_logprobs=2))


async def _measure_tools(runner: _Runner) -> Observation:
    return _tools(await runner.run(prompt="What is 2 plus 3?", tools=(_ADD,), tool_choice="required"))


# Asked for by response_format alone (nothing in the prompt mentions JSON): a provider that honours it answers the
# prose prompt with this object; one that drops the field silently writes a sentence.
_COLOUR = Structure({"type": "object", "properties": {"colour": {"type": "string", "enum": ["crimson", "teal"]}},
                     "required": ["colour"], "additionalProperties": False}, "probe", "provider")


async def _measure_response_format(runner: _Runner) -> Observation:
    if getattr(runner.client, "api", None) not in ("chat", "responses"):
        return Observation("response_format", None, "not tested", "this API has no response_format field")
    return _response_format(await runner.run(temperature=0.0, max_tokens=24, structure=_COLOUR))


async def _measure_batch(runner: _Runner) -> Observation:
    """Whether the model takes OpenRouter batches: a batch of one tiny request is submitted (and left to run: its
    answer is not waited for; it costs what one token does at the batch price)."""
    create = getattr(runner.client, "create_batch", None)
    if create is None:
        return Observation("batch", None, "not tested", "this backend has no batch API")
    from ._batch import batch_state, create_bodies

    body = {"model": runner.model, "messages": build_messages(PROMPT), "max_tokens": 1}
    runner.batches += 1
    try:
        state = batch_state(await create(next(create_bodies(runner.model, [("probe-1", body)]))))
    except BadRequestError as exc:
        return Observation("batch", None, "rejected", f"the batch API refused it: {exc.message}"[:160])
    except GraniteError as exc:
        return Observation("batch", None, "not tested", f"the batch API could not be asked: {exc.message}"[:160])
    return Observation("batch", None, "honoured", f"a batch of one request was accepted ({state.id}, {state.status})")


def probe_requests() -> int:
    """How many requests a probe sends at most (shown with the cost estimate before it runs)."""
    return sum(step.requests for step in _STEPS)


def probed_parameters() -> tuple[str, ...]:
    """The parameters a probe measures, in order."""
    return tuple(step.parameter for step in _STEPS)


async def probe(client: BaseClient, model: str, supported: tuple[str, ...] | None,
                on_result: Callable[[Result], None] = lambda result: None) -> ProbeReport:
    """Measure what ``model`` at ``client`` honours; at most ``probe_requests()`` requests of ``PROBE_TOKENS`` tokens.
    ``on_result`` sees every reply (the session's ledger records them)."""
    runner = _Runner(client, model, on_result)
    observations = [await step.measure(runner) for step in _STEPS]
    observations += [Observation("logit_bias", None, "not tested", "needs the model's token ids, which an HTTP API does not give")]
    declared = [Observation(o.parameter, None if supported is None else o.parameter in supported, o.observed, o.evidence)
                for o in observations]
    costs = [known_cost(r.cost) for r in runner.results]  # a billed NaN or negative amount is unknown, not a number
    provider = next((r.provider for r in runner.results if r.provider), None)
    return ProbeReport(
        host=_host(getattr(client, "base_url", "local")), model=model, provider=provider,
        date=datetime.date.today().isoformat(), observations=tuple(declared),
        cost=None if any(c is None for c in costs) else sum(c for c in costs if c is not None), requests=len(runner.results) + runner.batches,
    )


def _failed(name: str, outcome: Result | GraniteError) -> Observation | None:
    if isinstance(outcome, BadRequestError):
        return Observation(name, None, "rejected", f"the API refused it: {outcome.message}"[:160])
    if isinstance(outcome, GraniteError):
        return Observation(name, None, "not tested", f"the request failed: {outcome.message}"[:160])
    return None


def _seed(first: Result | GraniteError, again: Result | GraniteError, other: Result | GraniteError) -> Observation:
    failed = _failed("seed", first) or _failed("seed", again) or _failed("seed", other)
    if failed or not isinstance(first, Result) or not isinstance(again, Result) or not isinstance(other, Result):
        return failed or Observation("seed", None, "not tested", "")
    if first.text != again.text:
        return Observation("seed", None, "ignored", f"seed 11 twice gave two different texts ({_quote(first)} / {_quote(again)})")
    if first.text == other.text:
        return Observation("seed", None, "ignored", "seeds 11 and 12 gave the same text at temperature 1")
    return Observation("seed", None, "honoured", "seed 11 twice: identical; seed 12: different")


def _temperature(first: Result | GraniteError, again: Result | GraniteError) -> Observation:
    failed = _failed("temperature", first) or _failed("temperature", again)
    if failed or not isinstance(first, Result) or not isinstance(again, Result):
        return failed or Observation("temperature", None, "not tested", "")
    if first.text != again.text:
        return Observation("temperature", None, "ignored", "temperature 0 twice gave two different texts")
    return Observation("temperature", None, "honoured", "temperature 0 twice: identical")


def _top_k(greedy: Result | GraniteError | None, top1: Result | GraniteError) -> Observation:
    failed = _failed("top_k", top1)
    if failed or not isinstance(top1, Result) or not isinstance(greedy, Result):
        return failed or Observation("top_k", None, "not tested", "no greedy text to compare with")
    if top1.text != greedy.text:
        return Observation("top_k", None, "ignored", "top_k 1 at temperature 1 differs from the greedy text")
    return Observation("top_k", None, "honoured", "top_k 1 at temperature 1 equals the greedy text")


async def _stop(runner: _Runner, greedy: Result | GraniteError | None) -> Observation:
    words = greedy.text.split() if isinstance(greedy, Result) else []
    if len(words) < 3:
        return Observation("stop", None, "not tested", "the greedy text is too short to pick a stop word from")
    word = words[2]
    stopped = await runner.run(temperature=0.0, stop=[word])
    failed = _failed("stop", stopped)
    if failed or not isinstance(stopped, Result):
        return failed or Observation("stop", None, "not tested", "")
    if word in stopped.text:
        return Observation("stop", None, "ignored", f"the text still holds the stop string {word!r}")
    return Observation("stop", None, "honoured", f"the text ends before the stop string {word!r}")


def _max_tokens(result: Result | GraniteError) -> Observation:
    """Judged on the text that arrived: a token never spans two words (tokenizers split on spaces first), so 3
    tokens spell at most 3 words, whatever the server's usage claims.  The claim is quoted when it disagrees."""
    failed = _failed("max_tokens", result)
    if failed or not isinstance(result, Result):
        return failed or Observation("max_tokens", None, "not tested", "")
    words = len(result.text.split())
    claimed = result.usage.completion_tokens
    claim = f"; the server claimed {claimed} tokens" if claimed is not None and (claimed > 3) != (words > 3) else ""
    seen = f"max_tokens 3 gave {words} words in {result.chunks} chunks{claim}"
    if words > 3:
        return Observation("max_tokens", None, "ignored", seen)
    if not words:
        return Observation("max_tokens", None, "not tested", f"no text came back{claim}")
    return Observation("max_tokens", None, "honoured", f"{seen}, finish {result.finish_reason}")


def _logprobs(result: Result | GraniteError) -> Observation:
    failed = _failed("logprobs", result)
    if failed or not isinstance(result, Result):
        return failed or Observation("logprobs", None, "not tested", "")
    if not result.tokens:
        return Observation("logprobs", None, "ignored", "no token probabilities came back")
    return Observation("logprobs", None, "honoured", f"{len(result.tokens)} tokens with probabilities came back")


def _add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


_ADD = tool_from_function(_add, name="add")


def _tools(result: Result | GraniteError) -> Observation:
    failed = _failed("tools", result)
    if failed or not isinstance(result, Result):
        return failed or Observation("tools", None, "not tested", "")
    if not result.tool_calls:
        return Observation("tools", None, "ignored", "a required call to a tool came back as text")
    return Observation("tools", None, "honoured", f"a required call came back: {result.tool_calls[0].name}")


def _response_format(result: Result | GraniteError) -> Observation:
    failed = _failed("response_format", result)
    if failed or not isinstance(result, Result):
        return failed or Observation("response_format", None, "not tested", "")
    try:
        value = json.loads(result.text)
    except ValueError:
        value = None
    if isinstance(value, dict) and value.get("colour") in ("crimson", "teal") and len(value) == 1:
        return Observation("response_format", None, "honoured", f"a prose prompt came back as the schema's object: {result.text.strip()}")
    return Observation("response_format", None, "ignored", f"a json_schema response_format came back as {_quote(result)}")


# The probe, step by step: the request count and the parameters announced before it runs are read from here.
_STEPS = (
    _Step("seed", 3, _measure_seed),
    _Step("temperature", 2, _measure_temperature),
    _Step("top_k", 1, _measure_top_k),
    _Step("stop", 1, _measure_stop),
    _Step("max_tokens", 1, _measure_max_tokens),
    _Step("logprobs", 1, _measure_logprobs),
    _Step("tools", 1, _measure_tools),
    _Step("response_format", 1, _measure_response_format),
    _Step("batch", 1, _measure_batch),
)


def _quote(result: Result) -> str:
    text = result.text.strip()
    return repr(text if len(text) <= 24 else text[:21] + "...")


def _host(base_url: str) -> str:
    return urlsplit(base_url).netloc or base_url


# --- remembering reports -----------------------------------------------------------------------


PROBES_FORMAT = 1  # {"format": 1, "reports": {"host|model|provider": report}}; before formats, the reports alone
_MAX_PROBES_BYTES = 8 << 20  # a report is about 1 kB


class ProbeStore:
    """Probe reports in one JSON file in the user's cache directory, keyed by host, model and provider.

    Several versions of granite-magic may share the file.  One written in another format, or a report that does
    not read (a field missing or of the wrong type), is left aside with one warning (logged, once for each state
    of the file) and never stops a cell; the next probe writes the file anew in this version's format.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or _default_path()
        self._warned: tuple[int, int] | None = None  # the file's (mtime, size) when its problem was last said

    def save(self, report: ProbeReport) -> None:
        reports = {f"{r.host}|{r.model}|{r.provider}": r.to_dict() for r in self._reports()}
        reports[f"{report.host}|{report.model}|{report.provider}"] = report.to_dict()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f".{self.path.name}.{token_hex(8)}.tmp")  # two kernels never share one
            try:
                temporary.write_text(json.dumps({"format": PROBES_FORMAT, "reports": reports}, indent=1))
                os.replace(temporary, self.path)
            finally:
                temporary.unlink(missing_ok=True)
        except OSError:
            pass  # a cache that cannot be written only means the probe is not remembered

    def find(self, base_url: str, model: str) -> list[ProbeReport]:
        """Every provider's report for ``model`` at this API host, newest first."""
        host = _host(base_url)
        found = [report for report in self._reports() if report.host == host and report.model == model]
        return sorted(found, key=lambda r: r.date, reverse=True)

    def _reports(self) -> list[ProbeReport]:
        """The reports that read; what does not is said once and left aside."""
        try:
            data = json.loads(read_capped(self.path, _MAX_PROBES_BYTES))
        except FileNotFoundError:
            return []
        except (OSError, ValueError, RecursionError) as exc:  # FileRefused is a ValueError
            self._warn(f"it cannot be read ({getattr(exc, 'reason', None) or exc})")
            return []
        if isinstance(data, dict) and "format" not in data:
            data = {"format": PROBES_FORMAT, "reports": data}  # the layout before formats: the same reports, unwrapped
        if not isinstance(data, dict) or data.get("format") != PROBES_FORMAT or not isinstance(data.get("reports"), dict):
            written = f"format {data.get('format')!r}" if isinstance(data, dict) else f"a {type(data).__name__}"
            self._warn(f"it was written by another version of granite-magic ({written}; this version reads format {PROBES_FORMAT})")
            return []
        reports, problems = [], []
        for key, entry in data["reports"].items():
            try:
                reports.append(ProbeReport.from_dict(entry))
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
        if problems:
            self._warn(f"{len(problems)} of its reports do not read ({problems[0]}{', ...' if len(problems) > 1 else ''})")
        return reports

    def _warn(self, why: str) -> None:
        try:
            info = self.path.stat()
            state = (info.st_mtime_ns, info.st_size)
        except OSError:
            state = (0, 0)
        if state != self._warned:
            self._warned = state
            logger.warning("granite: warning: the stored probe reports in %s are ignored: %s; %%granite probe "
                           "writes them anew.", shown_path(self.path), why)


def _default_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "granite-magic" / "probes.json"
