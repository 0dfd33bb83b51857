"""Defaults and the environment, read in one place.

``Settings.from_env()`` is the only code that reads ``GRANITE_*`` variables (the
API key is read where a client is made, and kept in a ``Secret``).  A session
holds one ``Settings``; the magic's ``%config`` traits replace it when they
change.  Every default a user can see is written here once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._errors import InvalidParameterError
from ._params import Sampling
from ._shapes import Api, shape

__all__ = ["BACKENDS", "DEFAULT_BASE_URL", "DEFAULT_MODEL", "Backend", "Settings"]

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_MODEL = "ibm-granite/granite-4.0-h-micro"

Backend = Literal["auto", "http", "local"]
BACKENDS: tuple[Backend, ...] = ("auto", "http", "local")


@dataclass(frozen=True)
class Settings:
    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    backend: Backend = "auto"
    api: Api = "chat"
    read_timeout_s: float = 60.0  # no new event for this long: the stream has stalled
    connect_timeout_s: float = 10.0
    timeout_s: float | None = None  # an overall limit on one reply (None: none)
    concurrency: int = 4  # comparison columns streaming at once
    updates_per_second: float = 15.0  # most widget refreshes while streaming
    local_instances: int = 1  # llama.cpp copies loaded to serve comparison columns at once
    default_params: Sampling = field(default_factory=Sampling)
    budget_usd: float | None = None  # what the session may spend in all (None: no limit)
    strict: bool = False  # OpenRouter: use only providers that honour every parameter sent (provider.require_parameters)
    cache: str = "off"  # record and replay: off, auto (serve hits, record misses), record, replay
    cache_dir: str = ".granite-cache"  # beside the notebook: the kernel's working directory

    def __post_init__(self) -> None:
        check_backend(self.backend)
        object.__setattr__(self, "base_url", check_base_url(self.base_url))
        shape(self.api)
        for name in ("read_timeout_s", "connect_timeout_s", "updates_per_second"):
            _positive(name, getattr(self, name))
        if self.timeout_s is not None:
            _positive("timeout_s", self.timeout_s)
        from ._cache import check_mode

        check_mode(self.cache)
        if self.budget_usd is not None and not self.budget_usd >= 0:
            raise InvalidParameterError(f"budget_usd={self.budget_usd!r} is out of range: must be a number >= 0")
        for name in ("concurrency", "local_instances"):
            if getattr(self, name) < 1:
                raise InvalidParameterError(f"{name}={getattr(self, name)} is out of range: must be an integer >= 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then the ``GRANITE_*`` environment (base URL, model, backend, budget, cache, cache dir), then ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "base_url": env.get("GRANITE_BASE_URL") or DEFAULT_BASE_URL,
            "model": env.get("GRANITE_MODEL") or DEFAULT_MODEL,
            "backend": env.get("GRANITE_BACKEND") or "auto",
            "budget_usd": _number("GRANITE_BUDGET_USD", env.get("GRANITE_BUDGET_USD")),
            "cache": env.get("GRANITE_CACHE") or "off",
            "cache_dir": env.get("GRANITE_CACHE_DIR") or ".granite-cache",
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def base_url_from_user(self) -> bool:
        """A base URL other than OpenRouter's was chosen, which makes ``auto`` pick HTTP."""
        return self.base_url.rstrip("/") != DEFAULT_BASE_URL


def check_base_url(url: str) -> str:
    """``url`` without a trailing slash, or InvalidParameterError if it is not an http(s) URL with a host."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError as exc:
        raise InvalidParameterError(f"base URL {url!r} is invalid ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidParameterError(f"base URL {url!r} is invalid: write http(s)://host[:port]/path, e.g. http://localhost:8080/v1")
    return url.strip().rstrip("/")


def check_backend(value: str) -> Backend:
    for backend in BACKENDS:
        if value == backend:
            return backend
    raise InvalidParameterError(f"backend={value!r} is invalid: must be one of {', '.join(BACKENDS)}")


def _number(name: str, text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidParameterError(f"{name}={text!r} is not a number") from None


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise InvalidParameterError(f"{name}={value!r} is out of range: must be a number > 0")
