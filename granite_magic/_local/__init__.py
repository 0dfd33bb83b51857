"""The embedded local backend: Granite (or any GGUF model) run by llama.cpp in this process.

Why in-process rather than llama.cpp's own OpenAI-compatible server: there is
no second process to start, find a port for, supervise and shut down with the
kernel, and Stop can end generation between two tokens instead of waiting for
a socket close to be noticed.

One concern per module, each depending only on those above it:

- ``model``: the GGUF file (a path, or a Hugging Face reference downloaded once), ``resolve_model``,
  ``local_available``, and the only reading of the ``GRANITE_LOCAL_*`` variables;
- ``template``: the model's own chat template, rendering a ``Request`` (documents, tools, an assistant
  prefix to continue) into the exact prompt text and tokens;
- ``prefix``: reading a prompt in fixed batches and keeping what was read for the next prompt that
  begins the same way (the KV cache, or a recurrent model's state through ctypes);
- ``probs``: the logits probe that gives every generated token its top-K alternatives, and
  ``TokenTexts``, which fits the tokens to the streamed text;
- ``pool``: the loaded instances, each serving one request at a time, and the context each request needs;
- ``client``: ``LocalClient``, which turns llama.cpp's chunks into the HTTP client's events.
"""

from __future__ import annotations

from .client import LocalClient, local_parameters
from .model import DEFAULT_LOCAL_FILE, DEFAULT_LOCAL_MODEL, LocalModelError, local_available, resolve_model
from .pool import context_size
from .prefix import PrefixReuse
from .probs import TokenTexts

__all__ = ["DEFAULT_LOCAL_FILE", "DEFAULT_LOCAL_MODEL", "LocalClient", "LocalModelError", "PrefixReuse", "TokenTexts",
           "context_size", "local_available", "local_parameters", "resolve_model"]
