"""The sampling lens: the token distribution behind every word, and what each sampler does to it.

Everything here works on the top-K alternatives a reply carries (``Result.tokens``): no request is
made.  The pure functions (``resample``, ``step_distribution``, ``entropy``, ``surprisal``, ``forks``,
``shaded_html``) need nothing beyond the standard library; ``tokens_frame`` imports pandas and
``lens_view`` imports ipywidgets only when called, so importing this module stays light.

**The sampler chain.**  Samplers run in llama.cpp's default order, which llama-cpp-python follows too:

    top-k → top-p → min-p  (on the distribution at temperature 1)  →  temperature  →  pick

so the filters decide *which* tokens may be picked from the model's own probabilities, and temperature
only reshapes the survivors.  Hugging Face transformers (and vLLM) apply temperature *first*, so there a
low temperature also narrows what top-p keeps: the same settings can give a different answer.  Repetition
penalties, logit bias, typical-p, XTC and DRY are not modelled (they are off unless asked for).

**What is known.**  Only the K listed alternatives of each step are known, not the tail of the vocabulary.
Probabilities shown as "raw" are renormalised over the listed alternatives, and the result of the samplers
is renormalised over the listed survivors.  Top-p is the one filter whose cut depends on the tail: its
running total uses the probabilities as the model gave them (shares of the whole vocabulary), exactly as
llama.cpp does, except after a top-k that cuts inside the list, where the candidates are all known and
are renormalised among themselves first (again as llama.cpp does).  When the listed alternatives never
reach ``top_p``, all of them survive (the cut lies in the unknown tail).  Min-p is relative to the most
likely token, so it is exact.
"""

from __future__ import annotations

import functools
import html
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from ._tokens import Alternative, ProbsKind, Token, spelled

__all__ = [
    "FLAT_BITS",
    "SAMPLER_NAMES",
    "SAMPLER_ORDER",
    "Candidate",
    "CutBy",
    "Fate",
    "Lens",
    "Row",
    "Samplers",
    "Span",
    "entropy",
    "forks",
    "lens_view",
    "lens_view_class",
    "resample",
    "run_settings",
    "shaded_html",
    "step_distribution",
    "step_rows",
    "surprisal",
    "tokens_frame",
]

SAMPLER_ORDER = ("top_k", "top_p", "min_p", "temperature")

# A step is "flat" above 2 bits: no more certain than a fair pick among four tokens.  Most steps of a reply
# sit far below (mid-word continuations are near 0 bits); a step above it is one where the text could
# reasonably have gone several ways.  With --probs 3 or fewer the listed entropy cannot reach it, and only
# picks that were not the most likely count as forks.
FLAT_BITS = 2.0

# Reported log probabilities are rounded (JSON, float32 logits): comparisons against a threshold allow this
# much, so a cut does not flip on the last bit.
_EPS = 1e-9
_LN2 = math.log(2)

CutBy = Literal["top_k", "top_p", "min_p", "greedy"]
Branch = Callable[[int, str], object]

_CUT_LABEL: dict[CutBy | None, str] = {
    None: "kept",
    "top_k": "cut by top-k",
    "top_p": "cut by top-p",
    "min_p": "cut by min-p",
    "greedy": "not the most likely (temperature 0)",
}

_KIND_LABEL: dict[ProbsKind | None, str] = {
    "raw": "probabilities from the model before any sampler (local llama.cpp)",
    "server": "probabilities as the server reports them",
    None: "token probabilities (their source was not recorded)",
}


# ---------------------------------------------------------------------------------------------------------
# sampler settings and one step's distribution


@dataclass(frozen=True, slots=True)
class Samplers:
    """Sampler settings, validated; ``None`` (and llama.cpp's own "off" values) switch a sampler off."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self) -> None:
        _check("temperature", self.temperature, 0.0, math.inf)
        _check("top_k", self.top_k, 0, math.inf)
        _check("top_p", self.top_p, 0.0, 1.0)
        _check("min_p", self.min_p, 0.0, 1.0)
        if self.top_k is not None and self.top_k != int(self.top_k):
            raise ValueError(f"top_k must be a whole number, not {self.top_k!r}")
        # llama.cpp's own "off" values: top_k 0, top_p 1, min_p 0, temperature 1 change nothing
        object.__setattr__(self, "top_k", int(self.top_k) if self.top_k else None)
        object.__setattr__(self, "top_p", None if self.top_p is None or self.top_p >= 1 else self.top_p)
        object.__setattr__(self, "min_p", self.min_p or None)


SAMPLER_NAMES = ("temperature", "top_k", "top_p", "min_p")  # the samplers the lens models


def run_settings(sent: Mapping[str, Any], defaults: Mapping[str, Any], *, stated: bool = False) -> tuple[Samplers, str]:
    """The samplers a reply was made with, and a line saying which were sent and which were defaults.

    A sampler the request set is taken as sent; one it did not set is ``defaults``: what the backend states it uses
    (``stated``, as the local model's llama.cpp does), else the API's documented defaults, as the caller reads them
    from the parameter table.  ``"temperature 0.8 (sent); top-k off, top-p 1, min-p 0 (not sent: the API's
    documented defaults)"``.
    """
    values: dict[str, Any] = {}
    given: list[str] = []
    assumed: list[str] = []
    for name in SAMPLER_NAMES:
        value = sent[name] if name in sent else defaults.get(name)
        values[name] = value
        (given if name in sent else assumed).append(_setting(name, value))
    try:
        samplers = Samplers(**values)
    except (TypeError, ValueError):  # a default the lens cannot model: start from the model's own distribution
        return Samplers(), "unknown (the model's own distribution is shown)"
    where = "the backend's defaults" if stated else "the API's documented defaults"
    parts = ([f"{', '.join(given)} (sent)"] if given else []) + ([f"{', '.join(assumed)} (not sent: {where})"] if assumed else [])
    return samplers, "; ".join(parts)


def _setting(name: str, value: Any) -> str:
    label = name.replace("_", "-")
    if value is None or (name == "top_k" and not value):
        return f"{label} off"
    return f"{label} {value:g}" if isinstance(value, float) else f"{label} {value}"


def _check(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:  # NaN fails this too
        raise ValueError(f"{name} must be between {low:g} and {high:g}, not {value!r}")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One alternative at one step: before and after the samplers.

    ``prob`` is the probability as reported (a share of the whole vocabulary), ``raw`` the same renormalised
    over the listed alternatives, ``new`` the result of the samplers (renormalised over the listed
    survivors), ``cut_by`` the sampler that removed it (``None``: it survived).
    """

    text: str
    prob: float
    raw: float
    new: float
    cut_by: CutBy | None

    @property
    def survived(self) -> bool:
        return self.cut_by is None


@dataclass(frozen=True, slots=True)
class _Step:
    """One step's alternatives, merged by text and sorted most likely first (computed once per step)."""

    texts: tuple[str, ...]
    logprobs: tuple[float, ...]
    probs: tuple[float, ...]  # as reported
    raw: tuple[float, ...]  # renormalised over the listed alternatives
    mass: float  # how much of the vocabulary's probability the list covers (as reported)


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    high, low = (a, b) if a >= b else (b, a)
    return high + math.log1p(math.exp(low - high))


def _clean(logprob: float) -> float:
    # a broken server may send NaN or +inf; a log probability is at most 0
    return -math.inf if math.isnan(logprob) else min(logprob, 0.0)


