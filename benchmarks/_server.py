"""Start the fake OpenRouter server in its own process, so it does not share our GIL."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def fake_server(*args: str) -> Iterator[str]:
    """Yield the base URL of a fake server started with these CLI arguments."""
    process = subprocess.Popen(
        [sys.executable, "-m", "granite_magic.testing", "--port", "0", *args],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait()
