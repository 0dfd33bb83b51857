"""granite-magic: stream IBM Granite into Jupyter with `%%granite`.

The public names live in private modules (``_client``, ``_errors``, ...) and are
re-exported here.  Loading the extension is cheap: httpx is imported by the
first request and ipywidgets by the first widget, so the names are resolved
lazily, from the one table ``_PUBLIC`` (``__all__`` is derived from it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ._api import acompare, amap, compare, map, probe, read_batch, usage
    from ._client import GraniteClient, ModelInfo, RetryPolicy
    from ._comparison import Comparison, Run, RunSpec
    from ._errors import (
        APIError,
        AuthenticationError,
        BadRequestError,
        ConnectionDroppedError,
        DeadlineError,
        GenerationInterrupted,
        GraniteError,
        InsufficientCreditsError,
        InvalidParameterError,
        MissingKeyError,
        ModelNotFoundError,
        ModerationError,
        ProtocolError,
        RateLimitError,
        ServerError,
        StallError,
        StreamError,
    )
    from ._events import Progress
    from ._panel import Panel, panel
    from ._params import PARAMETERS, Param, Sampling
    from ._result import Result, ToolCall, Usage
    from ._rows import setting_summary
    from ._settings import DEFAULT_BASE_URL, DEFAULT_MODEL
    from ._tokens import Alternative, Token

# module -> the public names it defines.  The one list of the public API.
_PUBLIC: dict[str, tuple[str, ...]] = {
    "_api": ("compare", "acompare", "map", "amap", "probe", "read_batch", "usage"),
    "_client": ("GraniteClient", "ModelInfo", "RetryPolicy"),
    "_comparison": ("Comparison", "Run", "RunSpec"),
    "_errors": (
        "APIError", "AuthenticationError", "BadRequestError", "ConnectionDroppedError", "DeadlineError", "GenerationInterrupted",
        "GraniteError", "InsufficientCreditsError", "InvalidParameterError", "MissingKeyError", "ModelNotFoundError",
        "ModerationError", "ProtocolError", "RateLimitError", "ServerError", "StallError", "StreamError",
    ),
    "_events": ("Progress",),
    "_panel": ("Panel", "panel"),
    "_params": ("PARAMETERS", "Param", "Sampling"),
    "_result": ("Result", "ToolCall", "Usage"),
    "_rows": ("setting_summary",),
    "_settings": ("DEFAULT_BASE_URL", "DEFAULT_MODEL"),
    "_tokens": ("Alternative", "Token"),
}
_HOME_OF = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = sorted([*_HOME_OF, "__version__", "load_ipython_extension", "unload_ipython_extension"])


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'granite_magic' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)


def load_ipython_extension(ipython: InteractiveShell) -> None:
    from ._magic import register

    register(ipython)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    from ._magic import unregister

    unregister(ipython)