def _prepare(top: Iterable[Alternative]) -> _Step:
    merged: dict[str, float] = {}
    for alt in top:
        # byte-level tokens can decode to the same text: they are one choice for a reader, so their
        # probabilities add up (a dict keyed by text would otherwise keep only the last one)
        merged[alt.text] = _logaddexp(merged.get(alt.text, -math.inf), _clean(alt.logprob))
    if merged and max(merged.values()) == -math.inf:
        merged = dict.fromkeys(merged, 0.0)  # nothing is known: treat the listed alternatives alike
    ranked = sorted(merged.items(), key=lambda item: -item[1])  # stable: ties keep the listed order
    texts = tuple(text for text, _ in ranked)
    logprobs = tuple(lp for _, lp in ranked)
    probs = tuple(math.exp(lp) for lp in logprobs)
    mass = sum(probs)
    raw = tuple(p / mass for p in probs) if mass > 0 else tuple(1 / len(probs) for _ in probs)
    return _Step(texts, logprobs, probs, raw, mass)


_NOTHING = _Step((), (), (), (), 0.0)  # text with no probability: nothing is known of its step


def _step_of(token: Token, listed: int | None = None) -> _Step:
    # a step always offers at least the token that was picked, even when no alternatives came back; ``listed``: only
    # the first so many alternatives (a server that sent more than were asked for has the pick's own appended)
    if not token.known:
        return _NOTHING
    top = token.top if listed is None else token.top[:listed]
    return _prepare(top or (Alternative(token.text, token.logprob),))


class _Cut(NamedTuple):
    """How many of a step's alternatives (a prefix, most likely first) are left after each filter."""

    top_k: int
    top_p: int
    min_p: int
    greedy: bool

    @property
    def kept(self) -> int:
        return 1 if self.greedy else self.min_p

    def reason(self, index: int) -> CutBy | None:
        if index >= self.top_k:
            return "top_k"
        if index >= self.top_p:
            return "top_p"
        if index >= self.min_p:
            return "min_p"
        return "greedy" if self.greedy and index > 0 else None


def _cut(step: _Step, s: Samplers) -> _Cut:
    # each filter keeps a prefix of the sorted list, so a count per filter says everything
    n = len(step.texts)
    after_k = min(s.top_k, n) if s.top_k is not None else n
    after_p = _top_p(step, s, after_k)
    after_min = after_p
    if s.min_p is not None:
        threshold = step.logprobs[0] + math.log(s.min_p) - _EPS
        after_min = max(1, sum(1 for lp in step.logprobs[:after_p] if lp >= threshold))
    return _Cut(after_k, after_p, after_min, s.temperature == 0)


def _top_p(step: _Step, s: Samplers, alive: int) -> int:
    if s.top_p is None:
        return alive
    total = _candidate_mass(step, s, alive)
    running = 0.0
    for i in range(alive):
        running += step.probs[i] / total
        if running >= s.top_p - _EPS:
            return i + 1
    return alive  # the cut lies in the unknown tail: every listed alternative survives


def _candidate_mass(step: _Step, s: Samplers, alive: int) -> float:
    """What top-p's running total is a share of: the candidates llama.cpp would renormalise over."""
    if s.top_k is not None and s.top_k <= len(step.texts):
        return sum(step.probs[:alive])  # a top-k inside the list: the candidates are all known
    return max(step.mass, 1.0)  # otherwise the whole vocabulary, whose shares the reported probabilities are


def _new_probs(step: _Step, cut: _Cut, temperature: float | None) -> list[float]:
    kept = cut.kept
    t = 1.0 if temperature is None or cut.greedy else temperature
    top = step.logprobs[0]
    # p ** (1/T) renormalised, in log space so that a tiny T cannot overflow
    weights = [math.exp((lp - top) / t) for lp in step.logprobs[:kept]]
    total = sum(weights)
    return [w / total for w in weights] + [0.0] * (len(step.texts) - kept)


def _outcome(step: _Step, s: Samplers) -> tuple[_Cut, list[float]]:
    if not step.texts:
        return _Cut(0, 0, 0, False), []
    cut = _cut(step, s)
    return cut, _new_probs(step, cut, s.temperature)


def _candidates(step: _Step, s: Samplers) -> list[Candidate]:
    cut, new = _outcome(step, s)
    return [
        Candidate(text, prob, raw, q, cut.reason(i))
        for i, (text, prob, raw, q) in enumerate(zip(step.texts, step.probs, step.raw, new, strict=True))
    ]


