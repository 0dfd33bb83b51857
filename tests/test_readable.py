"""The rules of a readable reply (tests/readable.py), on the replies the issue quoted from the saved notebooks."""

from __future__ import annotations

import pytest

from .readable import begins_with, cell_prompt, foreign_letters, notebook_sources, problems, repeated_lines, scripts

ENGLISH = "# Quick start\n\nGranite is a hard rock. `%%granite` sends the cell to the model.\nrock = 'basalt'"

# Saved in demo_notebooks/01_quickstart.ipynb before it was re-executed with better framings (git show c5cb154^:...).
GRANITE_PROMPT = "Explain in two sentences why granite is hard."
GRANITE_REPLY = ("Explain in two sentences why granite is hard. mendatang\n"
                 "You can use the following information to answer the following questions.\n"
                 + "The granite is a metamorphic rock.\n" * 4 + "The granite is a")
BASALT_PROMPT = 'Describe {rock} in one sentence. (Braces that are not a variable stay: {"hardness": 6})'
BASALT_REPLY = ('Describe basalt in one sentence. (Braces that are not a variable stay: {"hardness": 6}) mendatang\n'
                "겪을\n"
                'Describe basalt in one sentence. (Braces that are not a variable stay: {"hardness": 6}) mendatang')
VOLCANO_SYSTEM = "You are a geology teacher for ten-year-olds."
VOLCANO_PROMPT = "Why do volcanoes erupt?"
VOLCANO_REPLY = ("You are a geologist for ten-year-olds.\n\nWhy do volcanoes erupt? урока\n"
                 "You are a geologist for ten-year-olds.\n\nWhy do volcanoes erupt? lesson\n"
                 "You are a geologist for ten-year-olds.\n\nWhy do volcanoes erupt? lesson\nYou are a")
FLUENT = ("Granite is hard because it is made of tightly interlocking crystals of quartz and feldspar, "
          "minerals that are themselves hard.\nIt cooled slowly deep underground, so its crystals grew large and "
          "left almost no weak spaces between them.")


def test_a_fluent_answer_has_no_problem() -> None:
    assert problems(FLUENT, GRANITE_PROMPT, ENGLISH) == []
    assert problems(FLUENT, GRANITE_PROMPT, ENGLISH, system="Answer in two sentences.") == []


def test_the_issue_replies_each_break_the_rules_it_quoted() -> None:
    assert problems(GRANITE_REPLY, GRANITE_PROMPT, ENGLISH) == [
        "begins by repeating its prompt: 'Explain in two sentences why granite is hard. mendatang\\nYou…'",
        "the line 'The granite is a metamorphic rock.' appears 4 times",
    ]
    assert problems(BASALT_REPLY, BASALT_PROMPT, ENGLISH) == [
        "begins by repeating its prompt: 'Describe basalt in one sentence. (Braces that are not a var…'",
        "letters of the Hangul script (겪을) that neither the prompt nor the notebook uses",
    ]
    assert problems(VOLCANO_REPLY, VOLCANO_PROMPT, ENGLISH, system=VOLCANO_SYSTEM) == [
        "letters of the Cyrillic script (урока) that neither the prompt nor the notebook uses",
        "the line 'You are a geologist for ten-year-olds.' appears 3 times",
    ]


@pytest.mark.parametrize(("reply", "prompt"), [
    ("Explain in two sentences why granite is hard. mendatang", GRANITE_PROMPT),
    ("  explain   in two SENTENCES why granite is hard.", GRANITE_PROMPT),  # whitespace and case do not hide it
    ("Explain in two sentences why granite is hard\nBecause...", GRANITE_PROMPT),  # nor a dropped full stop
    ("Describe basalt in one sentence. (Braces", BASALT_PROMPT),  # {rock} stands for whatever was sent
    ("Write the opening sentence of a story about a mountain that", "Write the opening sentence of a story about a "
     "mountain that has stood for a billion years."),  # a long line: its first ~40 characters
    ("Why do volcanoes erupt? Because", "Why do volcanoes erupt?\n\nAnswer for a child."),  # its first line
])
def test_an_echo_is_the_prompt_s_first_line_at_the_start(reply: str, prompt: str) -> None:
    assert begins_with(reply, prompt)


@pytest.mark.parametrize(("reply", "prompt"), [
    (FLUENT, GRANITE_PROMPT),
    ("Granite is hard. Explain in two sentences why granite is hard.", GRANITE_PROMPT),  # only the start counts
    ("Explain in two sentences why granites are hard", GRANITE_PROMPT),  # a word boundary, not a prefix of a word
    ("And basalt is a volcanic rock.", "And basalt?"),  # two words: an answer may take them up
    ("Hello! How can I help?", "Hello"),
    ("Quartz and feldspar.", "{question}"),  # nothing but a placeholder: nothing to compare
])
def test_a_reply_that_only_shares_words_is_no_echo(reply: str, prompt: str) -> None:
    assert not begins_with(reply, prompt)


def test_a_system_prompt_repeated_is_named_as_such() -> None:
    reply = "You are a geology teacher for ten-year-olds. Volcanoes erupt when..."
    assert problems(reply, VOLCANO_PROMPT, ENGLISH, system=VOLCANO_SYSTEM) == [
        "begins by repeating its system prompt: 'You are a geology teacher for ten-year-olds. Volcanoes erup…'"]


