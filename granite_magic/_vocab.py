"""Closed vocabularies that several layers name (each a ``Literal``, its tuple derived from it), and the defaults
that several layers share.

A leaf (it imports nothing of the package), so the extension can offer them as ``%config`` choices when it
loads without importing the layers that use them.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["APIS", "CACHE_MODES", "MAX_STEPS", "PACES", "SCHEMA_METHODS", "SCHEMA_MODES", "TOOL_MODES", "Api", "CacheMode", "Pace", "SchemaMethod", "SchemaMode",
           "ToolMode"]

Api = Literal["chat", "responses", "messages"]  # the HTTP request formats (each an API shape in _shapes)
APIS: tuple[Api, ...] = get_args(Api)
CacheMode = Literal["off", "auto", "record", "replay"]  # how runs meet the record/replay cache
CACHE_MODES: tuple[CacheMode, ...] = get_args(CacheMode)
Pace = Literal["instant", "original"]  # how a recording is replayed
PACES: tuple[Pace, ...] = get_args(Pace)
ToolMode = Literal["native", "prompted", "auto"]  # how tools are offered: natively, in the prompt, or as the model allows
TOOL_MODES: tuple[ToolMode, ...] = get_args(ToolMode)
# How a reply's JSON shape is obtained (--schema): a grammar constrains the tokens (the local model), the provider
# guarantees it (response_format json_schema), or the schema is only in the prompt and the reply is checked here.
SchemaMethod = Literal["grammar", "provider", "prompted"]
SCHEMA_METHODS: tuple[SchemaMethod, ...] = get_args(SchemaMethod)
SchemaMode = Literal["auto", "grammar", "provider", "prompted"]  # --schema-mode: auto is the backend's best method
SCHEMA_MODES: tuple[SchemaMode, ...] = get_args(SchemaMode)

# What answers a prompt's rows (--via): one live request each, OpenRouter's Batch API, or a batch file for vLLM.
Via = Literal["live", "batch", "jsonl"]
VIAS: tuple[Via, ...] = get_args(Via)

MAX_STEPS = 5  # requests in a tool-using turn, unless max_steps= / --max-steps says otherwise