def step_distribution(
    top: Sequence[Alternative],
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> list[Candidate]:
    """One step's alternatives before and after the samplers, most likely first.

    Alternatives with the same text are merged (their probabilities summed).  See the module docstring for
    the order of the samplers and what is renormalised over what.
    """
    return _candidates(_prepare(top), Samplers(temperature, top_k, top_p, min_p))


def resample(
    tokens: Sequence[Token],
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> list[dict[str, float]]:
    """Per step, ``{token_text: probability}`` over that step's alternatives after the given samplers.

    Samplers apply in llama.cpp's (and llama-cpp-python's) order: top-k, top-p and min-p filter the
    distribution at temperature 1, then temperature reshapes the survivors (``p ** (1/T)``, renormalised).
    Hugging Face transformers applies temperature first, so its top-p keeps fewer tokens at a low
    temperature.  ``None`` switches a sampler off (so do llama.cpp's own values: top_k 0, top_p 1, min_p 0);
    temperature 0 is greedy: all the probability on the most likely alternative.

    The raw distribution is the listed top-K renormalised: the tail beyond K is unknown, and the result is
    renormalised over the listed survivors (top-p's cut uses the model's own shares; see the module
    docstring).  Every listed alternative is a key, most likely first, filtered ones with 0.0; alternatives
    with equal text are merged by summing.  A step with no alternatives offers the picked token alone; text
    that came with no probability (``Token.known`` False) gives an empty dict.
    """
    samplers = Samplers(temperature, top_k, top_p, min_p)
    result = []
    for token in tokens:
        step = _step_of(token)
        _, new = _outcome(step, samplers)
        result.append(dict(zip(step.texts, new, strict=True)))
    return result


# ---------------------------------------------------------------------------------------------------------
# what can be proven: the listed alternatives and the tokens that were not listed, after the samplers
#
# ``resample`` renormalises over the listed alternatives.  The lens does not: the tokens that were not listed keep
# their share of the probability (one row, "all other tokens"), so at temperature 1 with no filter every number is
# the model's own.  Of those tokens only their total is known, and that each is at most as likely as the least
# likely listed one (the list is the top of the vocabulary).  What the samplers do to them depends on how that
# total is spread, so where it matters a probability is a ``Span``: the bounds that hold however it is spread.


class Span(NamedTuple):
    """A probability known to lie between ``lo`` and ``hi`` (equal when it is known exactly)."""

    lo: float
    hi: float

    @property
    def mid(self) -> float:
        return (self.lo + self.hi) / 2


Fate = Literal["kept", "maybe", "cut"]  # after the filters: certainly kept, kept or cut (the unlisted tokens decide), cut



@dataclass(frozen=True, slots=True)
class Row:
    """One row of a step's table at some sampler settings.

    ``text`` is a listed alternative, or the picked token when it was not listed (``listed`` False), or None for all
    the other tokens together.  ``model`` is the probability as reported (for the other tokens: what the listed ones
    and the pick leave), ``now`` what the samplers make of it, ``fate`` whether the filters keep it and ``by`` which
    filter cuts it (or may).
    """

    text: str | None
    model: float
    now: Span
    fate: Fate
    by: CutBy | None
    listed: bool = True


@dataclass(frozen=True, slots=True)
class _Known:
    """One step as the bounds see it: the listed alternatives (the top of the vocabulary, most likely first), the
    picked token when it is not among them (its text and probability), the rest of the probability, and the most
    any token of the rest can have (the least likely listed alternative; 1 when nothing is listed)."""

    step: _Step
    pick_text: str
    pick: float | None
    rest: float
    cap: float


def _known(token: Token, listed: int | None) -> _Known:
    top = token.top if listed is None else token.top[:listed]
    step = _prepare(top) if top else _NOTHING
    pick = None if token.text in step.texts else math.exp(_clean(token.logprob))
    if pick is not None:
        pick = min(pick, max(0.0, 1.0 - step.mass) + _EPS)  # no more than the list leaves (up to rounding)
    cap = min(math.exp(_clean(alt.logprob)) for alt in top) if top else 1.0
    return _Known(step, token.text, pick, max(0.0, 1.0 - step.mass - (pick or 0.0)), cap)


def _exp(x: float) -> float:
    return math.inf if x > 700 else math.exp(x)


def _tail_weight(low: float, high: float, a: float, cap: float, floor: float, count: float) -> Span:
    """Bounds on the sum of ``u ** a`` over tokens ``u`` in [``floor``, ``cap``] whose total lies in [``low``, ``high``],
    at most ``count`` of them (math.inf: any number).  Each bound is monotone in the total, so the ends give them."""
    if high <= 0:
        return Span(0.0, 0.0)
    if a == 1:
        return Span(low, high)

    def power(x: float, y: float) -> float:  # x ** y for x > 0, inf when too large for a float
        return _exp(y * math.log(x))

    def even(total: float) -> float:  # the total spread evenly over `count` tokens
        return 0.0 if total <= 0 or count == math.inf else power(total, a) * power(count, 1 - a)

    def by_cap(total: float) -> float:  # u ** a = u * u ** (a - 1), each u at most min(cap, total)
        return 0.0 if total <= 0 else total * power(min(cap, total), a - 1)

    def by_floor(total: float) -> float:  # each u at least floor
        return 0.0 if total <= 0 or floor <= 0 else total * power(floor, a - 1)

    if a > 1:  # convex: largest with the total in as few tokens as may be, smallest spread thin
        return Span(max(by_floor(low), even(low)), by_cap(high))
    most = min(by_floor(high) if floor > 0 else math.inf, even(high) if count != math.inf else math.inf)
    return Span(by_cap(low), most)  # concave: the other way round


class _Chain(NamedTuple):
    """What the filters leave of one step.  Each filter keeps a prefix of the list, so the listed alternatives are
    kept below ``kept``, may be kept below ``alive`` (top-p's cut may lie among them: the unlisted tokens decide),
    and are cut from ``alive`` on, each by the first filter in ``cuts`` whose boundary it reaches."""

    kept: int
    alive: int
    cuts: tuple[tuple[int, CutBy], ...]
    pick: Fate
    pick_by: CutBy | None
    rest: Fate
    rest_by: CutBy | None
    low: float  # the surviving total of the rest lies in [low, high]
    high: float
    floor: float  # each surviving token of the rest is at least this (min-p)
    many: float  # and there are at most this many of them (top-k; math.inf: any number)

    def listed_fate(self, i: int) -> tuple[Fate, CutBy | None]:
        if i < self.kept:
            return "kept", None
        if i < self.alive:
            return "maybe", "top_p"  # only top-p's cut can fall among the listed alternatives uncertainly
        return "cut", next(why for at, why in self.cuts if at <= i)


def _worse(fate: Fate, by: CutBy | None, why: CutBy, maybe: bool = False) -> tuple[Fate, CutBy | None]:
    """A fate after one more filter: a certain cut stands; a possible cut is named by the first filter that may cut."""
    if fate == "cut" or (maybe and fate == "maybe"):
        return fate, by
    return ("maybe" if maybe else "cut"), why


def _chain(known: _Known, s: Samplers) -> _Chain:
    """The filters in llama.cpp's order on the distribution at temperature 1.  The listed alternatives are the top of
    the vocabulary, so each filter keeps a prefix of them, then possibly some of the rest, the most likely first.
    What survives of the rest is kept as bounds: on its total, on each token (``floor``, the cap), on how many."""
    step, q, rest, cap = known.step, known.pick or 0.0, known.rest, known.cap
    n = len(step.texts)
    p = step.probs
    kept = alive = n
    cuts: list[tuple[int, CutBy]] = []
    pick: tuple[Fate, CutBy | None] = ("kept", None) if known.pick is not None else ("cut", None)
    gone: tuple[Fate, CutBy | None] = ("kept", None)  # the rest's
    low = high = rest
    floor, count = 0.0, math.inf

    def cut_list(at: int, why: CutBy) -> None:
        nonlocal kept, alive
        if at < alive:
            cuts.append((at, why))
            kept, alive = min(kept, at), at

    if s.top_k is not None:
        cut_list(s.top_k, "top_k")
        room = s.top_k - n  # places left after the listed alternatives, for the pick and the rest
        if room <= 0:
            low = high = 0.0
            gone, pick = _worse(*gone, "top_k"), _worse(*pick, "top_k")
        else:
            low, high, count = 0.0, min(high, room * cap), room
            gone = _worse(*gone, "top_k", maybe=True)
            if not rest < room * q:  # the rest may hold `room` tokens at least as likely as the pick
                pick = _worse(*pick, "top_k", maybe=True)
    if s.top_p is not None:
        listed_mass = sum(p[:alive])  # only top-k has cut so far: kept == alive
        pick_low = q if pick[0] == "kept" else 0.0
        pick_high = q if pick[0] != "cut" else 0.0
        share = s.top_p - _EPS  # llama.cpp keeps tokens while the running total before them is below this share
        target_low = share * (listed_mass + low + pick_low)
        target_high = share * (listed_mass + high + pick_high)
        before, maybe_at = 0.0, alive
        for i in range(alive):
            if before >= target_low and maybe_at == alive:
                maybe_at = i
            if before >= target_high:
                cut_list(i, "top_p")
                break
            before += p[i]
        kept = min(kept, maybe_at)
        need_low, need_high = target_low - listed_mass, target_high - listed_mass  # what is left for the rest and pick
        if need_high <= 0:
            low = high = 0.0
            gone, pick = _worse(*gone, "top_p"), _worse(*pick, "top_p")
        else:
            ahead_of_pick = high  # the most of the rest that can come before the pick
            # the survivors reach the share, overshooting it by one token at most, or are all there is
            high = min(high, need_high + max(cap, q))
            low = max(0.0, min(need_low, low + pick_low) - pick_high) if need_low > 0 else 0.0
            if low < rest:
                gone = _worse(*gone, "top_p", maybe=True)
            if not ahead_of_pick < need_low:
                pick = _worse(*pick, "top_p", maybe=True)
    if s.min_p is not None:
        if n:  # relative to the most likely token, which is listed: exact for the list and the pick
            threshold = step.logprobs[0] + math.log(s.min_p) - _EPS
            cut_list(next((i for i, lp in enumerate(step.logprobs) if lp < threshold), n), "min_p")
            if cap <= 0 or math.log(cap) < threshold:
                low = high = 0.0
                gone = _worse(*gone, "min_p")
            else:
                low, floor = 0.0, max(floor, math.exp(threshold))
                gone = _worse(*gone, "min_p", maybe=True)
            if known.pick is not None and (q <= 0 or math.log(q) < threshold):
                pick = _worse(*pick, "min_p")
        else:  # only the pick is known: the most likely token is it or one of the rest
            low, floor = 0.0, max(floor, s.min_p * q * (1 - _EPS))
            gone = _worse(*gone, "min_p", maybe=True)
            if q < s.min_p * max(q, min(rest, cap)) * (1 + _EPS):
                pick = _worse(*pick, "min_p", maybe=True)
    if s.temperature == 0:  # the most likely survivor: with a list, its first alternative
        if n:
            cut_list(1, "greedy")
            gone, pick = _worse(*gone, "greedy"), _worse(*pick, "greedy")
        elif pick[0] != "cut" and q > rest:  # only the pick is known, and all the rest together hold less
            pick, gone = ("kept", None), _worse(*gone, "greedy")
        else:
            pick, gone = _worse(*pick, "greedy", maybe=True), _worse(*gone, "greedy", maybe=True)
    if rest <= 0:
        gone = ("kept", None)  # nothing there to cut
    return _Chain(kept, alive, tuple(cuts), *pick, *gone, low, high, floor, count)


def _weights(known: _Known, chain: _Chain, s: Samplers) -> tuple[list[float], Span, Span]:
    """The surviving listed alternatives' weights after temperature (``p ** (1/T)`` relative to the most likely;
    the first ``chain.kept`` certain, the others up to ``alive`` possible), the pick's and the rest's, as bounds."""
    step, q = known.step, known.pick or 0.0
    if s.temperature == 0:  # the most likely survivor takes everything
        if step.texts:
            return [1.0], Span(0.0, 0.0), Span(0.0, 0.0)
        one = Span(1.0, 1.0) if chain.pick == "kept" else Span(0.0, 1.0 if chain.pick == "maybe" else 0.0)
        return [], one, Span(0.0, 1.0) if chain.rest == "maybe" else Span(0.0, 0.0)
    a = 1.0 if s.temperature is None else 1.0 / s.temperature
    ref = step.logprobs[0] if step.texts else (math.log(q) if q > 0 else 0.0)  # relative to the most likely
    scale = math.exp(ref)
    listed = [_exp((lp - ref) * a) for lp in step.logprobs[: chain.alive]]
    pick = Span(0.0, 0.0)
    if chain.pick != "cut" and q > 0:
        w = _exp((math.log(q) - ref) * a)
        pick = Span(w if chain.pick == "kept" else 0.0, w)
    rest = _tail_weight(chain.low / scale, chain.high / scale, a, known.cap / scale, chain.floor / scale, chain.many)
    return listed, pick, rest


def _pick_now(known: _Known, s: Samplers, rank: int | None) -> tuple[Span, Fate]:
    """The picked token's bounds and fate at ``s``: one step of the strip, without building every row."""
    chain = _chain(known, s)
    listed, pick, rest = _weights(known, chain, s)
    if rank is not None:
        fate, _ = chain.listed_fate(rank - 1)
        if fate == "cut":
            return Span(0.0, 0.0), "cut"
        j = rank - 1
        w = listed[j]
        most = sum(listed) - w + pick.hi + rest.hi
        least = sum(listed[: chain.kept]) - (w if j < chain.kept else 0.0) + pick.lo + rest.lo
        return Span(_share(w if fate == "kept" else 0.0, most), _share(w, least)), fate
    if chain.pick == "cut" or known.pick is None:
        return Span(0.0, 0.0), "cut"
    most = sum(listed) + rest.hi
    least = sum(listed[: chain.kept]) + rest.lo
    return Span(_share(pick.lo, most), _share(pick.hi, least)), chain.pick


def _settle(known: _Known, s: Samplers) -> list[Row]:
    """The rows of one step at settings ``s``: each listed alternative, the pick when it is not listed, the rest."""
    chain = _chain(known, s)
    listed, pick, rest = _weights(known, chain, s)
    step = known.step
    weights = [Span(w if i < chain.kept else 0.0, w) for i, w in enumerate(listed)]
    weights += [Span(0.0, 0.0)] * (len(step.texts) - chain.alive)
    if known.pick is not None:
        weights.append(pick)
    weights.append(rest)
    shares = _shares(weights)
    rows = [Row(text, prob, shares[i], *chain.listed_fate(i)) for i, (text, prob) in enumerate(zip(step.texts, step.probs, strict=True))]
    if known.pick is not None:
        rows.append(Row(known.pick_text, known.pick, shares[-2], chain.pick, chain.pick_by, listed=False))
    rows.append(Row(None, known.rest, shares[-1], chain.rest, chain.rest_by))
    return rows


def _shares(weights: Sequence[Span]) -> list[Span]:
    """Each weight's share of the total, as bounds: its least against the others' most, its most against their least.

    The others' sums are prefix plus suffix sums, never the total minus one's own: a tail bound can be vast (a low
    temperature over a long tail) and subtracting it would lose everything else."""

    def others(values: list[float]) -> list[float]:
        before = list(itertools.accumulate(values, initial=0.0))
        after = list(itertools.accumulate(reversed(values), initial=0.0))[::-1]
        return [before[i] + after[i + 1] for i in range(len(values))]

    most = others([w.hi for w in weights])
    least = others([w.lo for w in weights])
    return [Span(_share(w.lo, m), _share(w.hi, lo)) for w, m, lo in zip(weights, most, least, strict=True)]


def _share(x: float, others: float) -> float:
    if x <= 0:
        return 0.0
    if math.isinf(x):
        return 0.0 if math.isinf(others) else 1.0
    return x / (x + others)


def step_rows(token: Token, samplers: Samplers, listed: int | None = None) -> list[Row]:
    """One step's rows after ``samplers``, with the tokens that were not listed kept as their own row: each listed
    alternative (most likely first), the picked token when it is not among them, then all other tokens.

    At temperature 1 with no filter every ``now`` is the model's own probability.  Otherwise a ``now`` that depends
    on how the unlisted probability is spread is the range that holds however it is (each unlisted token at most as
    likely as the least likely listed one).  ``listed``: the first so many alternatives are the list.  Text with no
    probability gives no rows.
    """
    return _settle(_known(token, listed), samplers) if token.known else []



# ---------------------------------------------------------------------------------------------------------
# measures: entropy, surprisal, forks, rank


def _entropy_bits(probs: Iterable[float]) -> float:
    return max(0.0, -sum(p * math.log(p) for p in probs if p > 0) / _LN2)


def entropy(token: Token) -> float:
    """Entropy in bits of a step's listed alternatives, renormalised (0: the model was sure; NaN: no probability)."""
    return _entropy_bits(_step_of(token).raw) if token.known else math.nan


def surprisal(token: Token) -> float:
    """Surprisal in bits of the picked token, ``-log2 p`` (0: it was certain; each bit halves its odds)."""
    return -token.logprob / _LN2


def _rank(step: _Step, text: str) -> int | None:
    try:
        return step.texts.index(text) + 1
    except ValueError:
        return None  # picked outside the listed top K


def _is_fork(step: _Step, token: Token, flat_bits: float) -> bool:
    if not token.known:
        return False  # nothing is known of a step with no probability
    rank = _rank(step, token.text)
    not_top = rank is None or step.logprobs[rank - 1] < step.logprobs[0] - _EPS  # a tie for first is no fork
    return not_top or _entropy_bits(step.raw) > flat_bits


def forks(tokens: Sequence[Token], flat_bits: float = FLAT_BITS) -> list[int]:
    """Steps where the picked token was not the most likely alternative, or the distribution was flat.

    Flat means an entropy above ``flat_bits`` (default ``FLAT_BITS``, 2 bits: no surer than a fair pick
    among four).  These are the places where the reply could have gone another way.
    """
    return [i for i, token in enumerate(tokens) if _is_fork(_step_of(token), token, flat_bits)]


def tokens_frame(tokens: Sequence[Token]) -> Any:
    """A pandas DataFrame, one row per token.

    Columns: step (0-based), token, logprob, prob, rank (1 = most likely; missing, ``pd.NA`` in a nullable
    integer column, when the pick is not among the listed alternatives), entropy (bits), alternatives (a list
    of ``(text, prob)`` pairs, most likely first, probabilities as reported, equal texts merged).  Text that
    came with no probability is a row with NaN logprob, prob and entropy, and no alternatives.
    """
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("tokens_frame() needs pandas: pip install pandas") from exc
    steps = [_step_of(t) for t in tokens]
    return pd.DataFrame({
        "step": range(len(tokens)),
        "token": [t.text for t in tokens],
        "logprob": [t.logprob for t in tokens],
        "prob": [t.prob for t in tokens],
        "rank": pd.array([_rank(s, t.text) for s, t in zip(steps, tokens, strict=True)], dtype="Int64"),
        "entropy": [_entropy_bits(s.raw) if t.known else math.nan for s, t in zip(steps, tokens, strict=True)],
        "alternatives": [list(zip(s.texts, s.probs, strict=True)) for s in steps],
    })


# ---------------------------------------------------------------------------------------------------------
# HTML: every string from the model goes through _e (html.escape with quotes); nothing becomes markup

_STYLE = """<style>
.gm-lens{font-family:var(--jp-content-font-family,inherit);line-height:1.6}
.gm-lens-head{font-size:85%;opacity:.8;margin-bottom:4px}
.gm-lens-text{white-space:pre-wrap;word-wrap:break-word}
.gm-lens-t{border-radius:2px}
.gm-lens-fork,.gm-lens-f{border-bottom:2px solid #8d3f00}
.gm-lens-x{text-decoration:line-through;text-decoration-color:#b00020}
.gm-lens-m{text-decoration:line-through dotted #b00020}
.gm-lens-sel{outline:2px solid #1a73e8}
.gm-lens-none{text-decoration:underline dotted #888}
.gm-lens-legend{font-size:80%;opacity:.8;margin-top:4px}
.gm-lens-legend i{display:inline-block;width:1.2em;height:.9em;vertical-align:middle}
.gm-lens-table td,.gm-lens-table th{padding:1px 8px;text-align:left}
.gm-lens-table td.gm-lens-n{text-align:right;font-variant-numeric:tabular-nums}
.gm-lens-table tr.gm-lens-picked{font-weight:600}
.gm-lens-table tr.gm-lens-gone{opacity:.55}
.gm-lens-bar{display:inline-block;height:.7em;background:#1a73e8;vertical-align:middle}
.gm-lens-bar-m{background:#1a73e855}
.gm-lens-table tr.gm-lens-rest td{border-top:1px solid #8886}
.gm-lens-note{font-size:85%;opacity:.75}
""" + "".join(f".gm-lens-s{b}{{background:rgba(230,81,0,{0.8 * (1 - (b + 0.5) / 10):.2f})}}\n" for b in range(10)) + "</style>"

# MathJax (which JupyterLab runs over text/html outputs) must not read a "$" in the reply as mathematics
_ROOT = "gm-lens mathjax_ignore tex2jax_ignore"
_NO_PROBABILITY = "no probability: the server sent none for this text"
_VISIBLE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})
_BAR_H = 32  # the entropy strip's height in SVG units


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _visible(text: str) -> str:
    """A token as a label: spaces and line breaks made visible (" the" and "the" are different tokens)."""
    return text.translate(_VISIBLE) if text else "∅"


