"""Time to first token and whole-stream throughput: granite-magic's client vs raw httpx and the OpenAI SDK.

All three read the same 20,000-token reply from the same local server (in its
own process), taking turns run by run so machine noise hits all alike.  The
baselines are what people write without us: httpx streaming with `aiter_lines`
and `json.loads` on every `data:` line, and the official OpenAI Python SDK
(`AsyncOpenAI(...).chat.completions.create(stream=True)`).

    python benchmarks/bench_client.py [--runs 15] [--tokens 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
from openai import AsyncOpenAI

from granite_magic import GraniteClient

try:
    from ._server import fake_server
except ImportError:
    from _server import fake_server  # type: ignore[no-redef]

MODEL = "ibm-granite/granite-4.0-h-micro"
MESSAGES: list[Any] = [{"role": "user", "content": "Write a lot"}]
BODY = {"model": MODEL, "messages": MESSAGES, "stream": True, "seed": 1}

Row = tuple[float, float, int]  # (time to first token s, whole stream s, tokens)


async def raw_httpx(http: httpx.AsyncClient, url: str) -> Row:
    start = time.perf_counter()
    first = None
    parts: list[str] = []
    async with http.stream("POST", url + "/chat/completions", json=BODY) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or ():
                content = choice["delta"].get("content")
                if content:
                    first = first or time.perf_counter()
                    parts.append(content)
    end = time.perf_counter()
    assert first is not None
    return first - start, end - start, len("".join(parts).split())


async def openai_sdk(sdk: AsyncOpenAI) -> Row:
    start = time.perf_counter()
    first = None
    parts: list[str] = []
    async with await sdk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, seed=1) as stream:
        async for chunk in stream:
            content = chunk.choices[0].delta.content if chunk.choices else None  # the usage chunk has no choices
            if content:
                first = first or time.perf_counter()
                parts.append(content)
    end = time.perf_counter()
    assert first is not None
    return first - start, end - start, len("".join(parts).split())


def through_client(client: GraniteClient) -> Row:
    start = time.perf_counter()
    first: list[float] = []
    result = client.chat("Write a lot", seed=1, on_update=lambda acc: first or first.append(time.perf_counter()))
    end = time.perf_counter()
    return first[0] - start, end - start, len(result.text.split())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=20_000)
    args = parser.parse_args()
    with fake_server("--tokens", str(args.tokens)) as url:
        client = GraniteClient(base_url=url, api_key="bench")
        loop = asyncio.new_event_loop()
        http = httpx.AsyncClient(timeout=60)
        sdk = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0)
        contenders: dict[str, Callable[[], Row]] = {
            "raw httpx": lambda: loop.run_until_complete(raw_httpx(http, url)),
            "OpenAI SDK": lambda: loop.run_until_complete(openai_sdk(sdk)),
            "granite-magic": lambda: through_client(client),
        }
        rows: dict[str, list[Row]] = {name: [] for name in contenders}
        for run in range(args.runs + 1):  # the first round warms up connections and imports
            for name, measure in contenders.items():
                row = measure()
                assert row[2] == args.tokens, (name, row[2])
                if run:
                    rows[name].append(row)
        loop.run_until_complete(http.aclose())
        loop.run_until_complete(sdk.close())
        loop.run_until_complete(loop.shutdown_asyncgens())  # the SDK leaves its SSE decoder's generator open
        loop.close()
        client.close()
    report(rows, args.tokens)


def report(rows: dict[str, list[Row]], tokens: int) -> None:
    def med(name: str, i: int) -> float:
        return statistics.median(row[i] for row in rows[name])

    names = list(rows)
    ours = rows["granite-magic"]
    print(f"{len(ours)} alternating runs, {tokens} tokens each, median figures")
    print(f"{'':24}" + "".join(f"{name:>15}" for name in names))
    print(f"{'time to first token':24}" + "".join(f"{med(name, 0) * 1e3:>13.2f}ms" for name in names))
    print(f"{'whole stream':24}" + "".join(f"{med(name, 1) * 1e3:>13.1f}ms" for name in names))
    print(f"{'tokens/s':24}" + "".join(f"{tokens / med(name, 1):>15,.0f}" for name in names))
    for theirs, targets in (("raw httpx", ("  (target < 1 ms)", "  (target >= 0.8x)")), ("OpenAI SDK", ("", ""))):
        added_ttft = statistics.median(o[0] - t[0] for t, o in zip(rows[theirs], ours, strict=True))
        ratio = med(theirs, 1) / med("granite-magic", 1)  # tokens/s ours over theirs
        print(f"granite-magic vs {theirs}: added time to first token {added_ttft * 1e3:+.2f} ms{targets[0]}, "
              f"throughput ratio {ratio:.2f}x{targets[1]}")
    print("(added time to first token: median of paired differences; throughput ratio: ours / theirs)")


if __name__ == "__main__":
    main()
