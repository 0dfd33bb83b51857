"""The GGUF file: finding it, downloading it once, and the environment that names it.

This module is the only reader of the ``GRANITE_LOCAL_*`` variables: ``GRANITE_LOCAL_MODEL`` (which
file) and ``GRANITE_LOCAL_CHAT_FORMAT`` (a llama-cpp-python chat format, for a GGUF whose template it
cannot use).  The other ``GRANITE_*`` variables are read by ``_settings.py``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from .. import _errors as errors

DEFAULT_LOCAL_MODEL = "ibm-granite/granite-4.0-h-micro-GGUF"
DEFAULT_LOCAL_FILE = "granite-4.0-h-micro-Q4_K_M.gguf"
DEFAULT_LOCAL_SIZE = "1.9 GB"

INSTALL_HINT = "pip install 'granite-magic[local]'"


class LocalModelError(errors.GraniteError):
    """The local model could not be found, downloaded or loaded."""

    kind = "local_model"


def local_available() -> bool:
    """Whether the ``local`` extra (llama-cpp-python) is installed."""
    return importlib.util.find_spec("llama_cpp") is not None


def model_reference(reference: str | None = None) -> str | None:
    """``reference``, else ``GRANITE_LOCAL_MODEL``; None when neither names a model."""
    return reference or os.environ.get("GRANITE_LOCAL_MODEL")


def model_name(reference: str | None = None) -> str:
    """A readable name for the model: the GGUF file's name (IBM's default file when nothing names one)."""
    ref = model_reference(reference) or DEFAULT_LOCAL_FILE
    return Path(ref.partition(":")[2] or ref).name


def existing_path(reference: str | None = None) -> Path | None:
    """The GGUF file when it is here already, without downloading it (None for a Hugging Face reference)."""
    ref = model_reference(reference)
    if ref is None:
        return None
    path = Path(ref).expanduser()
    return path if path.is_file() else None


def resolve_model(reference: str | None = None) -> Path:
    """A GGUF path from ``reference``, ``GRANITE_LOCAL_MODEL`` or IBM's Granite 4.0 Micro GGUF.

    A reference is a path to a ``.gguf`` file, or a Hugging Face ``owner/repo`` (with
    ``:file.gguf`` unless it is IBM's default repository), downloaded once into the cache.
    """
    ref = model_reference(reference) or DEFAULT_LOCAL_MODEL
    path = Path(ref).expanduser()
    if ref.endswith(".gguf") or path.exists():
        if not path.is_file():
            raise LocalModelError(f"GRANITE_LOCAL_MODEL names {ref!r}, which is not a file. Give a path to a .gguf file.")
        return path
    repo, _, filename = ref.partition(":")
    if not filename:
        if repo != DEFAULT_LOCAL_MODEL:
            raise LocalModelError(f"Name the file in {repo!r}: GRANITE_LOCAL_MODEL={repo}:model-Q4_K_M.gguf")
        filename = DEFAULT_LOCAL_FILE
    return download(repo, filename)


def download(repo: str, filename: str) -> Path:
    """Fetch ``filename`` from the Hugging Face hub once; later calls find it in the cache."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        raise LocalModelError(f"Downloading a model needs huggingface-hub: {INSTALL_HINT}") from None
    cached = try_to_load_from_cache(repo, filename)
    if isinstance(cached, str):
        return Path(cached)
    size = f" (about {DEFAULT_LOCAL_SIZE})" if filename == DEFAULT_LOCAL_FILE else ""
    print(f"granite: downloading {repo}/{filename}{size} into the Hugging Face cache; this happens once.",
          file=sys.stderr, flush=True)
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename))  # shows its own progress bar
    except Exception as exc:  # the hub raises many kinds; all mean "not downloaded"
        raise LocalModelError(
            f"Could not download {repo}/{filename} ({type(exc).__name__}: {exc}). "
            "Check the network, or set GRANITE_LOCAL_MODEL to a .gguf file you already have."
        ) from None


def explicit_chat_format() -> str | None:
    """The chat format ``GRANITE_LOCAL_CHAT_FORMAT`` names, if any."""
    return os.environ.get("GRANITE_LOCAL_CHAT_FORMAT") or None


def chat_format_for(llm: Any) -> str | None:
    """The chat format for a model, when its GGUF carries no template llama.cpp can use.

    Granite's GGUF carries its own Jinja template (None: use it).  The Gemma 3
    stand-in used in tests carries none that llama-cpp-python recognises and then
    answers with nothing, so Gemma models get the built-in ``gemma`` format.
    """
    explicit = explicit_chat_format()
    if explicit:
        return explicit
    metadata = getattr(llm, "metadata", {}) or {}
    if "tokenizer.chat_template" in metadata:
        return None
    return "gemma" if str(metadata.get("general.architecture", "")).startswith("gemma") else None