def _pct(p: float) -> str:
    return f"{p * 100:.1f}%"


_SHOWN = 0.0005  # bounds closer than this read as one number at one decimal of a percent
_REST = "all other tokens"


def _span(span: Span) -> str:
    """``24.1%``, or a range (an en dash between the bounds) when they differ at the precision shown."""
    lo, hi = f"{span.lo * 100:.1f}", f"{span.hi * 100:.1f}"
    return f"{lo}%" if lo == hi else f"{lo}\u2013{hi}%"


def _fate_label(row: Row, listed: int) -> str:
    """What the filters did to a row, in words: kept, cut by one of them, or may be (the tokens not listed decide)."""
    prefix = "" if row.listed or row.text is None else f"not among the {listed} listed · "
    if row.fate == "kept":
        return prefix + ("" if row.text is None else "kept")
    cut = _CUT_LABEL[row.by]
    if row.fate == "cut":
        return prefix + cut
    if row.text is None:
        return f"some may be {cut}"
    if row.by == "greedy":
        return prefix + "may not be the most likely (temperature 0)"
    return prefix + f"may be {cut} (the tokens not listed decide)"


def _bucket(p: float) -> int:
    # ten shades: low probability is a strong warm colour, high probability is transparent
    return min(9, max(0, int(p * 10)))


