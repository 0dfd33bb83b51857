"""Helpers for property tests that put any JSON value into any field of a server's event."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

__all__ = ["JSON", "paths", "replaced"]

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)


def paths(value: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value, as the keys and indexes that lead there (the root included)."""
    found = [prefix]
    if isinstance(value, dict):
        found += [p for k, v in value.items() for p in paths(v, (*prefix, k))]
    elif isinstance(value, list):
        found += [p for i, v in enumerate(value) for p in paths(v, (*prefix, i))]
    return found


def replaced(value: Any, path: tuple[Any, ...], new: object) -> Any:
    """A copy of ``value`` with the place at ``path`` holding ``new``."""
    if not path:
        return new
    copy = json.loads(json.dumps(value))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return copy
