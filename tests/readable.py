"""Whether a saved reply reads as text: the quality bar for the replies the demo notebooks show.

Three rules, each a pure function of strings (no notebook, no model, no I/O), so that the test over the saved
notebooks and the browser test judge a reply the same way:

* **echo**: the reply begins by repeating its prompt (or its system prompt), as a base model that continues the
  text it was given does.  Compared: the start of the reply and the first non-blank line of the prompt, both with
  whitespace collapsed and case folded, the line cut to its first ~40 characters at a word boundary, its final
  punctuation optional ("Why do volcanoes erupt" echoes "Why do volcanoes erupt?").  ``{name}`` in the prompt, the
  magic's interpolation left unexpanded, matches any text ("Describe basalt in one sentence." echoes "Describe
  {rock} in one sentence.").  A prompt line of fewer than three words (placeholders aside) is not judged: "Hello"
  or "And basalt?" is naturally taken up by an answer's first words.
* **script**: the reply has letters of a writing system (Hangul, Cyrillic, Thai, CJK, ...) that neither the prompt
  nor the notebook's own text uses: the stray "겪을" or "урока" of a small model in an English notebook.  A
  letter's script is the first word of its Unicode name (``unicodedata``), so a new script needs no table here;
  letters whose name names no script (µ MICRO SIGN, ª, the MODIFIER LETTER APOSTROPHE, mathematical alphanumerics,
  letterlike symbols such as SCRIPT CAPITAL H and the KELVIN SIGN) are symbols in practice and never judged.  Marks, digits and punctuation are not
  letters and never judged.
* **repetition**: the same line three times or more, the loop a small model falls into.  Lines are compared with
  whitespace collapsed, case folded and trailing punctuation dropped ("I love it," and "I love it." are the same
  line); a line with no letter at all (blank, a code fence, a ``---`` rule, a table's ``|---|`` row, a lone ``}``)
  is markup, not text, and never counts.  List numbers are kept: "5. Shale" and "6. Shale" are different lines.
  Repetition within one line (a sentence said three times without a line break) is not this rule's business.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ECHO_CHARS", "REPEATS", "begins_with", "cell_prompt", "foreign_letters", "notebook_sources", "problems",
           "repeated_lines", "scripts"]

ECHO_CHARS = 40  # of the prompt's first line compared with the start of the reply
ECHO_MIN_WORDS = 3  # a shorter first line is not judged
REPEATS = 3  # a line this many times is a loop
SHOWN = 60  # characters of a quoted line in a problem

# First words of Unicode names of letters that belong to no script: letterlike symbols and modifier letters.
_NOT_A_SCRIPT = frozenset({
    "MATHEMATICAL", "MODIFIER", "DOUBLE-STRUCK", "SCRIPT", "BLACK-LETTER", "PLANCK", "TURNED", "FEMININE", "MASCULINE",
    "MICRO", "CARON", "EULER", "OHM", "KELVIN", "ANGSTROM", "ALEF", "BET", "GIMEL", "DALET", "INFORMATION", "ROMAN",
    "VERTICAL", "MASU",
})
_WIDTH = ("FULLWIDTH ", "HALFWIDTH ", "SUPERSCRIPT ", "SUBSCRIPT ")  # a form of a letter, not a script of its own
_ALIASES = {"IDEOGRAPHIC": "CJK", "KATAKANA-HIRAGANA": "KATAKANA", "": "TANGUT"}  # Python names no Tangut ideograph
_PLACEHOLDER = re.compile(r"\{\{?[A-Za-z_]\w*\}?\}")  # the magic's {name} (and {{name}}, a literal {name})
_FINAL_PUNCTUATION = ".,;:!?…"


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


# --- echo -------------------------------------------------------------------------------------------


def _head(prompt: str) -> str:
    """The prompt's first non-blank line, normalised, cut at a word boundary to about ``ECHO_CHARS`` characters."""
    line = next((line for line in prompt.splitlines() if line.strip()), "")
    words: list[str] = []
    for word in _normal(line).split():
        if words and len(" ".join([*words, word])) > ECHO_CHARS:
            break
        words.append(word)
    return " ".join(words)


def begins_with(reply: str, prompt: str) -> bool:
    """The reply begins by repeating the first line of ``prompt`` (see the module's docstring for how)."""
    head = _head(prompt).rstrip(_FINAL_PUNCTUATION + " ")
    if sum(not _PLACEHOLDER.fullmatch(word.strip(_FINAL_PUNCTUATION)) for word in head.split()) < ECHO_MIN_WORDS:
        return False  # too short to tell an echo from an answer that takes up its words
    pieces = _PLACEHOLDER.split(head)
    pattern = ".+?".join(re.escape(piece) for piece in pieces)
    return re.match(pattern + r"(?!\w)", _normal(reply)) is not None


