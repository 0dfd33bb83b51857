"""granite-magic: stream IBM Granite into Jupyter with `%%granite`.

Loading the extension is cheap: httpx is imported by the first request and
ipywidgets by the first widget, so the public names below are resolved lazily.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .client import DEFAULT_BASE_URL, DEFAULT_MODEL, GraniteClient, ModelInfo, RetryPolicy
    from .comparison import Comparison
    from .errors import (
        APIError,
        AuthenticationError,
        BadRequestError,
        ConnectionDroppedError,
        GenerationInterrupted,
        GraniteError,
        InsufficientCreditsError,
        InvalidParameterError,
        MissingKeyError,
        ModelNotFoundError,
        ModerationError,
        RateLimitError,
        ServerError,
        StallError,
        StreamError,
    )
    from .panel_ui import Panel, panel
    from .params import PARAMETERS, Param
    from .result import Result, ToolCall, Usage
    from .session import compare

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "PARAMETERS",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "Comparison",
    "ConnectionDroppedError",
    "GenerationInterrupted",
    "GraniteClient",
    "GraniteError",
    "InsufficientCreditsError",
    "InvalidParameterError",
    "MissingKeyError",
    "ModelInfo",
    "ModelNotFoundError",
    "ModerationError",
    "Panel",
    "Param",
    "RateLimitError",
    "Result",
    "RetryPolicy",
    "ServerError",
    "StallError",
    "StreamError",
    "ToolCall",
    "Usage",
    "__version__",
    "compare",
    "load_ipython_extension",
    "panel",
    "unload_ipython_extension",
]

_HOMES = {
    "client": ("DEFAULT_BASE_URL", "DEFAULT_MODEL", "GraniteClient", "ModelInfo", "RetryPolicy"),
    "errors": (
        "APIError", "AuthenticationError", "BadRequestError", "ConnectionDroppedError", "GenerationInterrupted",
        "GraniteError", "InsufficientCreditsError", "InvalidParameterError", "MissingKeyError", "ModelNotFoundError",
        "ModerationError", "RateLimitError", "ServerError", "StallError", "StreamError",
    ),
    "comparison": ("Comparison",),
    "panel_ui": ("Panel", "panel"),
    "params": ("PARAMETERS", "Param"),
    "session": ("compare",),
    "result": ("Result", "ToolCall", "Usage"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'granite_magic' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def load_ipython_extension(ipython: InteractiveShell) -> None:
    from .magic import register

    register(ipython)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    from .magic import unregister

    unregister(ipython)
