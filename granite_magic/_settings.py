"""Defaults and the environment, read in one place.

``Settings.from_env()`` is the only code that reads the ``GRANITE_*`` variables a
setting names (the API key is read where a client is made, and kept in a
``Secret``; the local backend reads its own ``GRANITE_LOCAL_*``).  A session
holds one ``Settings``; the magic's ``%config`` traits are made from its fields
(their help and environment variable are the fields' metadata) and replace it
when they change.  Every default a user can see is written here once.

Loading the extension imports this module (the traits), so it stays light: the
parameter table, the API shapes and the cache are imported when a ``Settings`` is made.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from ._errors import InvalidParameterError
from ._vocab import APIS, CACHE_MODES, Api, CacheMode

if TYPE_CHECKING:
    from ._params import Sampling

__all__ = ["BACKENDS", "DEFAULT_BASE_URL", "DEFAULT_MODEL", "UPDATES_PER_SECOND", "Backend", "Settings", "configurable"]

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_MODEL = "ibm-granite/granite-4.0-h-micro"
UPDATES_PER_SECOND = 15.0  # most widget refreshes a second while streaming

Backend = Literal["auto", "http", "local"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)


def _setting(help: str, *, env: str | None = None, config: bool = True) -> dict[str, Any]:
    """A field's metadata: its ``%config`` help, the ``GRANITE_*`` variable that fills it when ``%config`` leaves
    it unset, and whether it is a ``%config`` trait at all."""
    return {"help": help, "env": env, "config": config}


def _no_parameters() -> Sampling:
    from ._params import Sampling

    return Sampling()


@dataclass(frozen=True)
class Settings:
    """A session's defaults: these values, then the environment's, then ``%config``'s (replaced whole, never changed)."""

    base_url: str = field(default=DEFAULT_BASE_URL, metadata=_setting("Default base URL", env="GRANITE_BASE_URL"))
    model: str = field(default=DEFAULT_MODEL, metadata=_setting("Default model id", env="GRANITE_MODEL"))
    backend: Backend = field(default="auto", metadata=_setting(
        "auto (http with a key or a base URL, else local), http (OpenRouter or base_url) or local (llama.cpp)",
        env="GRANITE_BACKEND"))
    api: Api = field(default="chat", metadata=_setting("HTTP request format: chat, responses or messages"))
    read_timeout_s: float = field(default=60.0, metadata=_setting(
        "Seconds without a new event before a stream counts as stalled"))
    connect_timeout_s: float = field(default=10.0, metadata=_setting("Seconds to connect", config=False))
    timeout_s: float | None = field(default=None, metadata=_setting("Seconds a whole reply may take (None: no limit)"))
    concurrency: int = field(default=4, metadata=_setting("Comparison columns streaming at once"))
    updates_per_second: float = field(default=UPDATES_PER_SECOND, metadata=_setting(
        "Most widget refreshes per second while streaming"))
    local_instances: int = field(default=1, metadata=_setting(
        "Local model copies loaded to serve comparison columns at once"))
    default_params: Sampling = field(default_factory=_no_parameters, metadata=_setting(
        "Sampling parameters sent unless a cell sets them, e.g. {'temperature': 0.2}"))
    budget_usd: float | None = field(default=None, metadata=_setting(
        "What this kernel may spend in all, in USD", env="GRANITE_BUDGET_USD"))
    strict: bool = field(default=False, metadata=_setting(
        "OpenRouter: only providers that honour every parameter sent (provider.require_parameters)"))
    cache: CacheMode = field(default="off", metadata=_setting(
        "Record and replay: off, auto (serve recordings, record the rest), record or replay", env="GRANITE_CACHE"))
    cache_dir: str = field(default=".granite-cache", metadata=_setting(
        "Where recordings live, beside the notebook (the kernel's working directory)", env="GRANITE_CACHE_DIR"))
    batch_poll_s: float = field(default=30.0, metadata=_setting(
        "Seconds between two polls of a submitted batch (--via batch)", env="GRANITE_BATCH_POLL_S"))

    def __post_init__(self) -> None:
        check_backend(self.backend)
        object.__setattr__(self, "base_url", check_base_url(self.base_url))
        if self.api not in APIS:
            raise InvalidParameterError(f"api={self.api!r} is invalid: must be one of {', '.join(APIS)}", names=("api",))
        for name in ("read_timeout_s", "connect_timeout_s", "updates_per_second"):
            _positive(name, getattr(self, name))
        if self.timeout_s is not None:
            _positive("timeout_s", self.timeout_s)
        if not (isinstance(self.batch_poll_s, (int, float)) and 0 <= self.batch_poll_s < math.inf):
            raise InvalidParameterError(f"batch_poll_s={self.batch_poll_s!r} is out of range: must be a finite number >= 0")
        check_cache_mode(self.cache)
        if self.budget_usd is not None and not (isinstance(self.budget_usd, (int, float)) and 0 <= self.budget_usd < math.inf):
            raise InvalidParameterError(f"budget_usd={self.budget_usd!r} is out of range: must be a finite number >= 0 "
                                        "(unset: no budget)")
        for name in ("concurrency", "local_instances"):
            if getattr(self, name) < 1:
                raise InvalidParameterError(f"{name}={getattr(self, name)} is out of range: must be an integer >= 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, refused: list[str] | None = None,
                 only: Collection[str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then the ``GRANITE_*`` environment (each field's ``env``; of the fields ``only`` names, when given),
        then ``overrides``.

        A variable whose value is invalid raises ``InvalidParameterError`` naming it; with a ``refused`` list, it is
        left out instead (its field keeps its default) and the reason is appended there, one line each, and so is
        an invalid override (a value a configuration file gave a ``%config`` trait).
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for each in dataclasses.fields(cls):
            name = each.metadata.get("env")
            if not (name and env.get(name)) or (only is not None and each.name not in only):
                continue
            try:
                value: Any = _number(name, env[name]) if each.type in ("float", "float | None") else env[name]
                cls(**{each.name: value})  # checked alone, so that the message names this variable
            except InvalidParameterError as exc:
                reason = exc.message if exc.message.startswith(name) else f"{name}={env[name]!r} is refused ({exc.message})"
                reason += f": ignored, so {each.name} is {'unset' if each.default is None else repr(each.default)}"
                if refused is None:
                    raise InvalidParameterError(reason) from None
                refused.append(reason)
                continue
            values[each.name] = value
        for name, value in overrides.items():
            if value is None:
                continue
            if refused is not None:  # each checked alone, as the environment's are: the one that is invalid is named
                try:
                    cls(**{name: value})
                except InvalidParameterError as exc:
                    refused.append(f"{exc.message}: ignored")
                    continue
            values[name] = value
        return cls(**values)

    @property
    def base_url_from_user(self) -> bool:
        """A base URL other than OpenRouter's was chosen, which makes ``auto`` pick HTTP."""
        return self.base_url.rstrip("/") != DEFAULT_BASE_URL


def check_cache_mode(value: str) -> CacheMode:
    """A cache mode from a cell, ``%config`` or ``GRANITE_CACHE``, or an error listing the valid ones."""
    text = str(value).strip().lower()
    for mode in CACHE_MODES:
        if text == mode:
            return mode
    raise InvalidParameterError(f"cache={value!r} is invalid: must be one of {', '.join(CACHE_MODES)}", names=("cache",))


def host_of(base_url: str) -> str:
    """The host of a base URL: all a recording or a billing check keeps of it (never a port, path or credentials)."""
    from urllib.parse import urlsplit

    # urlsplit only finds a host after "//"; "openrouter.ai/api/v1" is still a host and a path.
    return urlsplit(base_url if "//" in base_url else f"//{base_url}").hostname or ""


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


def configurable() -> list[dataclasses.Field[Any]]:
    """The fields a ``%config`` trait sets, in order."""
    return [each for each in dataclasses.fields(Settings) if each.metadata["config"]]
