"""The local backend renders the chat template itself: the prompt shown and counted before sending, an assistant
prefix continued, documents placed, the context sized to the request, and a follow-up turn's prefix reused with
the same text.  Gemma 3 270M (GGUF, from PyPI) stands in for Granite; CI sets GRANITE_REQUIRE_LOCAL=1 so that a
missing extra fails instead of skipping."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from granite_magic._errors import InvalidParameterError
from granite_magic._events import Accumulator
from granite_magic._local import LocalClient, PrefixReuse, local_available
from granite_magic._params import Sampling
from granite_magic._result import Result
from granite_magic._shapes import Request
from granite_magic._tools import tool_from_function

if not local_available():
    if os.environ.get("GRANITE_REQUIRE_LOCAL") == "1":
        raise RuntimeError("GRANITE_REQUIRE_LOCAL=1 but llama-cpp-python is not installed: pip install -e '.[dev,local]'")
    pytest.skip("the local extra is not installed (pip install -e '.[dev,local]')", allow_module_level=True)

pytestmark = pytest.mark.slow

Messages = list[dict[str, Any]]
QUESTION: Messages = [{"role": "user", "content": "Tell me about rivers in two sentences."}]
CONVERSATION: Messages = [
    {"role": "user", "content": "Name a river in France."},
    {"role": "assistant", "content": "The Loire is the longest river in France."},
    {"role": "user", "content": "Where does it reach the sea?"},
]
DOCUMENT = {"doc_id": "1", "title": "notes.md", "text": "The Rhine rises in the Swiss Alps and flows to the North Sea."}

# A Granite-like template written in Gemma's turn markers (the stand-in's GGUF has no template): it adds a
# default system prompt when none is given, and has places for tools and documents.
TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}
{%- else %}{% set system = 'You are a careful assistant. Today is ' + strftime_now('%Y') + '.' %}{% set turns = messages %}{% endif %}
<start_of_turn>user
{{ system }}
{%- for tool in tools or [] %}
<tool>{{ tool['function']['name'] }}</tool>
{%- endfor %}
{%- for doc in documents or [] %}
<doc id="{{ doc['doc_id'] }}">{{ doc['text'] }}</doc>
{%- endfor %}
{%- if documents %}
<documents_json>{{ documents | tojson }}</documents_json>
{%- endif %}
<end_of_turn>
{% for m in turns %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}
{{ m['content'] }}<end_of_turn>
{% endfor %}
{%- if add_generation_prompt %}<start_of_turn>model
{% endif %}"""



@pytest.fixture(scope="module")
def reference(model_path: str) -> Any:
    """llama-cpp-python on its own, as the local backend used it before rendering prompts itself."""
    from llama_cpp import Llama

    return Llama(model_path=model_path, n_ctx=2048, chat_format="gemma", verbose=False)


@pytest.fixture(scope="module")
def gemma(model_path: str) -> Any:
    """The stand-in through Gemma's chat-turn format, chosen by ``template=``: the stand-in is a base model, framed as
    plain text by default, and this is the chat template it would otherwise get."""
    client = LocalClient(model_path, template="gemma")
    yield client
    client.close()


def reply(client: LocalClient, messages: Sequence[Mapping[str, Any]], documents: Sequence[Mapping[str, str]] = (),
          **sampling: Any) -> Result:
    request = Request(client.model, tuple(messages), Sampling(sampling), documents=tuple(documents))
    return client.loop.run(client.stream(request, Accumulator(request.sampling)))


