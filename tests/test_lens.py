"""The sampling lens: resampling in llama.cpp's order, the measures, the frame, the static HTML, the widget."""

from __future__ import annotations

import itertools
import math
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from granite_magic._lens import (
    FLAT_BITS,
    Lens,
    Samplers,
    entropy,
    forks,
    lens_view,
    lens_view_class,
    resample,
    shaded_html,
    step_distribution,
    step_rows,
    surprisal,
    tokens_frame,
)
from granite_magic._result import Alternative, Token

HOSTILE = '<img src=x onerror=alert(1)>'


def alts(*pairs: tuple[str, float]) -> tuple[Alternative, ...]:
    return tuple(Alternative(text, math.log(p)) for text, p in pairs)


def tok(text: str, *pairs: tuple[str, float], prob: float | None = None) -> Token:
    """A token picked as ``text``; its probability is its listed one unless given."""
    listed = dict(pairs)
    return Token(text, math.log(prob if prob is not None else listed[text]), alts(*pairs))


ABC = (("a", 0.5), ("b", 0.3), ("c", 0.2))


def one(token: Token, **samplers: Any) -> dict[str, float]:
    (step,) = resample([token], **samplers)
    return step


# --- resample: each sampler -------------------------------------------------------------------------------


def test_import_stays_light() -> None:
    code = "import sys, granite_magic._lens; print(sorted({'ipywidgets', 'pandas', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_samplers_renormalises_the_listed_alternatives() -> None:
    step = one(tok("a", ("a", 0.4), ("b", 0.2), ("c", 0.2)))  # the list covers 80%: the tail is unknown
    assert list(step) == ["a", "b", "c"]
    assert step == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.25})


@pytest.mark.parametrize("samplers", [{}, {"temperature": 0.3}, {"top_k": 2}, {"top_p": 0.6}, {"min_p": 0.5}, {"temperature": 1.7, "top_p": 0.9}])
def test_each_step_sums_to_one(samplers: dict[str, Any]) -> None:
    tokens = [tok("a", *ABC), tok("y", ("x", 0.6), ("y", 0.1), ("z", 0.05)), Token("q", math.log(0.9))]
    for step in resample(tokens, **samplers):
        assert sum(step.values()) == pytest.approx(1.0)


def test_top_k_1_gives_the_most_likely_all_the_probability() -> None:
    assert one(tok("b", ("b", 0.1), ("a", 0.6), ("c", 0.3)), top_k=1) == {"a": 1.0, "c": 0.0, "b": 0.0}


def test_temperature_0_is_greedy() -> None:
    assert one(tok("c", *ABC), temperature=0) == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert one(tok("c", *ABC), temperature=0, top_p=0.95, min_p=0.01) == {"a": 1.0, "b": 0.0, "c": 0.0}


@pytest.mark.parametrize(("top_p", "kept"), [(0.01, 1), (0.4, 1), (0.65, 2), (0.7, 2), (0.71, 3), (0.9, 3), (0.91, 4)])
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p: float, kept: int) -> None:
    probs = (("a", 0.4), ("b", 0.3), ("c", 0.2), ("d", 0.1))
    step = one(tok("a", *probs), top_p=top_p)
    survivors = [text for text, p in step.items() if p > 0]
    assert survivors == ["a", "b", "c", "d"][:kept]
    total = sum(p for _, p in probs[:kept])
    assert [step[t] for t in survivors] == pytest.approx([p / total for _, p in probs[:kept]])


def test_top_p_counts_the_models_own_shares_when_the_tail_is_unknown() -> None:
    # the list covers 70% of the vocabulary: 0.4 + 0.2 reaches 0.5 (renormalised, 0.4 / 0.7 alone would)
    token = tok("a", ("a", 0.4), ("b", 0.2), ("c", 0.1))
    assert [p > 0 for p in one(token, top_p=0.5).values()] == [True, True, False]
    assert all(p > 0 for p in one(token, top_p=0.9).values())  # the cut lies in the tail: all listed survive
    # after a top-k inside the list the candidates are known and renormalised among themselves (llama.cpp)
    assert [p > 0 for p in one(token, top_k=2, top_p=0.6).values()] == [True, False, False]


