"""Shared fixtures: a real OpenRouter-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from granite_magic import GraniteClient, RetryPolicy
from granite_magic.testing import FakeOpenRouter

TEST_KEY = "sk-or-v1-test-0123456789abcdef-do-not-leak"

# Fast retries keep the suite quick; the policy's delays are tested on their own.
FAST_RETRY = RetryPolicy(base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture(scope="session")
def _server() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter(api_key=TEST_KEY) as server:
        yield server


@pytest.fixture
def server(_server: FakeOpenRouter) -> Iterator[FakeOpenRouter]:
    _server.reset()
    _server.honour_seed = True
    yield _server
    _server.reset()


@pytest.fixture
def client(server: FakeOpenRouter) -> Iterator[GraniteClient]:
    client = GraniteClient(base_url=server.base_url, api_key=TEST_KEY, retry=FAST_RETRY, read_timeout_s=5)
    yield client
    client.close()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll for a condition another thread makes true; False if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()
