"""Closed vocabularies that several layers name: each is a ``Literal``, and its tuple is derived from it.

A leaf (it imports nothing of the package), so the extension can offer them as ``%config`` choices when it
loads without importing the layers that use them.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["APIS", "Api"]

Api = Literal["chat", "responses", "messages"]  # the HTTP request formats (each an API shape in _shapes)
APIS: tuple[Api, ...] = get_args(Api)
