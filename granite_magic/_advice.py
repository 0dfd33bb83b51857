"""What to do next, in the words of the front end the person is using.

Errors state facts (``_errors``), naming parameters as the Python API does (``max_steps=99``); the magic and
the panel spell those names their own way (``worded``) and add this advice, which names their own options and
subcommands.  ``{again}`` is "run the cell again" in a cell and "press Run again" in the panel.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from ._errors import GraniteError
from ._result import Result

__all__ = ["ADVICE", "Spelling", "cell_spelling", "explain", "respell", "worded"]

# How a front end writes a parameter the Python API writes ``name=``: "--max-steps " in a cell; None keeps ``name=``.
Spelling = Callable[[str], "str | None"]

# Parameters a cell sets through %config rather than an option.
_CONFIG_ONLY = frozenset({"budget_usd", "read_timeout_s", "connect_timeout_s", "local_instances"})


def cell_spelling(name: str) -> str:
    """A parameter as a cell sets it: its option (``--max-steps``), or its ``%config`` trait."""
    if name in _CONFIG_ONLY:
        return f"%config GraniteMagics.{name.removesuffix('_s')} = "
    return "--" + name.replace("_", "-") + " "


def worded(error: GraniteError, spell: Spelling | None) -> str:
    """``error``'s message with each parameter it names written as ``spell`` writes it."""
    return respell(error.message, error.names, spell)


def respell(text: str, names: tuple[str, ...], spell: Spelling | None) -> str:
    """``text`` with each of ``names`` (written ``name=``, as the Python API writes it) written as ``spell`` writes it."""
    if spell is None:
        return text
    for name in names:
        spelled = spell(name)
        if spelled is not None:
            text = re.sub(rf"(?<![\w-]){re.escape(name)}=(?:(True\b)|'([\w.:/-]*)'|((?=\s)))?", functools.partial(_spelled, spelled), text)
    return text


def _spelled(spelled: str, found: re.Match[str]) -> str:
    # ``verify=True`` is a bare flag in a cell (``--verify``); ``api='messages'`` is typed ``--api messages``;
    # ``seeds= and`` names the parameter without a value.
    flag, word, bare = found.group(1), found.group(2), found.group(3)
    if flag is not None or bare is not None:  # a bare flag, or a name with no value: the text's own space follows
        return spelled.rstrip()
    return spelled + word if word is not None else spelled

_NO_KEY = ("Set the OPENROUTER_API_KEY environment variable or run `%granite key` (keys: https://openrouter.ai/keys); "
           "or run the model on this machine without a key: --backend local (pip install 'granite-magic[local]').")

ADVICE: dict[str, str] = {
    "missing_key": _NO_KEY,
    "auth": _NO_KEY,
    "credits": "Add credits at https://openrouter.ai/settings/credits or raise the key's limit.",
    "moderation": "Rephrase the prompt.",
    "model_not_found": "Check the id with `%granite models`, or pass another with -m (with --strict: drop it, or the "
                       "parameters `%granite probe` saw ignored).",
    "bad_request": "Check the parameters and the prompt length (`--dry-run` shows what is sent).",
    "rate_limit": "Wait a minute and {again}, or use a paid model variant or your own key.",
    "server": "Try again in a minute, or pass another model with -m.",
    "stream": "{again} to retry.",
    "dropped": "Check the network and --base-url, then {again}.",
    "stall": "The provider may be overloaded: {again}, or raise %config GraniteMagics.read_timeout.",
    "deadline": "Raise --timeout (or %config GraniteMagics.timeout), or ask for fewer tokens with --max-tokens.",
    "protocol": "Check --base-url: it should be an OpenAI-compatible API such as https://openrouter.ai/api/v1.",
    "local_model": "Check GRANITE_LOCAL_MODEL, or use the HTTP backend (--backend http).",
    "cache_miss": "(nothing was sent) Record it once where the API or the model is at hand: --cache auto, or %config GraniteMagics.cache = 'auto'.",
    "cache_corrupt": "(nothing was sent) Delete that file, or record it again with --cache record.",
    "budget": "Lower the worst case with --max-tokens, or raise the budget: %config GraniteMagics.budget_usd = ...",
}


def explain(error: GraniteError | None, result: Result, *, again: str = "run the cell again",
            interrupted: str = "Interrupted", spell: Spelling | None = cell_spelling) -> str | None:
    """One paragraph: what happened, that the partial reply is kept, what to do.  None if all went well."""
    if error is None and result.ended == "interrupted":
        kept = " and the partial reply is kept" if result.text else ""
        return f"{interrupted}: the request was cancelled{kept}. {again[0].upper()}{again[1:]} for a full reply."
    if error is None:
        return None
    kept = " The partial reply is kept above." if result.text else ""
    advice = ADVICE.get(error.kind, "").format(again=again)
    return f"{_sentence(worded(error, spell))}{kept} {_sentence(advice) if advice else ''}".strip()


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    ended = text.rstrip("'\")")  # closing quotes and brackets end nothing: "... 'Name three minerals.'"
    return text if ended.endswith((".", "!", "?")) else text + "."
