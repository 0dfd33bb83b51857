"""How much `%load_ext granite_magic` costs, and what the first cell pays over a warm one.

Each sample is a fresh interpreter with an IPython shell already up (as in a kernel), so only the extension's own
work is measured.  Two figures:

- load: the time of `%load_ext granite_magic` alone;
- first cell: a notebook's order of events: the cell that loads the extension runs (as a cell, so whatever the
  extension starts after it does start), the user pauses (`--pause`, 1 s), then two identical one-token cells run
  against the fake server; the first cell's time to first token minus the second's is what the first cell pays
  for imports, the option parser and the background loop.

`--baseline REV` measures the package as it was at a git revision in the same run, each sample alternating with
the working tree's, and prints the ratios.  jupyter-ai's magics are measured the same way when they are installed
in this environment (`pip install jupyter-ai-magics`).

    python benchmarks/bench_load.py [--runs 15] [--pause 1.0] [--baseline REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    from ._server import fake_server
except ImportError:
    from _server import fake_server  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent

LOAD = """
from IPython.core.interactiveshell import InteractiveShell
import time, sys
ip = InteractiveShell.instance()
t = time.perf_counter()
ip.run_line_magic("load_ext", sys.argv[1])
print(time.perf_counter() - t)
print(int("httpx" in sys.modules), int("ipywidgets" in sys.modules))
"""

# The loading cell, a pause, then two identical one-token cells: the first pays for what was not done yet.
FIRST_CELLS = """
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
import time, sys
ip = InteractiveShell.instance()
with capture_output():
    ip.run_cell(f"%load_ext granite_magic\\n%config GraniteMagics.base_url = {sys.argv[1]!r}\\n"
                "%config GraniteMagics.live = 'widget'")
time.sleep(float(sys.argv[2]))
times = []
for _ in range(2):
    t = time.perf_counter()
    with capture_output():
        ip.run_cell_magic("granite", "--max-tokens 1 -o r", "Hi")
    r = ip.user_ns["r"]
    assert r.text, "the cell failed"
    times.append(r.ttft_s + (time.perf_counter() - t - r.duration_s))
print(times[0], times[1])
"""


_CACHE_HOME = tempfile.mkdtemp(prefix="bench-load-cache-")


def environment(path: Path | None) -> dict[str, str]:
    """Users' interpreters keep bytecode caches (a sandbox that sets PYTHONDONTWRITEBYTECODE would measure the
    compiler instead); ``path`` puts another copy of the package first."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["OPENROUTER_API_KEY"] = env.get("OPENROUTER_API_KEY") or "sk-or-v1-bench"
    # Probe reports of the user's own (of any version) must not decide what a sample does.
    env["XDG_CACHE_HOME"] = _CACHE_HOME
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def sample(code: str, env: dict[str, str], *args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, env=env, cwd="/")
    return out.stdout.split()


@contextmanager
def exported(revision: str | None) -> Iterator[Path | None]:
    """The package as committed at ``revision``, in a temporary directory (None: no revision, no directory)."""
    if revision is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", revision, "granite_magic"], cwd=ROOT, capture_output=True, check=True).stdout
        archive_path = Path(tmp) / "package.tar"
        archive_path.write_bytes(archive)
        with tarfile.open(archive_path) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp)


def which(env: dict[str, str]) -> str:
    return sample("import granite_magic, os; print(os.path.dirname(granite_magic.__file__))", env)[0]


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def measure(versions: dict[str, dict[str, str]], runs: int, pause: float) -> None:
    for env in versions.values():
        sample(LOAD, env, "granite_magic")  # writes the bytecode caches
    loads: dict[str, list[float]] = {name: [] for name in versions}
    heavy: dict[str, bool] = dict.fromkeys(versions, False)
    for _ in range(runs):  # alternating, so a busy moment of the machine falls on both
        for name, env in versions.items():
            seconds, has_httpx, has_widgets = sample(LOAD, env, "granite_magic")
            loads[name].append(float(seconds))
            heavy[name] = heavy[name] or has_httpx == "1" or has_widgets == "1"
    cells: dict[str, list[tuple[float, float]]] = {name: [] for name in versions}
    with fake_server() as url:
        for env in versions.values():
            sample(FIRST_CELLS, env, url, "0")
        for _ in range(runs):
            for name, env in versions.items():
                first, second = map(float, sample(FIRST_CELLS, env, url, str(pause)))
                cells[name].append((first, second))

    print(f"median of {runs} fresh interpreters each; first cells after a {pause:g} s pause")
    print(f"{'':<26} {'%load_ext':>10} {'first cell':>11} {'warm cell':>10} {'first - warm':>13}   httpx/ipywidgets at load")
    for name in versions:
        extra = [first - second for first, second in cells[name]]
        print(f"{name:<26} {median_ms(loads[name]):>7.2f} ms {median_ms([c[0] for c in cells[name]]):>8.1f} ms "
              f"{median_ms([c[1] for c in cells[name]]):>7.1f} ms {median_ms(extra):>10.1f} ms   {'yes' if heavy[name] else 'no'}")
    if len(versions) == 2:
        ours, base = versions
        extra_ours = statistics.median(a - b for a, b in cells[ours])
        extra_base = statistics.median(a - b for a, b in cells[base])
        print(f"ratios {ours} / {base}: %load_ext {statistics.median(loads[ours]) / statistics.median(loads[base]):.2f}x, "
              f"first cell's extra {extra_ours / extra_base:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between the loading cell and the first cell")
    parser.add_argument("--baseline", help="a git revision to measure side by side, e.g. HEAD~3")
    args = parser.parse_args()
    versions = {"working tree": environment(ROOT)}
    with exported(args.baseline) as base:
        if base is not None:
            versions[f"baseline {args.baseline}"] = environment(base)
            assert which(versions[f"baseline {args.baseline}"]) != which(versions["working tree"])
        measure(versions, args.runs, args.pause)
    if importlib.util.find_spec("jupyter_ai_magics"):
        env = environment(None)
        sample(LOAD, env, "jupyter_ai_magics")
        theirs = [float(sample(LOAD, env, "jupyter_ai_magics")[0]) for _ in range(args.runs)]
        print(f"%load_ext jupyter_ai_magics: median {median_ms(theirs):.1f} ms")
    else:
        print("%load_ext jupyter_ai_magics: not installed here (pip install jupyter-ai-magics to compare)")


if __name__ == "__main__":
    main()