def _shade_style(p: float) -> str:
    # inline as well as by class, so the shading survives sanitisers that drop <style> but keep style=
    return f"background-color:rgba(230,81,0,{0.8 * (1 - (_bucket(p) + 0.5) / 10):.2f})"


_NONE_STYLE = "text-decoration:underline dotted #888"  # inline too, as the shading is


def _legend(unknown: bool = False) -> str:
    swatches = "".join(f'<i class="gm-lens-s{b}" style="{_shade_style(b / 10)}"></i>' for b in range(10))
    none = f' · <span class="gm-lens-none" style="{_NONE_STYLE}">dotted, unshaded</span>: {_NO_PROBABILITY}' if unknown else ""
    return f'<div class="gm-lens-legend">probability 0% {swatches} 100% · <span class="gm-lens-fork">underlined</span>: a fork{none}</div>'


def _tooltip(index: int, token: Token, step: _Step) -> str:
    lines = [f"token {index + 1} · surprisal {surprisal(token):.1f} bits · entropy {_entropy_bits(step.raw):.1f} bits"]
    lines += [f"{'▶' if text == token.text else '  '} {_visible(text)}  {_pct(p)}" for text, p in zip(step.texts, step.probs, strict=True)]
    if token.text not in step.texts:
        lines.append(f"▶ {_visible(token.text)}  {_pct(token.prob)} (not among the listed alternatives)")
    return "&#10;".join(_e(line) for line in lines)


def _no_probability(index: int | None, token: Token, *, selected: bool = False) -> str:
    """Text with no probability: unshaded, dotted, and its tooltip says so."""
    where = f"token {index + 1}: " if index is not None else ""
    classes = "gm-lens-none" + (" gm-lens-sel" if selected else "")
    return f'<span class="{classes}" style="{_NONE_STYLE}" title="{_e(where + _NO_PROBABILITY)}">{_e(token.text)}</span>'