@pytest.mark.parametrize(("min_p", "kept"), [(0.05, 4), (0.2, 3), (0.3, 3), (0.31, 2), (0.61, 1), (1.0, 1)])
def test_min_p_drops_tokens_below_min_p_times_the_max(min_p: float, kept: int) -> None:
    step = one(tok("a", ("a", 0.5), ("b", 0.3), ("c", 0.15), ("d", 0.05)), min_p=min_p)
    assert [t for t, p in step.items() if p > 0] == ["a", "b", "c", "d"][:kept]


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0, 1.5, 2.0])
def test_temperature_reshapes_the_survivors_as_exp_logprob_over_t(temperature: float) -> None:
    token = tok("a", ("a", 0.5), ("b", 0.3), ("c", 0.15), ("d", 0.05))
    step = one(token, temperature=temperature, top_k=3)
    weights = [math.exp(alt.logprob / temperature) for alt in token.top[:3]]
    assert list(step.values()) == pytest.approx([w / sum(weights) for w in weights] + [0.0])


def test_filters_run_before_temperature_unlike_transformers() -> None:
    token = tok("a", *ABC)
    # llama.cpp: top-p 0.8 at temperature 1 keeps a, b (0.5 + 0.3); temperature 2 then flattens the two
    ours = one(token, temperature=2, top_p=0.8)
    assert ours["c"] == 0.0
    assert ours["a"] == pytest.approx(math.sqrt(0.5) / (math.sqrt(0.5) + math.sqrt(0.3)))
    # temperature first (Hugging Face) would have kept c: flattened by temperature 2 (0.416, 0.322, 0.263),
    # a and b hold less than 0.8
    flat = one(token, temperature=2)
    assert flat["a"] + flat["b"] < 0.8
    # min-p too: relative to the max at temperature 1 (0.2 < 0.5 * 0.5), not after flattening, where c would pass
    assert one(token, temperature=3, min_p=0.5)["c"] == 0.0
    flatter = one(token, temperature=3)
    assert flatter["c"] > 0.5 * flatter["a"]


def test_equal_texts_are_merged_by_summing() -> None:
    token = tok("a", ("a", 0.3), ("b", 0.4), ("a", 0.2), prob=0.3)
    assert one(token) == pytest.approx({"a": 5 / 9, "b": 4 / 9})
    assert one(token, top_k=1) == {"a": 1.0, "b": 0.0}  # 0.5 together beats 0.4
    (first, second) = step_distribution(token.top)
    assert (first.text, second.text) == ("a", "b") and first.prob == pytest.approx(0.5)


def test_a_step_without_alternatives_offers_the_picked_token() -> None:
    assert resample([Token("x", math.log(0.4))], temperature=0.5, top_p=0.1) == [{"x": 1.0}]


def test_off_values_match_none() -> None:
    token = tok("b", *ABC)
    assert one(token, top_k=0, top_p=1.0, min_p=0.0, temperature=1.0) == one(token)


@pytest.mark.parametrize("bad", [{"temperature": -0.1}, {"top_k": -1}, {"top_k": 2.5}, {"top_p": 1.5}, {"min_p": -0.2}, {"temperature": math.nan}])
def test_bad_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        resample([tok("a", *ABC)], **bad)


def test_step_distribution_says_which_sampler_cut_each_token() -> None:
    top = alts(("a", 0.4), ("b", 0.25), ("c", 0.15), ("d", 0.1), ("e", 0.1))
    cut = [(c.text, c.cut_by, c.survived) for c in step_distribution(top, top_k=4, top_p=0.85, min_p=0.5)]
    assert cut == [("a", None, True), ("b", None, True), ("c", "min_p", False), ("d", "top_p", False), ("e", "top_k", False)]
    greedy = step_distribution(top, temperature=0)
    assert [c.cut_by for c in greedy] == [None, "greedy", "greedy", "greedy", "greedy"]
    assert [c.raw for c in greedy] == pytest.approx([0.4, 0.25, 0.15, 0.1, 0.1])