def preview(client: LocalClient, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> tuple[str, int]:
    return client.prompt_preview(Request(client.model, tuple(messages), **kwargs))


def notes(n: int) -> str:
    """Filler text of about ``n`` sentences (about 12 tokens each)."""
    return " ".join(f"Note {i}: the river passes mill {i % 7} before the bridge." for i in range(n))


def test_text_is_identical_to_create_chat_completion(gemma: LocalClient, reference: Any) -> None:
    local = gemma
    for messages in (QUESTION, CONVERSATION):
        for seed in (1, 2):
            ours = reply(local, messages, seed=seed, temperature=0.9, max_tokens=30)
            reference.reset()
            theirs = reference.create_chat_completion(messages=messages, seed=seed, temperature=0.9, max_tokens=30)
            assert ours.text == theirs["choices"][0]["message"]["content"]
            assert ours.usage.prompt_tokens == theirs["usage"]["prompt_tokens"]
    defaults = reply(local, QUESTION, seed=4, max_tokens=20).text  # llama-cpp-python's chat defaults (temperature 0.2) kept
    reference.reset()
    assert defaults == reference.create_chat_completion(messages=QUESTION, seed=4, max_tokens=20)["choices"][0]["message"]["content"]


def test_an_assistant_prefix_is_continued(gemma: LocalClient) -> None:
    local = gemma
    greedy = reply(local, QUESTION, temperature=0, max_tokens=24, top_logprobs=1)
    assert len(greedy.tokens) == 24
    prefix = "".join(t.text for t in greedy.tokens[:10])
    text, _ = preview(local, [*QUESTION, {"role": "assistant", "content": prefix}])
    assert text.endswith("<start_of_turn>model\n" + prefix)  # the turn is left open, not closed and a new one begun
    rest = reply(local, [*QUESTION, {"role": "assistant", "content": prefix}], temperature=0, max_tokens=14)
    assert prefix + rest.text == greedy.text  # the reply is only the continuation, and the same as before


def test_preview_is_the_text_read_and_its_count_is_the_usage(gemma: LocalClient, reference: Any) -> None:
    local = gemma
    messages = [{"role": "system", "content": "Answer in French."}, *CONVERSATION]
    text, count = preview(local, messages)
    assert text.startswith("<bos><start_of_turn>user\nAnswer in French.\n\nName a river")  # the format drops system: kept in turn 1
    assert len(reference.tokenize(text.encode(), add_bos=False, special=True)) == count
    assert reply(local, messages, seed=1, max_tokens=5).usage.prompt_tokens == count


def lookup(river: str) -> str:
    """Look a river up."""
    return river


def test_documents_reach_the_prompt_folded_or_through_the_template(model_path: str, local: LocalClient) -> None:
    folded, _ = preview(local, QUESTION, documents=(DOCUMENT,))
    assert '<document name="notes.md" kind="text">\nThe Rhine rises' in folded and folded.index("<documents>") < folded.index("Tell me")

    templated = LocalClient(model_path, chat_template=TEMPLATE)
    try:
        text, _ = preview(templated, QUESTION, documents=(DOCUMENT,), tools=(tool_from_function(lookup),))
        assert "You are a careful assistant. Today is" in text  # the template's own default system prompt is shown
        assert '<doc id="1">The Rhine rises' in text and "<tool>lookup</tool>" in text and "<documents>" not in text
        _, count = preview(templated, QUESTION, documents=(DOCUMENT,))
        assert reply(templated, QUESTION, documents=(DOCUMENT,), seed=1, max_tokens=6).usage.prompt_tokens == count
    finally:
        templated.close()


def test_every_document_reaches_the_template_verbatim(model_path: str) -> None:
    """llama-cpp-python before 0.3.20 dropped the template's extra arguments (documents), and up to 0.3.23 its
    ``tojson`` HTML-escaped them: each document's text, ``<``, ``&`` and quotes included, must be in the prompt."""
    documents = ({"doc_id": "1", "title": "a.md", "text": 'R&D notes: "granite" <b>hard</b> & old'},
                 {"doc_id": "2", "title": "b.md", "text": "Basalt cools fast; it's fine-grained."})
    templated = LocalClient(model_path, chat_template=TEMPLATE)
    try:
        system = [{"role": "system", "content": "Answer from <docs> & quote them."}, *QUESTION]
        text, _ = preview(templated, system, documents=documents)
    finally:
        templated.close()
    assert "Answer from <docs> & quote them." in text
    for document in documents:
        assert f'<doc id="{document["doc_id"]}">{document["text"]}</doc>' in text
    as_json = text[text.index("<documents_json>") + len("<documents_json>"):text.index("</documents_json>")]
    assert json.loads(as_json) == [dict(d) for d in documents]
    assert "\\u0026" not in as_json and "&amp;" not in as_json and "&#34;" not in as_json


def test_the_context_grows_for_a_long_prompt_and_refuses_past_the_trained_one(model_path: str) -> None:
    client = LocalClient(model_path)
    try:
        short = reply(client, QUESTION, seed=1, max_tokens=5)
        assert short.usage.completion_tokens == 5 and client.context_loaded == 2048
        assert client.models()[client.model].context_length == 32_768  # the model's trained context, once loaded

        long = [{"role": "user", "content": notes(200) + "\nWhich mill comes first?"}]
        _, count = preview(client, long)
        assert 2048 < count + 8 < 32_768
        result = reply(client, long, seed=1, max_tokens=8)
        assert result.usage.prompt_tokens == count and result.usage.completion_tokens == 8
        assert client.context_loaded == -(-(count + 8) // 512) * 512  # reloaded with the context the request needs
        assert reply(client, QUESTION, seed=1, max_tokens=5).text == short.text  # a small request: no reload, same text

        question = preview(client, QUESTION)[1]
        with pytest.raises(InvalidParameterError, match=rf"the prompt is {question} tokens and max_tokens=40,000: more than the model's 32,768-token context") as info:
            reply(client, QUESTION, seed=1, max_tokens=40_000)
        assert info.value.result is not None and info.value.result.text == "" and client.context_loaded < 32_768
    finally:
        client.close()


@pytest.mark.parametrize("reuse", ["auto", "state"])
def test_prefix_reuse_gives_the_same_text_as_reading_again(model_path: str, reuse: PrefixReuse) -> None:
    """``auto`` keeps the prefix in Gemma's KV cache; ``state`` saves and restores it, as a hybrid model (Granite 4.0 H) must."""
    again, reusing = LocalClient(model_path, prefix_reuse="off"), LocalClient(model_path, prefix_reuse=reuse)
    try:
        conversation: Messages = [{"role": "user", "content": f"My notes: {notes(45)}\nWhat passes mill 3?"}]
        previous = reply(reusing, conversation, seed=1, temperature=0.9, max_tokens=20)  # the turn before, as --chat runs it
        for turn in range(2):
            conversation += [{"role": "assistant", "content": previous.text}, {"role": "user", "content": f"And mill {turn + 4}?"}]
            for seed in (1, 2):
                fresh, kept = (reply(c, conversation, seed=seed, temperature=0.9, max_tokens=20) for c in (again, reusing))
                assert kept.text == fresh.text
                assert (kept.usage.prompt_tokens, kept.usage.completion_tokens) == (fresh.usage.prompt_tokens, fresh.usage.completion_tokens)
                assert not fresh.usage.cached_tokens and (kept.usage.cached_tokens or 0) >= 512  # the prefix was not read again
                previous = kept if seed == 1 else previous
    finally:
        again.close()
        reusing.close()


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The tokens llama.cpp has decoded (prompt read and reply generated), counted at its C API: ``[count]``."""
    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    count = [0]
    real = bindings.llama_decode

    def counting(ctx: Any, batch: Any) -> int:
        count[0] += int(batch.n_tokens)
        return int(real(ctx, batch))

    monkeypatch.setattr(bindings, "llama_decode", counting)  # as llama-cpp-python calls it
    monkeypatch.setattr(llama_cpp, "llama_decode", counting)  # as the package's own name
    return count


@pytest.mark.parametrize("reuse", ["auto", "state"])
def test_rows_sharing_an_instruction_read_only_their_own_tokens(model_path: str, reuse: PrefixReuse, decoded: list[int]) -> None:
    """``map``'s rows on the local model: an instruction shorter than llama.cpp's 512-token batch is read once, and a
    later row reads its own tokens and less than one 32-token read chunk of it again, with the text of a fresh read.
    ``state`` (a hybrid model's way) saves the state where the second row departs from the first: from the third on."""
    instruction = notes(32)  # about 480 tokens: every row's prompt is under 512
    questions = ["Which mill comes after mill 3?", "Which mill comes before the bridge?", "How many mills are there?"]
    again, reusing = LocalClient(model_path, prefix_reuse="off"), LocalClient(model_path, prefix_reuse=reuse)
    try:
        for row, question in enumerate(questions):
            messages = [{"role": "system", "content": instruction}, {"role": "user", "content": question}]
            read = []
            for client in (again, reusing):
                before = decoded[0]
                read.append((reply(client, messages, seed=row, temperature=0.9, max_tokens=12), decoded[0] - before))
            (fresh, fresh_read), (kept, kept_read) = read
            assert kept.text == fresh.text and kept.usage.prompt_tokens == fresh.usage.prompt_tokens
            assert fresh.usage.prompt_tokens and fresh.usage.prompt_tokens < 512
            reused = kept.usage.cached_tokens or 0
            assert fresh_read - kept_read == reused  # llama.cpp decoded every token of the prompt but those
            if row >= (1 if reuse == "auto" else 2):
                own = preview(again, [{"role": "user", "content": question}])[1]  # the row's prompt without the instruction
                assert fresh.usage.prompt_tokens - reused < own + 32, (row, reused)
    finally:
        again.close()
        reusing.close()


# --- a base model is framed as a base model; a template is used as it is ---------------------------------------


def test_a_gguf_without_a_template_is_framed_as_plain_text(local: LocalClient) -> None:
    """The stand-in's GGUF has no chat template: it is a base model, and reads questions and answers as text, not
    chat-turn markers it never saw.  The framing is named, keyed and shown exactly; the reply ends at the next turn."""
    messages = [{"role": "system", "content": "Answer in French."}, *CONVERSATION]
    text, _ = preview(local, messages)
    assert text == ("<bos>Answer in French.\n\nQuestion: Name a river in France.\nAnswer: The Loire is the longest river in "
                    "France.\n\nQuestion: Where does it reach the sea?\nAnswer:")
    assert local.framing == "plain" and local.label(local.model).endswith("local llama.cpp · plain framing (base model)")
    # By itself the framing follows from the GGUF, whose fingerprint the record/replay key holds (and remembers for a
    # replay without the file); chosen for a GGUF that has a template, it is keyed.
    assert "framing" not in local.describe(Request(local.model, tuple(messages)))
    chosen = LocalClient(local.reference, template="plain")
    assert chosen.describe(Request(chosen.model, tuple(messages)))["framing"] == "plain"
    chosen.close()
    result = reply(local, QUESTION, seed=1, temperature=0.7, max_tokens=200)
    assert result.provider == "llama.cpp (local, plain framing)" and result.usage.prompt_tokens == preview(local, QUESTION)[1]
    assert "Question:" not in result.text and "<start_of_turn>" not in result.text
    assert result.finish_reason == "stop" or len(result.text.split()) > 50  # cut where the next "Question:" began

    greedy = reply(local, QUESTION, temperature=0, max_tokens=16, top_logprobs=1)
    prefix = "".join(t.text for t in greedy.tokens[:6])
    assert preview(local, [*QUESTION, {"role": "assistant", "content": prefix}])[0].endswith("\nAnswer:" + prefix)
    branch = [*QUESTION, {"role": "assistant", "content": prefix}]
    rest = reply(local, branch, temperature=0, max_tokens=10)  # a lens branch continues the answer in the plain framing too
    assert rest.text and rest.usage.prompt_tokens == preview(local, branch)[1]


def test_a_gguf_template_renders_the_prompt_unchanged(model_path: str) -> None:
    """A template (Granite's GGUF has one; here a Granite-like one in Gemma's markers) is used as it is: no framing
    named or keyed, and the prompt text pinned."""
    templated = LocalClient(model_path, chat_template=TEMPLATE)
    try:
        messages = [{"role": "system", "content": "Answer in French."}, *CONVERSATION]
        text, count = preview(templated, messages)
        assert text == ("<bos><start_of_turn>user\nAnswer in French.<end_of_turn>\n<start_of_turn>user\nName a river in France."
                        "<end_of_turn>\n<start_of_turn>model\nThe Loire is the longest river in France.<end_of_turn>\n"
                        "<start_of_turn>user\nWhere does it reach the sea?<end_of_turn>\n<start_of_turn>model\n")
        assert count == 50 and templated.framing == "template"
        assert "framing" not in templated.describe(Request(templated.model, tuple(messages)))
        assert "plain" not in templated.label(templated.model)
    finally:
        templated.close()
