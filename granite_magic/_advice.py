"""What to do next, in the words of the front end the person is using.

Errors state facts (``_errors``); the magic and the panel add this advice, which
names their own options and subcommands.  ``{again}`` is "run the cell again"
in a cell and "press Run again" in the panel.
"""

from __future__ import annotations

from ._errors import GraniteError
from ._result import Result

__all__ = ["ADVICE", "explain"]

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
}


def explain(error: GraniteError | None, result: Result, *, again: str = "run the cell again",
            interrupted: str = "Interrupted") -> str | None:
    """One paragraph: what happened, that the partial reply is kept, what to do.  None if all went well."""
    if error is None and result.ended == "interrupted":
        kept = " and the partial reply is kept" if result.text else ""
        return f"{interrupted}: the request was cancelled{kept}. {again[0].upper()}{again[1:]} for a full reply."
    if error is None:
        return None
    kept = " The partial reply is kept above." if result.text else ""
    advice = ADVICE.get(error.kind, "").format(again=again)
    return f"{_sentence(error.message)}{kept} {_sentence(advice) if advice else ''}".strip()


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."