def test_broken_logprobs_do_not_crash() -> None:
    top = (Alternative("a", -math.inf), Alternative("b", math.nan), Alternative("c", 0.5))
    step = one(Token("a", -math.inf, top))
    assert sum(step.values()) == pytest.approx(1.0) and step["c"] == pytest.approx(1.0)
    nothing = one(Token("a", -math.inf, (Alternative("a", -math.inf), Alternative("b", -math.inf))))
    assert nothing == pytest.approx({"a": 0.5, "b": 0.5})


# --- resample: a property over random distributions -------------------------------------------------------


def reference(top: Sequence[Alternative], s: Samplers) -> dict[str, float]:
    """A plain transcription of llama.cpp's chain over the listed alternatives, in probabilities."""
    merged: dict[str, float] = {}
    for alt in top:
        merged[alt.text] = merged.get(alt.text, 0.0) + math.exp(alt.logprob)
    order = sorted(merged, key=lambda t: -merged[t])
    alive = order[: s.top_k] if s.top_k else order
    if s.top_p is not None:
        total = sum(merged[t] for t in alive) if s.top_k and s.top_k <= len(order) else max(1.0, sum(merged.values()))
        running, kept = 0.0, []
        for t in alive:
            kept.append(t)
            running += merged[t] / total
            if running >= s.top_p - 1e-9:
                break
        alive = kept
    if s.min_p is not None:
        alive = [t for t in alive if merged[t] >= s.min_p * merged[alive[0]] * (1 - 1e-9)]
    if s.temperature == 0:
        alive = alive[:1]
    t_ = s.temperature or 1.0
    weights = {t: (merged[t] / merged[alive[0]]) ** (1 / t_) for t in alive}
    return {t: weights.get(t, 0.0) / sum(weights.values()) for t in order}


@st.composite
def distributions(draw: st.DrawFn) -> tuple[Alternative, ...]:
    weights = draw(st.lists(st.floats(0.001, 1.0), min_size=1, max_size=20))
    texts = draw(st.lists(st.sampled_from("abcdefghijklmnopqrstuvwxyz"[:12]), min_size=len(weights), max_size=len(weights)))
    mass = draw(st.floats(0.2, 1.0))  # how much of the vocabulary the list covers
    return tuple(Alternative(t, math.log(w / sum(weights) * mass)) for t, w in zip(texts, weights, strict=True))


settings_strategy = st.builds(
    Samplers,
    temperature=st.none() | st.just(0.0) | st.floats(0.05, 2.0),
    top_k=st.none() | st.integers(0, 25),
    top_p=st.none() | st.floats(0.01, 1.0),
    min_p=st.none() | st.floats(0.0, 1.0),
)


@given(distributions(), settings_strategy)
def test_resample_matches_the_chain_on_random_distributions(top: tuple[Alternative, ...], s: Samplers) -> None:
    token = Token(top[0].text, top[0].logprob, top)
    step = one(token, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p)
    assert sum(step.values()) == pytest.approx(1.0)
    assert set(step) == {alt.text for alt in top}
    values = list(step.values())  # most likely first: no sampler reorders, so probabilities never rise
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(values))
    assert values[0] > 0  # the most likely token survives every filter
    assert step == pytest.approx(reference(top, s), abs=1e-9)


# --- entropy, surprisal, forks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "bits"),
    [((("a", 1.0),), 0.0), ((("a", 0.5), ("b", 0.5)), 1.0), ((("a", 0.5), ("b", 0.25), ("c", 0.25)), 1.5),
     (tuple((c, 0.25) for c in "abcd"), 2.0), ((("a", 0.25), ("b", 0.25)), 1.0)],  # the last: renormalised
)
def test_entropy_in_bits(pairs: tuple[tuple[str, float], ...], bits: float) -> None:
    assert entropy(tok("a", *pairs)) == pytest.approx(bits)


@pytest.mark.parametrize(("prob", "bits"), [(1.0, 0.0), (0.5, 1.0), (0.25, 2.0), (1 / 1024, 10.0)])
def test_surprisal_in_bits(prob: float, bits: float) -> None:
    assert surprisal(Token("x", math.log(prob))) == pytest.approx(bits)


