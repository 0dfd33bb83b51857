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
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from ._tokens import Alternative, ProbsKind, Token, spelled

__all__ = [
    "FLAT_BITS",
    "SAMPLER_ORDER",
    "Candidate",
    "CutBy",
    "Lens",
    "Samplers",
    "entropy",
    "forks",
    "lens_view",
    "lens_view_class",
    "resample",
    "shaded_html",
    "step_distribution",
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


def _step_of(token: Token) -> _Step:
    # a step always offers at least the token that was picked, even when no alternatives came back
    if not token.known:
        return _NOTHING
    return _prepare(token.top or (Alternative(token.text, token.logprob),))


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
.gm-lens-sel{outline:2px solid #1a73e8}
.gm-lens-none{text-decoration:underline dotted #888}
.gm-lens-legend{font-size:80%;opacity:.8;margin-top:4px}
.gm-lens-legend i{display:inline-block;width:1.2em;height:.9em;vertical-align:middle}
.gm-lens-table td,.gm-lens-table th{padding:1px 8px;text-align:left}
.gm-lens-table td.gm-lens-n{text-align:right;font-variant-numeric:tabular-nums}
.gm-lens-table tr.gm-lens-picked{font-weight:600}
.gm-lens-table tr.gm-lens-gone{opacity:.55}
.gm-lens-bar{display:inline-block;height:.7em;background:#1a73e8;vertical-align:middle}
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
    lines = [f"step {index} · surprisal {surprisal(token):.1f} bits · entropy {_entropy_bits(step.raw):.1f} bits"]
    lines += [f"{'▶' if text == token.text else '  '} {_visible(text)}  {_pct(p)}" for text, p in zip(step.texts, step.probs, strict=True)]
    if token.text not in step.texts:
        lines.append(f"▶ {_visible(token.text)}  {_pct(token.prob)} (not among the listed alternatives)")
    return "&#10;".join(_e(line) for line in lines)


def _no_probability(index: int | None, token: Token, *, selected: bool = False) -> str:
    """Text with no probability: unshaded, dotted, and its tooltip says so."""
    where = f"#{index} " if index is not None else ""
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
    """

    CONTEXT_TOKENS = 12  # tokens of the reply shown before the selected step in the table's header

    def __init__(self, tokens: Sequence[Token], kind: ProbsKind | None = None) -> None:
        self.tokens = list(tokens)
        self.kind: ProbsKind | None = kind
        self.steps = [_step_of(t) for t in self.tokens]
        self.picked = [_rank(s, t.text) for s, t in zip(self.steps, self.tokens, strict=True)]  # 1-based rank
        self.forks = [i for i, (s, t) in enumerate(zip(self.steps, self.tokens, strict=True)) if _is_fork(s, t, FLAT_BITS)]
        self.width = max((len(s.texts) for s in self.steps), default=0)  # the most alternatives at any step
        self.selected = self.forks[0] if self.forks else 0
        self.set_samplers(Samplers())

    def set_samplers(self, samplers: Samplers) -> None:
        self.samplers = samplers
        self.outcomes = [_outcome(step, samplers) for step in self.steps]

    def picked_now(self, index: int) -> float:
        """The picked token's probability at the current settings (0 when filtered or not listed)."""
        rank = self.picked[index]
        return 0.0 if rank is None else self.outcomes[index][1][rank - 1]

    def impossible(self) -> list[int]:
        """Steps whose picked token could not have been picked at the current settings (text with no
        probability is not judged)."""
        return [i for i, token in enumerate(self.tokens) if token.known and self.picked_now(i) == 0.0]

    def candidates(self, index: int) -> list[Candidate]:
        return _candidates(self.steps[index], self.samplers)

    # -- HTML ------------------------------------------------------------------------------------------

    def header_html(self) -> str:
        order = "samplers apply in llama.cpp's order: top-k → top-p → min-p, then temperature; no request is sent"
        return f'{_STYLE}<div class="gm-lens-head">{_e(_KIND_LABEL[self.kind])} · {_e(order)}</div>'

    def strip_html(self) -> str:
        """The reply, each token shaded by its probability at the current settings; struck through if it
        could not have been picked, underlined if a fork, outlined if selected (short tooltips: fast)."""
        fork_set = set(self.forks)
        spans = []
        for i, token in enumerate(self.tokens):
            if not token.known:
                spans.append(_no_probability(i, token, selected=i == self.selected))
                continue
            now = self.picked_now(i)
            # short class names and tooltips: this is resent on every slider move
            classes = f"gm-lens-s{_bucket(now)}" + (" gm-lens-f" if i in fork_set else "") + (" gm-lens-x" if now == 0 else "")
            classes += " gm-lens-sel" if i == self.selected else ""
            title = f"#{i} model {_pct(token.prob)} → now {_pct(now)}"
            spans.append(f'<span class="{classes}" title="{title}">{_e(token.text)}</span>')
        unknown = not all(token.known for token in self.tokens)
        return f'<div class="{_ROOT}"><div class="gm-lens-text">{"".join(spans)}</div>{_legend(unknown)}</div>'

    def entropy_svg(self) -> str:
        """One thin bar per step: entropy now (blue) over entropy before the samplers (grey); forks marked
        below in orange, the selected step in blue.  One path per layer keeps 1,000 steps small."""
        n = max(1, len(self.tokens))
        top = max(1.0, math.log2(max(2, self.width)))  # the tallest bar: a uniform pick among K
        raw = self._bars([_entropy_bits(s.raw) for s in self.steps], top)
        now = self._bars([_entropy_bits(new) for _, new in self.outcomes], top)
        ticks = "".join(f"M{i} {_BAR_H + 1}h1v3h-1z" for i in self.forks)
        return (f'<svg viewBox="0 0 {n} {_BAR_H + 4}" preserveAspectRatio="none" width="100%" height="40" role="img">'
                f'<title>entropy per step, bits (0 to {top:.1f})</title>'
                f'<path d="{raw}" fill="#9995"/><path d="{now}" fill="#1a73e8"/><path d="{ticks}" fill="#e65100"/>'
                f'<rect x="{self.selected}" y="0" width="1" height="{_BAR_H + 4}" fill="#1a73e855"/></svg>')

    @staticmethod
    def _bars(bits: Sequence[float], top: float) -> str:
        # one staircase outline (up to each bar's height, one unit across) rather than a shape per bar
        steps = "".join(f"V{_BAR_H - min(b / top, 1) * _BAR_H:.1f}h1" for b in bits)
        return f"M0 {_BAR_H}{steps}V{_BAR_H}z"

    def summary_html(self) -> str:
        gone = len(self.impossible())
        total = len(self.tokens)
        text = f"{total} tokens · {len(self.forks)} forks (underlined)"
        if gone:
            text += f" · at these settings {gone} of the picks could not have been made (struck through)"
        return f'<div class="gm-lens-note">{_e(text)}</div>'

    def table_html(self) -> str:
        """The selected step: its context, and each alternative's probability before and after the samplers."""
        if not self.tokens:
            return f'<div class="gm-lens-note">{_e("this reply carries no token probabilities")}</div>'
        i = self.selected
        token, step = self.tokens[i], self.steps[i]
        if not token.known:
            return f'<div class="{_ROOT}">{self._context_html(i)}<div class="gm-lens-note">{_e(_NO_PROBABILITY)}</div></div>'
        rows = "".join(self._row(c, c.text == token.text) for c in self.candidates(i))
        head = "<tr><th></th><th>token</th><th>model</th><th>now</th><th></th></tr>"
        return (f'<div class="{_ROOT}">{self._context_html(i)}<table class="gm-lens-table">{head}{rows}</table>'
                f"{self._picked_html(i)}<div class=\"gm-lens-note\">{_e(self._coverage(step))}</div></div>")

    @staticmethod
    def _row(c: Candidate, picked: bool) -> str:
        css = " ".join(name for name, on in (("gm-lens-picked", picked), ("gm-lens-gone", not c.survived)) if on)
        bar = f'<span class="gm-lens-bar" style="width:{c.new * 6:.2f}em"></span>'
        return (f'<tr class="{css}"><td>{"▶" if picked else ""}</td><td><code>{_e(_visible(c.text))}</code></td>'
                f'<td class="gm-lens-n">{_pct(c.prob)}</td><td class="gm-lens-n">{_pct(c.new)} {bar}</td>'
                f"<td>{_e(_CUT_LABEL[c.cut_by])}</td></tr>")

    def _context_html(self, i: int) -> str:
        before = "".join(t.text for t in self.tokens[max(0, i - self.CONTEXT_TOKENS):i]).replace("\n", "↵ ")
        head = f"step {i} of {len(self.tokens)} · "
        if self.tokens[i].known:
            head += f"surprisal {surprisal(self.tokens[i]):.1f} bits · entropy "
            head += f"{_entropy_bits(self.steps[i].raw):.1f} → {_entropy_bits(self.outcomes[i][1]):.1f} bits"
        else:
            head += _NO_PROBABILITY
        return (f'<div class="gm-lens-head">{_e(head)}</div>'
                f'<div class="gm-lens-text">…{_e(before)}<b>▶{_e(_visible(self.tokens[i].text))}</b></div>')

    def _picked_html(self, i: int) -> str:
        token = self.tokens[i]
        if self.picked[i] is None:
            text = f"the picked token {_visible(token.text)} ({_pct(token.prob)}) is not among the listed alternatives"
        else:
            text = f"the picked token {_visible(token.text)}: model {_pct(token.prob)} → now {_pct(self.picked_now(i))}"
        return f"<div>{_e(text)}</div>"

    @staticmethod
    def _coverage(step: _Step) -> str:
        return (f"the listed alternatives cover {_pct(min(step.mass, 1.0))} of the model's probability; "
                "“now” is renormalised over those that survive (the rest of the vocabulary is unknown)")


# ---------------------------------------------------------------------------------------------------------
# the widget: built on first use, so importing this module never imports ipywidgets


def lens_view(tokens: Sequence[Token], kind: ProbsKind | None = None, on_branch: Branch | None = None) -> Any:
    """The interactive sampling lens (an ``ipywidgets.VBox``) for a reply's tokens.

    ``on_branch(step, text)`` is called when a person clicks an alternative: continue the reply from
    ``tokens[:step]`` followed by ``text``.  Without it the alternatives' buttons are disabled.
    """
    return lens_view_class()(tokens, kind, on_branch)


@functools.cache
def lens_view_class() -> type[Any]:
    """The ``LensView`` class (a ``VBox``), defined on first call so that ipywidgets loads only then."""
    import ipywidgets as w

    class LensView(w.VBox):  # type: ignore[misc]
        """Sliders for the samplers, the shaded reply, an entropy strip and the selected step's table.

        Moving a slider re-applies the samplers in the kernel with no request.  Tests drive it through its
        attributes: ``temperature``, ``top_k``, ``top_p``, ``min_p`` (sliders), ``step`` (the selected step),
        ``prev_fork`` / ``next_fork`` (buttons), ``strip``, ``entropy_strip``, ``table``, ``summary`` (HTML)
        and ``branch_buttons`` (one per alternative of the selected step, most likely first).
        """

        def __init__(self, tokens: Sequence[Token], kind: ProbsKind | None = None, on_branch: Branch | None = None) -> None:
            super().__init__()
            self.lens = Lens(tokens, kind)
            self.on_branch = on_branch
            self._make_controls()
            self._make_views()
            self.children = self._layout()
            for slider in self.sliders:
                slider.observe(self._settings_changed, names="value")
            self.step.observe(self._step_changed, names="value")
            self._settings_changed()

        def _make_controls(self) -> None:
            style = {"description_width": "6em"}
            wide = w.Layout(width="22em")
            self.temperature = w.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="temperature", style=style, layout=wide)
            self.top_k = w.IntSlider(value=0, min=0, max=max(1, self.lens.width), description="top-k (0 off)", style=style, layout=wide)
            self.top_p = w.FloatSlider(value=1.0, min=0.01, max=1.0, step=0.01, description="top-p", style=style, layout=wide)
            self.min_p = w.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.01, description="min-p", style=style, layout=wide)
            self.sliders = (self.temperature, self.top_k, self.top_p, self.min_p)
            last = max(0, len(self.lens.tokens) - 1)
            self.step = w.IntSlider(value=self.lens.selected, min=0, max=last, description="step", style=style, layout=w.Layout(width="100%"))
            self.prev_fork = w.Button(description="◀ fork", tooltip="the previous fork", layout=w.Layout(width="auto"))
            self.next_fork = w.Button(description="fork ▶", tooltip="the next fork", layout=w.Layout(width="auto"))
            self.prev_fork.on_click(lambda _: self._jump(-1))
            self.next_fork.on_click(lambda _: self._jump(1))

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
            controls = w.HBox([w.VBox([self.temperature, self.top_k]), w.VBox([self.top_p, self.min_p])])
            picker = w.HBox([self.prev_fork, self.step, self.next_fork])
            branches = w.HBox([self.branch_label, *self.branch_buttons], layout=w.Layout(flex_flow="row wrap"))
            return [self.header, controls, self.summary, self.strip, self.entropy_strip, picker, self.table, branches]

        def samplers(self) -> Samplers:
            return Samplers(self.temperature.value, self.top_k.value, self.top_p.value, self.min_p.value)

        def _settings_changed(self, _change: object = None) -> None:
            self.lens.set_samplers(self.samplers())
            self.summary.value = self.lens.summary_html()
            self.entropy_strip.value = self.lens.entropy_svg()
            self._show_step()

        def _step_changed(self, _change: object = None) -> None:
            self.lens.selected = self.step.value
            self.entropy_strip.value = self.lens.entropy_svg()
            self._show_step()

        def _show_step(self) -> None:
            self.strip.value = self.lens.strip_html()
            self.table.value = self.lens.table_html()
            texts = self.lens.steps[self.lens.selected].texts if self.lens.tokens else ()
            for j, button in enumerate(self.branch_buttons):
                button.description = _visible(texts[j])[:24] if j < len(texts) else ""
                button.tooltip = f"continue from step {self.lens.selected} with {texts[j]!r}" if j < len(texts) else ""
                button.layout.display = None if j < len(texts) else "none"

        def _jump(self, direction: int) -> None:
            here = self.step.value
            ahead = [i for i in self.lens.forks if (i - here) * direction > 0]
            if ahead:
                self.step.value = min(ahead) if direction > 0 else max(ahead)

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