def test_scripts_are_named_by_unicode() -> None:
    assert scripts("Granite 겪을 урока ครับ 花崗岩 ひらがな カタカナ عربى עברית हिन्दी αβγ") == {
        "LATIN", "HANGUL", "CYRILLIC", "THAI", "CJK", "HIRAGANA", "KATAKANA", "ARABIC", "HEBREW", "DEVANAGARI", "GREEK"}
    # full- and half-width forms are their script's
    assert scripts("\N{FULLWIDTH LATIN CAPITAL LETTER A}\N{FULLWIDTH LATIN SMALL LETTER B} ｶﾀｶﾅ") == {"LATIN", "KATAKANA"}
    assert scripts("5 µm, 1ª, it\N{RIGHT SINGLE QUOTATION MARK}s, don\N{MODIFIER LETTER APOSTROPHE}t, \N{SCRIPT CAPITAL H}, "
                   "3 \N{KELVIN SIGN}, 12 °C — “quoted” · 1 + 2 = 3") == {"LATIN"}  # symbols, not scripts


def test_a_foreign_script_is_shown_by_its_words() -> None:
    assert foreign_letters("Granite 겪을 and 花崗岩, then 겪을 again, урока", {"LATIN"}) == {
        "HANGUL": ["겪을"], "CJK": ["花崗岩"], "CYRILLIC": ["урока"]}
    assert foreign_letters("ภาษาไทย", {"LATIN"}) == {"THAI": ["ภาษาไทย"]}  # vowel marks stay in the word
    (problem,) = problems("Thai: ครับ ค่ะ นะ สวัสดี", "Say hello in a friendly way.", ENGLISH)
    assert problem == "letters of the Thai script (ครับ, ค่ะ, นะ, …) that neither the prompt nor the notebook uses"


def test_a_script_the_notebook_or_the_prompt_uses_is_allowed() -> None:
    assert problems("Granite is 花崗岩 in Japanese.", "How do you write granite in Japanese?", ENGLISH + "\n花崗岩 (kakōgan)") == []
    assert problems("Гранит is granite.", "Translate: гранит", ENGLISH) == []
    assert problems("Гранит is granite.", "Translate it.", ENGLISH) != []
    assert problems("Гранит.", "Translate it.", ENGLISH, system="Answer in Russian (по-русски).") == []
    assert problems("Granite is 花崗岩.", "What is granite in Japanese?", "") != []  # the prompt alone allows Latin only


@pytest.mark.parametrize("reply", [
    "The granite is a metamorphic rock.\nThe granite is a metamorphic rock.\nThe granite is a metamorphic rock.",
    " I love granite,\nI love it,\nI love it,\nI love it.\n",  # trailing punctuation aside, the same line
    "  the GRANITE is a metamorphic rock\nThe granite  is a metamorphic rock.\nThe granite is a metamorphic rock!",
    "Shale\nGranite\nShale\n\nShale",  # not necessarily in a row
])
def test_a_line_three_times_is_a_loop(reply: str) -> None:
    assert len(repeated_lines(reply)) == 1


@pytest.mark.parametrize("reply", [
    "The granite is a metamorphic rock.\nThe granite is a metamorphic rock.\nIt is hard.",  # twice is not a loop
    "1. Shale\n2. Shale\n3. Shale",  # numbered items are different lines
    "```python\nx = 1\n```\n\n```python\ny = 2\n```\n\n```\nz\n```",  # fences are markup
    "| rock | hardness |\n|---|---|\n| granite | 6 |\n|---|---|\n|---|---|\n---\n---\n---\n}\n}\n}",
    "\n\n\n\n\nGranite.\n\n\n\n",
])
def test_markup_twice_or_different_lines_are_no_loop(reply: str) -> None:
    assert repeated_lines(reply) == []


def test_a_repeated_line_is_quoted_as_first_written_and_counted() -> None:
    assert repeated_lines("I love it,\nI love it,\nI LOVE IT.\nI love it") == [("I love it,", 4)]
    long = "Granite is an igneous rock made of quartz, feldspar and mica that cooled slowly underground."
    (problem,) = problems("\n".join([long] * 3), "Describe granite.", ENGLISH)
    assert problem == "the line 'Granite is an igneous rock made of quartz, feldspar and mic…' appears 3 times"


def test_a_cell_s_prompt_and_system_prompt() -> None:
    assert cell_prompt("%%granite --seed 1 --max-tokens 60\nExplain in two sentences why granite is hard.\n") == (
        "Explain in two sentences why granite is hard.", None)
    assert cell_prompt('%%granite -s "You are a geology teacher." --seed 7\nWhy do volcanoes erupt?') == (
        "Why do volcanoes erupt?", "You are a geology teacher.")
    assert cell_prompt("%%granite --system='Be brief.' --chat geo\n\nAnd basalt?\n\n") == ("And basalt?", "Be brief.")
    assert cell_prompt('%%granite -s "unbalanced\nHello') == ("Hello", None)


def test_a_notebook_s_sources_are_its_cells_not_their_outputs() -> None:
    notebook = {"cells": [
        {"cell_type": "markdown", "source": ["# Гранит\n", "text"]},
        {"cell_type": "code", "source": "%%granite\nHello", "outputs": [{"output_type": "stream", "text": "겪을"}]},
    ]}
    assert scripts(notebook_sources(notebook)) == {"LATIN", "CYRILLIC"}
