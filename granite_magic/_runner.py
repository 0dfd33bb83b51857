"""A private asyncio loop in a daemon thread.

A Jupyter kernel already runs an event loop, so a cell cannot ``asyncio.run``.
Instead of patching the kernel's loop (nest_asyncio), all network I/O runs on
this loop: a blocking call waits on a thread-safe future, which Ctrl-C (a
kernel interrupt) can break; the task is then cancelled, which closes the HTTP
stream, and the caller waits briefly for that clean-up before going on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["BackgroundLoop", "get_loop"]

T = TypeVar("T")

CANCEL_GRACE_S = 0.5  # how long an interrupted caller waits for the stream to close
SIGNAL_CHECK_S = 0.1  # how often a caller waiting on the loop looks for a Ctrl-C that reached another thread


class BackgroundLoop:
    def __init__(self, name: str = "granite-magic") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop; cancelling the returned future cancels the task."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Block until ``coro`` finishes; on KeyboardInterrupt cancel it, wait for its clean-up, re-raise."""
        if self.in_loop_thread:
            coro.close()
            raise RuntimeError("BackgroundLoop.run() called from its own loop: await the coroutine instead")
        finished = threading.Event()
        future = self.submit(_signal_when_done(coro, finished))
        try:
            while not future.done():
                # Not one wait without end: a Ctrl-C may reach any thread of the process, and Python raises it in the
                # main thread only when that thread runs Python again, which a wait on a lock does not do until it ends.
                concurrent.futures.wait((future,), timeout=SIGNAL_CHECK_S)
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            finished.wait(CANCEL_GRACE_S)
            raise

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` from another loop (top-level ``await`` in a cell)."""
        if self.in_loop_thread:
            return await coro
        return await asyncio.wrap_future(self.submit(coro))


async def _signal_when_done(coro: Coroutine[Any, Any, T], finished: threading.Event) -> T:
    try:
        return await coro
    finally:
        finished.set()


_shared: BackgroundLoop | None = None
_shared_lock = threading.Lock()


def get_loop() -> BackgroundLoop:
    """The process-wide background loop, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = BackgroundLoop()
        return _shared
