"""The GGUF file: finding it, downloading it once, and the environment that names it.

This module is the only reader of the ``GRANITE_LOCAL_*`` variables: ``GRANITE_LOCAL_MODEL`` (which
file) and ``GRANITE_LOCAL_CHAT_FORMAT`` (a llama-cpp-python chat format, for a GGUF whose template it
cannot use).  The other ``GRANITE_*`` variables are read by ``_settings.py``.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import struct
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


PLAIN = "plain"  # the framing of a base model: text, not chat turns (see ``template.PlainFraming``)


def chat_format_for(llm: Any) -> str | None:
    """The chat format for a model whose own template is not to be used; None: use the GGUF's template.

    ``GRANITE_LOCAL_CHAT_FORMAT`` wins.  A GGUF with no chat template is a base model (the Gemma 3 stand-in
    used in tests is one): it was never trained on chat-turn markers, so it gets the plain framing (``PLAIN``).
    """
    explicit = explicit_chat_format()
    if explicit:
        return explicit
    metadata = getattr(llm, "metadata", {}) or {}
    return None if "tokenizer.chat_template" in metadata else PLAIN


def local_file(reference: str | None = None) -> Path | None:
    """The GGUF file when it is on this machine (a path, or a Hugging Face download already in the cache), without
    downloading anything; None otherwise."""
    path = existing_path(reference)
    ref = model_reference(reference) or DEFAULT_LOCAL_MODEL
    if path is not None or ref.endswith(".gguf") or Path(ref).expanduser().exists():
        return path
    repo, _, filename = ref.partition(":")
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(repo, filename or DEFAULT_LOCAL_FILE)
    return Path(cached) if isinstance(cached, str) else None


def has_chat_template(path: Path) -> bool:
    """Whether the GGUF at ``path`` carries a chat template (``tokenizer.chat_template``), read from its header
    without loading the model (a fraction of a second even for a 262k-token vocabulary)."""
    stat = path.stat()
    return _gguf_has_key(str(path), stat.st_size, stat.st_mtime_ns, "tokenizer.chat_template")


# GGUF value types: their sizes in bytes (8 is a string, 9 an array).
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


@functools.cache
def _gguf_has_key(path: str, size: int, mtime: int, key: str) -> bool:
    """Whether the GGUF's metadata names ``key`` (``size`` and ``mtime`` make a changed file a new question)."""
    try:
        with open(path, "rb") as raw, io.BufferedReader(raw, 1 << 20) as file:
            if file.read(4) != b"GGUF":
                return False
            _version, _tensors, count = struct.unpack("<IQQ", file.read(20))
            for _ in range(count):
                (length,) = struct.unpack("<Q", file.read(8))
                if file.read(length).decode("utf-8", errors="replace") == key:
                    return True
                (kind,) = struct.unpack("<I", file.read(4))
                _skip_value(file, kind)
    except (OSError, struct.error, ValueError):
        return False  # unreadable here: llama.cpp says why when it loads the file
    return False


def _skip_value(file: Any, kind: int) -> None:
    if kind in _GGUF_SIZES:
        file.seek(_GGUF_SIZES[kind], 1)
    elif kind == 8:
        (length,) = struct.unpack("<Q", file.read(8))
        file.seek(length, 1)
    elif kind == 9:
        item, count = struct.unpack("<IQ", file.read(12))
        if item in _GGUF_SIZES:
            file.seek(_GGUF_SIZES[item] * count, 1)
        else:
            for _ in range(count):
                _skip_value(file, item)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")
