"""How much `%load_ext granite_magic` costs, and what the first cell pays for cold imports.

Each sample is a fresh interpreter with an IPython shell already up (as in a
kernel), so only the extension's own imports are measured.  jupyter-ai's
magics are measured the same way when they are installed in this environment
(`pip install jupyter-ai-magics`), side by side.

    python benchmarks/bench_load.py [--runs 9]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys

try:
    from ._server import fake_server
except ImportError:
    from _server import fake_server  # type: ignore[no-redef]

LOAD = """
from IPython.core.interactiveshell import InteractiveShell
import time, sys
ip = InteractiveShell.instance()
t = time.perf_counter()
ip.run_line_magic("load_ext", sys.argv[1])
print(time.perf_counter() - t)
print(int("httpx" in sys.modules), int("ipywidgets" in sys.modules))
"""

# Two identical one-token cells: the first pays for httpx/ipywidgets imports and the connection.
FIRST_CELLS = """
from IPython.core.interactiveshell import InteractiveShell
import time, sys
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "granite_magic")
ip.run_line_magic("config", f"GraniteMagics.base_url = {sys.argv[1]!r}")
ip.run_line_magic("config", "GraniteMagics.live = 'widget'")
from IPython.utils.capture import capture_output
times = []
for _ in range(2):
    t = time.perf_counter()
    with capture_output():
        ip.run_cell_magic("granite", "--max-tokens 1 -o r", "Hi")
    r = ip.user_ns["r"]
    times.append(r.ttft_s + (time.perf_counter() - t - r.duration_s))
print(times[0], times[1])
"""


# Users' interpreters keep bytecode caches; a sandbox that sets PYTHONDONTWRITEBYTECODE
# would make every sample compile from source and measure the compiler instead.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def sample(code: str, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, env=ENV)
    return out.stdout.split()


def load_times(extension: str, runs: int) -> tuple[list[float], bool]:
    sample(LOAD, extension)  # warm-up: writes the bytecode caches
    times, heavy = [], False
    for _ in range(runs):
        seconds, has_httpx, has_widgets = sample(LOAD, extension)
        times.append(float(seconds))
        heavy = heavy or has_httpx == "1" or has_widgets == "1"
    return times, heavy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    ours, heavy = load_times("granite_magic", args.runs)
    print(f"%load_ext granite_magic: median {statistics.median(ours) * 1e3:.2f} ms over {args.runs} fresh interpreters "
          f"(target < 10 ms); httpx or ipywidgets imported at load: {'yes' if heavy else 'no'}")
    if importlib.util.find_spec("jupyter_ai_magics"):
        theirs, _ = load_times("jupyter_ai_magics", args.runs)
        ratio = statistics.median(theirs) / statistics.median(ours)
        print(f"%load_ext jupyter_ai_magics: median {statistics.median(theirs) * 1e3:.1f} ms ({ratio:.0f}x granite_magic)")
    else:
        print("%load_ext jupyter_ai_magics: not installed here (pip install jupyter-ai-magics to compare)")
    with fake_server() as url:
        pairs = [tuple(map(float, sample(FIRST_CELLS, url))) for _ in range(args.runs)]
    cold = statistics.median(p[0] for p in pairs)
    warm = statistics.median(p[1] for p in pairs)
    extra = statistics.median(p[0] - p[1] for p in pairs)
    print(f"first cell time to first token: cold {cold * 1e3:.1f} ms, warm {warm * 1e3:.1f} ms, "
          f"cold-import extra {extra * 1e3:.1f} ms (median of {args.runs} fresh interpreters)")


if __name__ == "__main__":
    main()