def test_forks_are_unlikely_picks_and_flat_steps() -> None:
    tokens = [
        tok("a", ("a", 0.95), ("b", 0.05)),  # sure and picked: no fork
        tok("b", ("a", 0.6), ("b", 0.4)),  # not the most likely
        tok("a", *((c, 0.12) for c in "abcdefgh")),  # flat: 3 bits, above FLAT_BITS
        tok("z", ("a", 0.9), ("b", 0.05), prob=0.01),  # picked outside the list
        tok("b", ("a", 0.5), ("b", 0.5)),  # a tie for first is not a fork
    ]
    assert FLAT_BITS == 2.0
    assert forks(tokens) == [1, 2, 3]
    assert forks(tokens, flat_bits=5) == [1, 3]


# --- tokens_frame -----------------------------------------------------------------------------------------


def test_tokens_frame_columns_and_rank() -> None:
    import pandas as pd

    tokens = [tok("a", *ABC), tok("c", *ABC), tok("z", *ABC, prob=0.01)]
    frame = tokens_frame(tokens)
    assert list(frame.columns) == ["step", "token", "logprob", "prob", "rank", "entropy", "alternatives"]
    assert frame["step"].tolist() == [0, 1, 2] and frame["token"].tolist() == ["a", "c", "z"]
    assert frame["rank"].iloc[0] == 1 and frame["rank"].iloc[1] == 3 and pd.isna(frame["rank"].iloc[2])
    assert frame["prob"].tolist() == pytest.approx([0.5, 0.2, 0.01])
    assert frame["entropy"].iloc[0] == pytest.approx(entropy(tokens[0]))
    assert [t for t, _ in frame["alternatives"].iloc[0]] == ["a", "b", "c"]
    assert [p for _, p in frame["alternatives"].iloc[0]] == pytest.approx([0.5, 0.3, 0.2])


def test_tokens_frame_without_pandas_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="needs pandas"):
        tokens_frame([tok("a", *ABC)])


# --- shaded_html ------------------------------------------------------------------------------------------