def shaded_html(tokens: Sequence[Token], *, kind: ProbsKind | None, text: str | None = None) -> str:
    """The reply as static, escaped HTML: each token shaded by its probability, alternatives in its tooltip.

    Self-contained (an inline ``<style>``, classes prefixed ``gm-lens``, shading also inline), with no script
    and nothing from the model as markup: what a saved notebook shows without a kernel or widgets.  Given
    ``text`` (the reply), it spells exactly that, whatever the tokens say (``spelled``): text with no
    probability is unshaded, dotted, and says so.
    """
    if text is not None:
        tokens = spelled(tokens, text)
    steps = [_step_of(t) for t in tokens]
    fork_set = {i for i, (s, t) in enumerate(zip(steps, tokens, strict=True)) if _is_fork(s, t, FLAT_BITS)}
    spans = []
    for i, (token, step) in enumerate(zip(tokens, steps, strict=True)):
        if not token.known:
            spans.append(_no_probability(None, token))
            continue
        classes = f"gm-lens-t gm-lens-s{_bucket(token.prob)}" + (" gm-lens-fork" if i in fork_set else "")
        spans.append(f'<span class="{classes}" style="{_shade_style(token.prob)}" title="{_tooltip(i, token, step)}">{_e(token.text)}</span>')
    known = sum(t.known for t in tokens)
    none = "" if known == len(tokens) else " · some text came with no probability (dotted)"
    head = f"{_KIND_LABEL[kind]} · {known} tokens · {len(fork_set)} forks{none} · hover a token for its alternatives"
    return (f'{_STYLE}<div class="{_ROOT}"><div class="gm-lens-head">{_e(head)}</div>'
            f'<div class="gm-lens-text" style="white-space:pre-wrap">{"".join(spans)}</div>{_legend(bool(none))}</div>')


# ---------------------------------------------------------------------------------------------------------
# the lens's state, without widgets: what the view shows for the current settings and step