# --- script -----------------------------------------------------------------------------------------


def _script(letter: str) -> str | None:
    name = unicodedata.name(letter, "")
    for prefix in _WIDTH:
        name = name.removeprefix(prefix)
    first = name.split(" ", 1)[0]
    if first in _NOT_A_SCRIPT:
        return None
    return _ALIASES.get(first, first)


def scripts(text: str) -> set[str]:
    """The scripts of the letters in ``text``, by the first word of each letter's Unicode name ("LATIN", "HANGUL")."""
    return {script for ch in set(text) if ch.isalpha() for script in (_script(ch),) if script is not None}


def foreign_letters(reply: str, allowed: Iterable[str]) -> dict[str, list[str]]:
    """``{script: words}`` for each script in ``reply`` that is not in ``allowed``: the runs of its letters (with the
    marks that go on them, as Thai and Devanagari vowels do), each once, in order."""
    allowed = set(allowed)
    found: dict[str, list[str]] = {}
    run, run_script = "", None
    for ch in reply + " ":  # the space ends the last run
        script = _script(ch) if ch.isalpha() else None
        if script is not None and script in allowed:
            script = None
        if run_script is not None and (script == run_script or (script is None and unicodedata.category(ch).startswith("M"))):
            run += ch
            continue
        if run_script is not None and run not in found.setdefault(run_script, []):
            found[run_script].append(run)
        run, run_script = ch if script is not None else "", script
    return found


def _script_label(script: str) -> str:
    return script if script in ("CJK", "NKO") else script.title()


# --- repetition -------------------------------------------------------------------------------------


def repeated_lines(reply: str, times: int = REPEATS) -> list[tuple[str, int]]:
    """(line as first written, count) for each line the reply has at least ``times`` times, in order of first use."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for line in reply.splitlines():
        key = _normal(line).rstrip(_FINAL_PUNCTUATION + " ")
        if not any(ch.isalpha() for ch in key):
            continue  # blank, or markup: a fence, a rule, a table's separator row, a brace
        counts[key] += 1
        first.setdefault(key, line.strip())
    return [(first[key], n) for key, n in counts.items() if n >= times]


# --- all three --------------------------------------------------------------------------------------


def _quote(text: str) -> str:
    return repr(text if len(text) <= SHOWN else text[: SHOWN - 1] + "…")


def problems(reply: str, prompt: str, allowed_text: str = "", *, system: str | None = None) -> list[str]:
    """What makes ``reply`` hard to read, one sentence each; [] for a readable reply.

    ``prompt`` is what the reply answers (its ``{name}`` placeholders may be left unexpanded), ``system`` the system
    prompt if any, and ``allowed_text`` the rest of what the reader has in front of them (a notebook's own Markdown
    and code, not its outputs): a script used there or in the prompts is not foreign.
    """
    found: list[str] = []
    if begins_with(reply, prompt):
        found.append(f"begins by repeating its prompt: {_quote(reply.lstrip())}")
    elif system and begins_with(reply, system):
        found.append(f"begins by repeating its system prompt: {_quote(reply.lstrip())}")
    allowed = scripts(prompt) | scripts(system or "") | scripts(allowed_text)
    for script, words in foreign_letters(reply, allowed).items():
        shown = ", ".join(words[:3]) + (", …" if len(words) > 3 else "")
        found.append(f"letters of the {_script_label(script)} script ({shown}) that neither the prompt nor the notebook uses")
    for line, n in repeated_lines(reply):
        found.append(f"the line {_quote(line)} appears {n} times")
    return found


# --- where a notebook keeps them --------------------------------------------------------------------


def cell_prompt(source: str) -> tuple[str, str | None]:
    """(prompt, system prompt or None) of a ``%%granite`` cell: the body under the magic line, and its ``-s``/``--system``."""
    magic, _, body = source.partition("\n")
    try:
        words = shlex.split(magic)
    except ValueError:  # an unbalanced quote: no system prompt to be read
        words = []
    system = None
    for i, word in enumerate(words):
        if word in ("-s", "--system") and i + 1 < len(words):
            system = words[i + 1]
        elif word.startswith("--system="):
            system = word.partition("=")[2]
    return body.strip("\n"), system


def notebook_sources(notebook: Mapping[str, Any]) -> str:
    """Everything the notebook's author wrote (every cell's source, Markdown and code), none of its outputs."""
    return "\n".join("".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"] for cell in notebook["cells"])