class Parsed(HTMLParser):
    """Every tag and attribute, and the text and title of each token span."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.spans: list[tuple[str, str]] = []  # (title, text) of token spans
        self._span: dict[str, str | None] | None = None
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "span" and "title" in dict(attrs):
            self._span = dict(attrs)
            self.spans.append((dict(attrs)["title"] or "", ""))

    def handle_endtag(self, tag: str) -> None:
        self._span = None

    def handle_data(self, data: str) -> None:
        if self._span is not None:
            title, text = self.spans[-1]
            self.spans[-1] = (title, text + data)


def hostile_tokens() -> list[Token]:
    return [
        tok("The", ("The", 0.9), ("A", 0.1)),
        tok(" " + HOSTILE, (" " + HOSTILE, 0.4), ('" onmouseover="alert(2)', 0.35), ("'><script>x</script>", 0.25)),
        tok("\n", ("\n", 0.7), (" &amp;", 0.3)),
        tok("end", ("fin", 0.8), ("end", 0.2)),
    ]


def test_shaded_html_is_escaped_static_html() -> None:
    tokens = hostile_tokens()
    page = shaded_html(tokens, kind="raw")
    parsed = Parsed(page)
    assert {tag for tag, _ in parsed.tags} <= {"style", "div", "span", "i"}
    assert {name for _, attrs in parsed.tags for name in attrs} <= {"class", "style", "title"}
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "".join(text for _, text in parsed.spans) == "".join(t.text for t in tokens)  # every token, in order
    assert re.findall(r"\.(gm-[\w-]+)", page) and all(c.startswith("gm-lens") for c in re.findall(r"\.(gm-[\w-]+)", page))


def test_shaded_html_tooltips_list_alternatives_with_the_pick_marked() -> None:
    parsed = Parsed(shaded_html(hostile_tokens(), kind="server"))
    title = parsed.spans[1][0].replace("␣", " ")  # labels show spaces as ␣
    assert f"▶  {HOSTILE}  40.0%" in title  # the quotes and brackets came back intact: nothing broke out
    assert '   " onmouseover="alert(2)  35.0%' in title
    assert "   '><script>x</script>  25.0%" in title
    assert "▶ end  20.0%" in parsed.spans[3][0] and "  fin  80.0%" in parsed.spans[3][0]


def test_shaded_html_shades_labels_and_marks_forks() -> None:
    tokens = hostile_tokens()
    page = shaded_html(tokens, kind="raw")
    assert "probabilities from the model before any sampler (local llama.cpp)" in page
    assert "probabilities as the server reports them" in shaded_html(tokens, kind="server")
    assert "white-space:pre-wrap" in page
    spans = [attrs for tag, attrs in Parsed(page).tags if tag == "span" and "title" in attrs]
    classes = [attrs.get("class") or "" for attrs in spans]
    assert ["gm-lens-fork" in c for c in classes] == [False, False, False, True]  # only the last pick was not the top
    assert "gm-lens-s9" in classes[0] and "gm-lens-s2" in classes[3]  # 90% is pale, 20% is strong
    # the shade is inline too, for sanitisers that drop <style> blocks but keep style attributes
    assert spans[0]["style"] == "background-color:rgba(230,81,0,0.04)" and spans[3]["style"] == "background-color:rgba(230,81,0,0.60)"


def test_a_pick_outside_the_list_is_still_shown() -> None:
    title = Parsed(shaded_html([tok("zz", ("a", 0.9), ("b", 0.05), prob=0.002)], kind=None)).spans[0][0]
    assert "▶ zz  0.2% (not among the listed alternatives)" in title


# --- the widget -------------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the lens made a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def branches() -> list[tuple[int, str]]:
    return []


@pytest.fixture
def view(recorded_comms: list[Any], no_network: None, branches: list[tuple[int, str]]) -> Iterator[Any]:
    tokens = [tok("The", ("The", 0.9), ("A", 0.1)), tok(" rocks", (" stones", 0.5), (" rocks", 0.3), (" hills", 0.2)),
              tok(" are", (" are", 0.97), (" were", 0.03)), tok("x", (HOSTILE, 0.6), ("x", 0.4))]
    v = lens_view(tokens, "raw", on_branch=lambda step, text: branches.append((step, text)))
    yield v
    v.close()


def table_rows(table: str) -> list[list[str]]:
    """The table's rows as the cells' text: marker, token, model, [at the run,] now, what the filters did."""
    rows = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[1:]:
        cells = [html_text(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        rows.append(cells)
    return rows


def html_text(fragment: str) -> str:
    import html

    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def now_column(table: str) -> list[float]:
    """The "now" percentages of the listed alternatives (exact ones only)."""
    return [float(row[-2].rstrip("%")) for row in table_rows(table) if row[1] != "all other tokens"]


def test_the_view_is_a_vbox_starting_at_the_first_fork(view: Any) -> None:
    import ipywidgets

    assert isinstance(view, ipywidgets.VBox) and isinstance(view, lens_view_class())
    assert (view.temperature.value, view.top_k.value, view.top_p.value, view.min_p.value) == (1.0, 0, 1.0, 0.0)
    assert (view.temperature.min, view.temperature.max, view.temperature.step, view.top_k.max) == (0.0, 2.0, 0.05, 3)
    assert view.lens.selected == 1 and view.token.value == 2 and "␣stones" in view.table.value  # the second token
    assert "before any sampler" in view.header.value


def test_moving_temperature_changes_the_new_percentages_with_no_request(view: Any) -> None:
    before = now_column(view.table.value)
    assert before == pytest.approx([50.0, 30.0, 20.0])
    view.temperature.value = 0.5
    after = now_column(view.table.value)
    expected = resample(view.lens.tokens, temperature=0.5)[1]  # this step's list is the whole distribution
    assert after == pytest.approx([round(p * 100, 1) for p in expected.values()])
    assert after[0] > before[0]
    assert f"model 30.0% → now {expected[' rocks'] * 100:.1f}%" in html_text(view.table.value)  # the picked token's new probability


def test_filters_show_what_they_cut_and_strike_impossible_picks(view: Any) -> None:
    view.top_k.value = 1
    assert view.table.value.count("cut by top-k") == 2
    assert "gm-lens-x" in view.strip.value and "could not have been made" in view.summary.value
    view.top_k.value = 0
    view.top_p.value = 0.5
    assert "cut by top-p" in view.table.value
    view.top_p.value = 1.0
    view.temperature.value = 0.0
    assert "not the most likely (temperature 0)" in view.table.value


def test_selecting_a_token_shows_its_alternatives(view: Any) -> None:
    view.token.value = 3
    assert "␣were" in view.table.value and "token 3 of 4" in view.table.value
    assert [b.description for b in view.branch_buttons if b.layout.display != "none"] == ["␣are", "␣were"]
    assert view.branch_buttons[1].tooltip == "replace token 3 with ' were' and continue from there"
    view.token.value = 4
    assert HOSTILE not in view.table.value and HOSTILE not in view.strip.value
    assert "&lt;img␣src=x␣onerror=alert(1)&gt;" in view.table.value


def test_tokens_are_counted_from_one_wherever_a_person_reads_them(view: Any) -> None:
    assert (view.token.description, view.token.min, view.token.max) == ("token", 1, 4)
    titles = re.findall(r'title="([^"]*)"', view.strip.value)
    assert titles[0].startswith("token 1 · ") and titles[3].startswith("token 4 · ")
    assert "step" not in html_text(view.table.value) + " ".join(titles)
    tooltips = re.findall(r'title="([^"]*)"', shaded_html(view.lens.tokens, kind="raw"))
    assert tooltips[0].startswith("token 1 · ") and tooltips[-1].startswith("token 4 · ")


def test_clicking_an_alternative_branches(view: Any, branches: list[tuple[int, str]]) -> None:
    view.token.value = 2
    view.branch_buttons[2].click()
    view.token.value = 1
    view.branch_buttons[1].click()
    assert branches == [(1, " hills"), (0, "A")]  # the callback takes the index into tokens


def test_fork_buttons_walk_the_forks(view: Any) -> None:
    assert view.lens.forks == [1, 3]
    view.next_fork.click()
    assert view.token.value == 4
    view.next_fork.click()
    assert view.token.value == 4
    view.prev_fork.click()
    assert view.token.value == 2


def test_without_a_callback_branch_buttons_are_disabled(recorded_comms: list[Any]) -> None:
    v = lens_view([tok("a", *ABC)], "server")
    assert v.branch_buttons and all(b.disabled for b in v.branch_buttons)
    v.branch_buttons[0].click()  # nothing to call, nothing raised
    v.close()


def test_an_empty_reply_gives_a_quiet_view(recorded_comms: list[Any]) -> None:
    v = lens_view([], None)
    assert "no token probabilities" in v.table.value and v.branch_buttons == []
    v.close()


def test_the_lens_state_renders_without_widgets() -> None:
    lens = Lens([tok("a", *ABC), tok("b", *ABC)], "raw")
    lens.set_samplers(Samplers(top_k=1))
    assert lens.impossible() == [1] and lens.picked_now(0) == 1.0
    assert lens.entropy_svg().startswith("<svg") and "<script" not in lens.entropy_svg()


# --- the tokens that were not listed: their own row, and what can be proven about them ---------------------


DASH = "\u2013"  # between the bounds of a range: 83.8-85.3% with an en dash

# A step like notebook 05's first token: ten listed alternatives cover 43.8% of the probability.
WIDE = tok("Complete", ("Complete", 0.207), ("The", 0.095), ("complete", 0.045), ("(", 0.019), ("1", 0.017),
           ("I", 0.013), ("In", 0.013), ("You", 0.011), ("Which", 0.010), ("Select", 0.008))


def test_at_the_runs_settings_now_is_the_models_own(recorded_comms: list[Any]) -> None:
    v = lens_view([WIDE], "raw", run=Samplers())
    rows = table_rows(v.table.value)
    assert rows[0][:4] == ["▶", "Complete", "20.7%", "20.7%"]  # not renormalised over the listed ten (47.1%)
    assert all(row[2] == row[3].split()[0] for row in rows)  # every row: now equals model
    assert rows[-1][1:4] == ["all other tokens", "56.2%", "56.2%"]  # the unlisted probability keeps its own row
    assert "model 20.7% → now 20.7%" in html_text(v.table.value)
    assert "could not" not in v.summary.value and DASH not in html_text(v.table.value)  # nothing uncertain, nothing cut
    v.close()


def test_a_temperature_change_shows_what_can_be_proven(recorded_comms: list[Any]) -> None:
    v = lens_view([WIDE], "raw", run=Samplers())
    v.temperature.value = 0.4
    rows = {row[1]: row for row in table_rows(v.table.value)}
    low, high = (float(x) for x in rows["Complete"][3].split()[0].rstrip("%").split(DASH))
    # the 56.2% not listed is made of tokens of at most 0.8% each (the least likely listed one): at 0.4 they keep
    # between nothing (spread thin over the vocabulary) and 1.7% (in 0.8% pieces), so "Complete" lies in between
    spread_thin = resample([WIDE], temperature=0.4)[0]["Complete"] * 100  # as if the unlisted held nothing
    assert (low, high) == (83.8, pytest.approx(spread_thin, abs=0.05))
    assert rows["all other tokens"][2:4] == ["56.2%", f"0.0{DASH}1.7%"] and "holds however it is spread" in v.table.value
    v.temperature.value = 1.0
    assert [row[2] == row[3].split()[0] for row in table_rows(v.table.value)] == [True] * 11
    v.close()


def test_the_sliders_start_at_the_runs_settings(recorded_comms: list[Any]) -> None:
    run = Samplers(temperature=0.2, top_k=40, top_p=0.95, min_p=0.05)  # llama-cpp-python's chat defaults
    v = lens_view([WIDE], "raw", run=run, run_label="temperature 0.2, top-k 40, top-p 0.95, min-p 0.05 (not sent: the backend's defaults)")
    assert (v.temperature.value, v.top_k.value, v.top_p.value, v.min_p.value) == (0.2, 40, 0.95, 0.05)
    assert v.top_k.max >= 40 and "the sliders start at the run&#x27;s settings: temperature 0.2" in v.header.value
    assert "at the run" in re.findall(r"<tr[^>]*>(.*?)</tr>", v.table.value, re.S)[0]
    assert all(row[3] == row[4].split()[0] for row in table_rows(v.table.value))  # untouched: the run is now
    v.temperature.value, v.top_k.value = 1.0, 0
    assert any(row[3] != row[4].split()[0] for row in table_rows(v.table.value))
    v.reset.click()
    assert (v.temperature.value, v.top_k.value, v.top_p.value, v.min_p.value) == (0.2, 40, 0.95, 0.05)
    assert all(row[3] == row[4].split()[0] for row in table_rows(v.table.value))
    v.close()


def test_run_settings_say_what_was_sent_and_what_was_a_default() -> None:
    from granite_magic._lens import run_settings

    documented = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}  # as the magic reads them from the table
    samplers, label = run_settings({"temperature": 0.8, "seed": 3}, documented)
    assert samplers == Samplers(temperature=0.8)
    assert label == "temperature 0.8 (sent); top-k off, top-p 1, min-p 0 (not sent: the API's documented defaults)"
    samplers, label = run_settings({"top_k": 5}, {"temperature": 0.2, "top_p": 0.95, "top_k": 40, "min_p": 0.05}, stated=True)
    assert samplers == Samplers(temperature=0.2, top_k=5, top_p=0.95, min_p=0.05)
    assert label == "top-k 5 (sent); temperature 0.2, top-p 0.95, min-p 0.05 (not sent: the backend's defaults)"


def test_picks_outside_the_list_are_not_called_impossible(recorded_comms: list[Any]) -> None:
    # the second pick was not among the three listed: at default settings it was as possible as the model said
    tokens = [tok("a", *ABC), tok("z", ("x", 0.5), ("y", 0.2), ("w", 0.1), prob=0.05), tok("a", *ABC)]
    v = lens_view(tokens, "server", run=Samplers())
    assert "gm-lens-x" not in v.strip.value and "could not have been made" not in v.summary.value
    assert "1 of the picks is not among the 3 listed alternatives" in v.summary.value
    assert "token 2 · model 5.0% → now 5.0% · not among the 3 listed" in v.strip.value
    v.token.value = 2
    rows = table_rows(v.table.value)
    assert rows[3][:5] == ["▶", "z", "5.0%", "5.0%", "not among the 3 listed · kept"]
    assert rows[4][1:4] == ["all other tokens", "15.0%", "15.0%"]
    v.top_k.value = 2  # top-k inside the list: the pick is certainly cut
    assert "gm-lens-x" in v.strip.value and "1 of the picks could not have been made" in v.summary.value
    v.top_k.value = 0
    v.top_p.value = 0.9  # the cut lies among the tokens not listed: the pick may or may not survive
    assert "gm-lens-m" in v.strip.value and "1 might not have been (dotted" in v.summary.value
    assert "may be cut by top-p (the tokens not listed decide)" in v.table.value
    v.close()


def test_a_pick_appended_past_the_k_asked_for_is_shown_as_not_listed() -> None:
    # a server that sent 20 alternatives for --probs 2 has the pick's own kept after the first two
    token = tok("c", ("a", 0.5), ("b", 0.3), ("c", 0.01))
    lens = Lens([token], "server", listed=2)
    assert lens.unlisted() == [0] and lens.steps[0].texts == ("a", "b")
    lens.set_samplers(Samplers(top_k=3))  # one place after the list, but the rest may hold a likelier token
    assert lens.uncertain() == [0] and lens.impossible() == []


@st.composite
def vocabularies(draw: st.DrawFn) -> tuple[list[float], int, int]:
    """A whole vocabulary's probabilities (most likely first), how many are listed, and which was picked."""
    weights = draw(st.lists(st.floats(0.001, 1.0), min_size=2, max_size=30, unique=True))
    power = draw(st.sampled_from([1.0, 3.0, 8.0]))  # from flat to peaked
    weights = sorted((w**power for w in weights), reverse=True)
    total = sum(weights)
    listed = draw(st.integers(1, min(8, len(weights))))
    return [w / total for w in weights], listed, draw(st.integers(0, len(weights) - 1))