class Lens:
    """The lens's state and its HTML, with no widgets: the view shows it, tests and the benchmark drive it.

    The distributions are prepared once; ``set_samplers`` re-applies the samplers to every step (pure
    arithmetic on at most K numbers per step, no request), and the ``*_html`` methods render the result.
    ``run``: the samplers the reply was made with (the view's sliders start there; when they change the model's
    distribution the table shows a column for them); ``listed``: how many alternatives were asked for (a server
    that sends more has the pick's own appended, which is then shown as not listed).  Steps are indexed from 0
    here, as ``tokens`` is; a person reads them counted from 1 ("token 1"), as a branch's column does.
    """

    CONTEXT_TOKENS = 12  # tokens of the reply shown before the selected step in the table's header

    def __init__(self, tokens: Sequence[Token], kind: ProbsKind | None = None, *, run: Samplers | None = None,
                 listed: int | None = None, run_label: str = "") -> None:
        self.tokens = list(tokens)
        self.kind: ProbsKind | None = kind
        self.run = run
        self.run_label = run_label  # how the run's settings are described ("temperature 0.8 as sent; ...")
        self.steps = [_step_of(t, listed) for t in self.tokens]
        self.known = [_known(t, listed) if t.known else None for t in self.tokens]
        self.picked = [_rank(s, t.text) for s, t in zip(self.steps, self.tokens, strict=True)]  # 1-based rank
        self.forks = [i for i, (s, t) in enumerate(zip(self.steps, self.tokens, strict=True)) if _is_fork(s, t, FLAT_BITS)]
        self.width = max((len(s.texts) for s in self.steps), default=0)  # the most alternatives at any step
        self.listed = listed if listed is not None else self.width
        self.selected = self.forks[0] if self.forks else 0
        self.set_samplers(run or Samplers())

    def set_samplers(self, samplers: Samplers) -> None:
        self.samplers = samplers
        self.outcomes = [_outcome(step, samplers) for step in self.steps]  # the listed alternatives, for entropy
        # the picked token of every step (the strip); a step's every row only when it is shown (the table)
        self.picks = [_pick_now(known, samplers, rank) if known is not None else None
                      for known, rank in zip(self.known, self.picked, strict=True)]

    @property
    def shows_run(self) -> bool:
        """Whether the run's own samplers change the model's distribution (then the table has a column for them)."""
        return self.run is not None and self.run != Samplers()

    def _pick_row(self, index: int, rows: Sequence[Row]) -> Row | None:
        rank = self.picked[index]
        if rank is not None:
            return rows[rank - 1] if rows else None
        return next((row for row in rows if not row.listed), None)

    def picked_span(self, index: int) -> Span:
        """The bounds on the picked token's probability at the current settings (exact: ``lo == hi``)."""
        pick = self.picks[index]
        return pick[0] if pick is not None else Span(0.0, 0.0)

    def picked_now(self, index: int) -> float:
        """The picked token's probability at the current settings: the middle of its bounds (0 when it is cut)."""
        return self.picked_span(index).mid

    def _fates(self, fate: Fate) -> list[int]:
        return [i for i, pick in enumerate(self.picks) if pick is not None and pick[1] == fate]

    def impossible(self) -> list[int]:
        """Steps whose picked token could not have been picked at the current settings, for certain (text with no
        probability is not judged)."""
        return self._fates("cut")

    def uncertain(self) -> list[int]:
        """Steps whose picked token may or may not survive the current filters: the tokens not listed decide."""
        return self._fates("maybe")

    def unlisted(self) -> list[int]:
        """Steps whose picked token is not among the listed alternatives (a pick from the rest of the vocabulary)."""
        return [i for i, known in enumerate(self.known) if known is not None and known.pick is not None]

    def candidates(self, index: int) -> list[Candidate]:
        """The selected step's listed alternatives renormalised among themselves (``step_distribution``)."""
        return _candidates(self.steps[index], self.samplers)

    def step_rows(self, index: int, samplers: Samplers | None = None) -> list[Row]:
        """A step's rows at ``samplers`` (the current settings by default): see ``step_rows``."""
        known = self.known[index]
        return [] if known is None else _settle(known, self.samplers if samplers is None else samplers)

    # -- HTML ------------------------------------------------------------------------------------------

    def header_html(self) -> str:
        order = "samplers apply in llama.cpp's order: top-k → top-p → min-p, then temperature; no request is sent"
        where = "the sliders start at the run's settings: " + self.run_label
        start = f'<div class="gm-lens-head">{_e(where)}</div>' if self.run_label else ""
        return f'{_STYLE}<div class="gm-lens-head">{_e(_KIND_LABEL[self.kind])} · {_e(order)}</div>{start}'

    def strip_html(self) -> str:
        """The reply, each token shaded by its probability at the current settings; struck through if it could not
        have been picked (dotted if it may not have been), underlined if a fork, outlined if selected (short
        tooltips: this is resent on every slider move)."""
        fork_set = set(self.forks)
        spans = []
        for i, token in enumerate(self.tokens):
            if not token.known:
                spans.append(_no_probability(i, token, selected=i == self.selected))
                continue
            now, fate = self.picks[i] or (Span(0.0, 0.0), "cut")
            classes = f"gm-lens-s{_bucket(now.mid)}" + (" gm-lens-f" if i in fork_set else "")
            classes += {"cut": " gm-lens-x", "maybe": " gm-lens-m", "kept": ""}[fate] + (" gm-lens-sel" if i == self.selected else "")
            title = f"token {i + 1} · model {_pct(token.prob)} → now {_span(now)}"
            if self.picked[i] is None:
                title += f" · not among the {self.listed} listed"
            spans.append(f'<span class="{classes}" title="{_e(title)}">{_e(token.text)}</span>')
        unknown = not all(token.known for token in self.tokens)
        return f'<div class="{_ROOT}"><div class="gm-lens-text">{"".join(spans)}</div>{_legend(unknown)}</div>'

    def entropy_svg(self) -> str:
        """One thin bar per token: entropy now (blue) over entropy before the samplers (grey), both of the listed
        alternatives; forks marked below in orange, the selected token in blue.  One path per layer keeps 1,000
        tokens small."""
        n = max(1, len(self.tokens))
        top = max(1.0, math.log2(max(2, self.width)))  # the tallest bar: a uniform pick among K
        raw = self._bars([_entropy_bits(s.raw) for s in self.steps], top)
        now = self._bars([_entropy_bits(new) for _, new in self.outcomes], top)
        ticks = "".join(f"M{i} {_BAR_H + 1}h1v3h-1z" for i in self.forks)
        return (f'<svg viewBox="0 0 {n} {_BAR_H + 4}" preserveAspectRatio="none" width="100%" height="40" role="img">'
                f'<title>entropy of the listed alternatives per token, bits (0 to {top:.1f})</title>'
                f'<path d="{raw}" fill="#9995"/><path d="{now}" fill="#1a73e8"/><path d="{ticks}" fill="#e65100"/>'
                f'<rect x="{self.selected}" y="0" width="1" height="{_BAR_H + 4}" fill="#1a73e855"/></svg>')

    @staticmethod
    def _bars(bits: Sequence[float], top: float) -> str:
        # one staircase outline (up to each bar's height, one unit across) rather than a shape per bar
        steps = "".join(f"V{_BAR_H - min(b / top, 1) * _BAR_H:.1f}h1" for b in bits)
        return f"M0 {_BAR_H}{steps}V{_BAR_H}z"

    def summary_html(self) -> str:
        total = len(self.tokens)
        text = f"{total} tokens · {len(self.forks)} forks (underlined)"
        unlisted = len(self.unlisted())
        if unlisted:
            text += f" · {unlisted} of the picks {'is' if unlisted == 1 else 'are'} not among the {self.listed} listed alternatives"
        gone, unsure = len(self.impossible()), len(self.uncertain())
        if gone:
            text += f" · at these settings {gone} of the picks could not have been made (struck through)"
        if unsure:
            text += (f"{',' if gone else ' · at these settings'} {unsure} might not have been (dotted: it depends on the "
                     "tokens not listed)")
        return f'<div class="gm-lens-note">{_e(text)}</div>'

    def table_html(self) -> str:
        """The selected token: its context, and each alternative's probability before and after the samplers, with
        all the tokens that were not listed as one more row."""
        if not self.tokens:
            return f'<div class="gm-lens-note">{_e("this reply carries no token probabilities")}</div>'
        i = self.selected
        token, known = self.tokens[i], self.known[i]
        if known is None:
            return f'<div class="{_ROOT}">{self._context_html(i)}<div class="gm-lens-note">{_e(_NO_PROBABILITY)}</div></div>'
        rows = _settle(known, self.samplers)
        run_rows = _settle(known, self.run) if self.shows_run and self.run is not None else None
        run_head = (f'<th title="{_e("at the settings the reply was made with: " + self.run_label)}">at the run</th>'
                    if run_rows is not None else "")
        head = (f'<tr><th></th><th>token</th><th title="{_e("the probability as reported")}">model</th>{run_head}'
                f'<th title="{_e("after the samplers set above")}">now</th><th></th></tr>')
        body = "".join(self._row(row, None if run_rows is None else run_rows[j], token.text, self.listed)
                       for j, row in enumerate(rows))
        ranged = any(r.now.hi - r.now.lo >= _SHOWN for r in [*rows, *(run_rows or [])])
        return (f'<div class="{_ROOT}">{self._context_html(i)}<table class="gm-lens-table">{head}{body}</table>'
                f"{self._picked_html(i, run_rows)}<div class=\"gm-lens-note\">{_e(self._coverage(known, ranged))}</div></div>")

    @staticmethod
    def _row(row: Row, at_run: Row | None, picked_text: str, listed: int) -> str:
        picked = row.text == picked_text
        rest = row.text is None
        css = " ".join(name for name, on in (("gm-lens-picked", picked), ("gm-lens-gone", row.fate == "cut"),
                                              ("gm-lens-rest", rest)) if on)
        label = (f"<i>{_e(_REST)}</i>" if rest else f"<code>{_e(_visible(row.text or ''))}</code>")
        bar = (f'<span class="gm-lens-bar" style="width:{row.now.lo * 6:.2f}em"></span>'
               f'<span class="gm-lens-bar gm-lens-bar-m" style="width:{(row.now.hi - row.now.lo) * 6:.2f}em"></span>')
        run = f'<td class="gm-lens-n">{_span(at_run.now)}</td>' if at_run is not None else ""
        return (f'<tr class="{css}"><td>{"▶" if picked else ""}</td><td>{label}</td><td class="gm-lens-n">{_pct(row.model)}</td>'
                f'{run}<td class="gm-lens-n">{_span(row.now)} {bar}</td><td>{_e(_fate_label(row, listed))}</td></tr>')

    def _context_html(self, i: int) -> str:
        before = "".join(t.text for t in self.tokens[max(0, i - self.CONTEXT_TOKENS):i]).replace("\n", "↵ ")
        head = f"token {i + 1} of {len(self.tokens)} · "
        if self.tokens[i].known:
            head += f"surprisal {surprisal(self.tokens[i]):.1f} bits · entropy of the listed alternatives "
            head += f"{_entropy_bits(self.steps[i].raw):.1f} → {_entropy_bits(self.outcomes[i][1]):.1f} bits"
        else:
            head += _NO_PROBABILITY
        return (f'<div class="gm-lens-head">{_e(head)}</div>'
                f'<div class="gm-lens-text">…{_e(before)}<b>▶{_e(_visible(self.tokens[i].text))}</b></div>')

    def _picked_html(self, i: int, run_rows: Sequence[Row] | None) -> str:
        token = self.tokens[i]
        text = f"the picked token {_visible(token.text)}: model {_pct(token.prob)}"
        if run_rows is not None and (run := self._pick_row(i, run_rows)) is not None:
            text += f" → at the run {_span(run.now)}"
        text += f" → now {_span(self.picked_span(i))}"
        if self.picked[i] is None:
            text += f" (not among the {self.listed} listed alternatives)"
        return f"<div>{_e(text)}</div>"

    def _coverage(self, known: _Known, ranged: bool) -> str:
        if not known.step.texts:
            return ("no alternatives came back for this token: only its own probability is known, and the rest of the "
                    "vocabulary is one row")
        text = (f"the {len(known.step.texts)} listed alternatives cover {_pct(min(known.step.mass, 1.0))} of the model's "
                f"probability; of the other tokens only their total is known, and that none is more likely than the least "
                f"likely listed one ({_pct(known.cap)})")
        if ranged:
            text += "; where how that total is spread would change a number, the range shown holds however it is spread"
        return text


# ---------------------------------------------------------------------------------------------------------
# the widget: built on first use, so importing this module never imports ipywidgets


def lens_view(tokens: Sequence[Token], kind: ProbsKind | None = None, on_branch: Branch | None = None, *,
              run: Samplers | None = None, run_label: str = "", listed: int | None = None) -> Any:
    """The interactive sampling lens (an ``ipywidgets.VBox``) for a reply's tokens.

    ``on_branch(step, text)`` is called when a person clicks an alternative: continue the reply from
    ``tokens[:step]`` followed by ``text``.  Without it the alternatives' buttons are disabled.  ``run``: the
    samplers the reply was made with (``run_settings``), where the sliders start; ``run_label`` says which were
    sent and which are the provider's defaults.  ``listed``: how many alternatives were asked for.
    """
    return lens_view_class()(tokens, kind, on_branch, run=run, run_label=run_label, listed=listed)


