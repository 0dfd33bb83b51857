"""Time to first token and whole-stream throughput: granite-magic's client vs raw httpx.

Both read the same 20,000-token reply from the same local server (in its own
process), alternating run by run so machine noise hits both alike.  The
baseline is what a hand-written client does: httpx streaming, `aiter_lines`,
and `json.loads` on every `data:` line.

    python benchmarks/bench_client.py [--runs 15] [--tokens 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx

from granite_magic import GraniteClient

try:
    from ._server import fake_server
except ImportError:
    from _server import fake_server  # type: ignore[no-redef]

BODY = {"model": "ibm-granite/granite-4.0-h-micro", "messages": [{"role": "user", "content": "Write a lot"}],
        "stream": True, "seed": 1}


async def raw_httpx(http: httpx.AsyncClient, url: str) -> tuple[float, float, int]:
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


def through_client(client: GraniteClient) -> tuple[float, float, int]:
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
        raw, ours = [], []
        for run in range(args.runs + 1):  # the first pair warms up connections and imports
            r = loop.run_until_complete(raw_httpx(http, url))
            o = through_client(client)
            assert r[2] == o[2] == args.tokens, (r[2], o[2])
            if run:
                raw.append(r)
                ours.append(o)
        loop.run_until_complete(http.aclose())
        client.close()
    report(raw, ours, args.tokens)


def report(raw: list[tuple[float, float, int]], ours: list[tuple[float, float, int]], tokens: int) -> None:
    def med(rows: list[tuple[float, float, int]], i: int) -> float:
        return statistics.median(row[i] for row in rows)

    added_ttft = statistics.median(o[0] - r[0] for r, o in zip(raw, ours, strict=True))
    raw_tps, our_tps = tokens / med(raw, 1), tokens / med(ours, 1)
    print(f"{len(raw)} alternating runs, {tokens} tokens each, median figures")
    print(f"{'':24}{'raw httpx':>12}{'granite-magic':>15}")
    print(f"{'time to first token':24}{med(raw, 0) * 1e3:>10.2f}ms{med(ours, 0) * 1e3:>13.2f}ms")
    print(f"{'whole stream':24}{med(raw, 1) * 1e3:>10.1f}ms{med(ours, 1) * 1e3:>13.1f}ms")
    print(f"{'tokens/s':24}{raw_tps:>12,.0f}{our_tps:>15,.0f}")
    print(f"added time to first token (median of paired differences): {added_ttft * 1e3:.2f} ms  (target < 1 ms)")
    print(f"throughput ratio granite-magic / raw: {our_tps / raw_tps:.2f}x  (target >= 0.8x)")


if __name__ == "__main__":
    main()