def whole_chain(probs: list[float], s: Samplers) -> list[float]:
    """llama.cpp's chain over a whole (small) vocabulary, everything known."""
    alive = list(range(len(probs)))[: s.top_k] if s.top_k else list(range(len(probs)))
    if s.top_p is not None:
        total, running, kept = sum(probs[i] for i in alive), 0.0, []
        for i in alive:
            if running / total >= s.top_p - 1e-9:
                break
            kept.append(i)
            running += probs[i]
        alive = kept
    if s.min_p is not None:
        alive = [i for i in alive if math.log(probs[i]) >= math.log(probs[alive[0]]) + math.log(s.min_p) - 1e-9]
    alive = alive[:1] if s.temperature == 0 else alive
    weights = {i: math.exp((math.log(probs[i]) - math.log(probs[alive[0]])) / (s.temperature or 1.0)) for i in alive}
    return [weights.get(i, 0.0) / sum(weights.values()) for i in range(len(probs))]


@given(vocabularies(), settings_strategy)
def test_the_bounds_hold_however_the_unlisted_tokens_are_spread(vocabulary: tuple[list[float], int, int], s: Samplers) -> None:
    """The lens sees the top K of a whole vocabulary and the pick; the truth, computed over all of it, lies within
    every row's bounds, a cut row is never picked, and a kept one always can be."""
    probs, listed, picked = vocabulary
    texts = [f"t{i}" for i in range(len(probs))]
    token = Token(texts[picked], math.log(probs[picked]), tuple(Alternative(texts[i], math.log(probs[i])) for i in range(listed)))
    truth = whole_chain(probs, s)
    rows = step_rows(token, s, listed=listed)
    shown = {texts.index(row.text) for row in rows if row.text is not None}
    noise = 1e-6  # what 1 - listed - pick leaves by rounding (1e-16) can weigh its square root at temperature 2
    for row in rows:
        value = truth[texts.index(row.text)] if row.text is not None else sum(truth[i] for i in range(len(probs)) if i not in shown)
        assert row.now.lo - noise <= value <= row.now.hi + noise, (row, value)
        assert row.fate != "cut" or value == 0
        assert row.fate != "kept" or row.text is None or value > 0
    assert sum(row.now.lo for row in rows) <= 1 + noise <= sum(row.now.hi for row in rows) + 2 * noise
    neutral = step_rows(token, Samplers(), listed=listed)
    assert all(row.now.lo == row.now.hi == pytest.approx(row.model, abs=1e-12) for row in neutral)