@functools.cache
def lens_view_class() -> type[Any]:
    """The ``LensView`` class (a ``VBox``), defined on first call so that ipywidgets loads only then."""
    import ipywidgets as w

    class LensView(w.VBox):  # type: ignore[misc]
        """Sliders for the samplers, the shaded reply, an entropy strip and the selected step's table.

        Moving a slider re-applies the samplers in the kernel with no request.  The sliders start at the run's
        settings.  Tests drive it through its attributes: ``temperature``, ``top_k``, ``top_p``, ``min_p``
        (sliders), ``token`` (the selected token, counted from 1 as a person reads it), ``prev_fork`` /
        ``next_fork`` / ``reset`` (buttons), ``strip``, ``entropy_strip``, ``table``, ``summary`` (HTML) and
        ``branch_buttons`` (one per alternative of the selected token, most likely first).
        """

        def __init__(self, tokens: Sequence[Token], kind: ProbsKind | None = None, on_branch: Branch | None = None, *,
                     run: Samplers | None = None, run_label: str = "", listed: int | None = None) -> None:
            super().__init__()
            self._quiet = False
            self.lens = Lens(tokens, kind, run=run, run_label=run_label, listed=listed)
            self.on_branch = on_branch
            self._make_controls()
            self._make_views()
            self.children = self._layout()
            for slider in self.sliders:
                slider.observe(self._settings_changed, names="value")
            self.token.observe(self._step_changed, names="value")
            self._settings_changed()

        def _make_controls(self) -> None:
            style = {"description_width": "7em"}  # "temperature" whole
            wide = w.Layout(width="23em")
            t, k, p, m = self._start()
            self.temperature = w.FloatSlider(value=t, min=0.0, max=max(2.0, t), step=0.05, description="temperature", style=style, layout=wide)
            self.top_k = w.IntSlider(value=k, min=0, max=max(1, self.lens.width, k), description="top-k (0 off)", style=style, layout=wide)
            self.top_p = w.FloatSlider(value=p, min=0.01, max=1.0, step=0.01, description="top-p", style=style, layout=wide)
            self.min_p = w.FloatSlider(value=m, min=0.0, max=1.0, step=0.01, description="min-p", style=style, layout=wide)
            self.sliders = (self.temperature, self.top_k, self.top_p, self.min_p)
            self.reset = w.Button(description="↺ the run's settings", tooltip="put the sliders back where the reply was made",
                                  layout=w.Layout(width="auto", display=None if self.lens.run is not None else "none"))
            self.reset.on_click(lambda _: self._reset())
            count = max(1, len(self.lens.tokens))
            self.token = w.IntSlider(value=self.lens.selected + 1, min=1, max=count, description="token", style=style,
                                     layout=w.Layout(width="auto", flex="1 1 auto"))
            # the buttons keep their width beside the slider, which takes the rest of the row
            self.prev_fork = w.Button(description="◀ fork", tooltip="the previous fork", layout=w.Layout(width="auto", flex="0 0 auto"))
            self.next_fork = w.Button(description="fork ▶", tooltip="the next fork", layout=w.Layout(width="auto", flex="0 0 auto"))
            self.prev_fork.on_click(lambda _: self._jump(-1))
            self.next_fork.on_click(lambda _: self._jump(1))

        def _start(self) -> tuple[float, int, float, float]:
            """The sliders' values for the run's settings (llama.cpp's "off" values for what is off)."""
            run = self.lens.run or Samplers()
            return (1.0 if run.temperature is None else run.temperature, run.top_k or 0, run.top_p or 1.0, run.min_p or 0.0)

        def _reset(self) -> None:
            self._quiet = True  # one re-render for the four sliders, not four
            try:
                for slider, value in zip(self.sliders, self._start(), strict=True):
                    slider.value = value
            finally:
                self._quiet = False
            self._settings_changed()

        def _make_views(self) -> None:
            self.header = w.HTML(self.lens.header_html())
            self.strip = w.HTML()
            self.entropy_strip = w.HTML()
            self.summary = w.HTML()
            self.table = w.HTML()
            # one button per possible alternative, made once and relabelled per step (no widget churn)
            self.branch_buttons = [self._branch_button(j) for j in range(self.lens.width)]
            self.branch_label = w.HTML('<span class="gm-lens-note">continue from here with:</span>' if self.on_branch else "")

        def _branch_button(self, j: int) -> Any:
            button = w.Button(disabled=self.on_branch is None, layout=w.Layout(width="auto"))
            button.add_class("gm-lens-branch")  # for people's CSS and the browser test
            button.on_click(lambda _: self._branch(j))
            return button

        def _layout(self) -> list[Any]:
            controls = w.HBox([w.VBox([self.temperature, self.top_k]), w.VBox([self.top_p, self.min_p]), self.reset],
                              layout=w.Layout(flex_flow="row wrap", align_items="flex-start"))
            picker = w.HBox([self.prev_fork, self.token, self.next_fork])
            branches = w.HBox([self.branch_label, *self.branch_buttons], layout=w.Layout(flex_flow="row wrap"))
            return [self.header, controls, self.summary, self.strip, self.entropy_strip, picker, self.table, branches]

        def samplers(self) -> Samplers:
            return Samplers(self.temperature.value, self.top_k.value, self.top_p.value, self.min_p.value)

        def _settings_changed(self, _change: object = None) -> None:
            if self._quiet:
                return
            self.lens.set_samplers(self.samplers())
            self.summary.value = self.lens.summary_html()
            self.entropy_strip.value = self.lens.entropy_svg()
            self._show_step()

        def _step_changed(self, _change: object = None) -> None:
            self.lens.selected = self.token.value - 1
            self.entropy_strip.value = self.lens.entropy_svg()
            self._show_step()

        def _show_step(self) -> None:
            self.strip.value = self.lens.strip_html()
            self.table.value = self.lens.table_html()
            texts = self.lens.steps[self.lens.selected].texts if self.lens.tokens else ()
            for j, button in enumerate(self.branch_buttons):
                button.description = _visible(texts[j])[:24] if j < len(texts) else ""
                button.tooltip = (f"replace token {self.lens.selected + 1} with {texts[j]!r} and continue from there"
                                  if j < len(texts) else "")
                button.layout.display = None if j < len(texts) else "none"

        def _jump(self, direction: int) -> None:
            here = self.token.value - 1
            ahead = [i for i in self.lens.forks if (i - here) * direction > 0]
            if ahead:
                self.token.value = (min(ahead) if direction > 0 else max(ahead)) + 1

        def _branch(self, j: int) -> None:
            texts = self.lens.steps[self.lens.selected].texts
            if self.on_branch is not None and j < len(texts):
                self.on_branch(self.lens.selected, texts[j])

        def close(self) -> None:
            """Close every widget this view made (and their layouts), so none outlives the view."""
            for child in self._descendants():
                child.close()
            self.layout.close()
            super().close()

        def _descendants(self) -> list[Any]:
            found: list[Any] = []
            stack = list(self.children)
            while stack:
                widget = stack.pop()
                found.append(widget)
                stack.extend(getattr(widget, "children", ()))
                for name in ("layout", "style"):
                    if isinstance(getattr(widget, name, None), w.Widget):
                        found.append(getattr(widget, name))
            return found

    return LensView
