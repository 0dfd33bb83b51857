"""``LocalClient``: chat completions from the loaded model, with the HTTP client's events and results.

The client receives the messages and the validated ``Sampling`` (its llama.cpp names come from the
parameter table), never an HTTP body.  The prompt's tokens are generated with ``create_completion``
and its chunks become the same events as the HTTP stream's.

Generation runs on a dedicated executor (its threads release the GIL inside llama.cpp), so the
kernel and the background loop stay responsive.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal

from .. import _errors as errors
from .. import _params
from .._client import RAW_WORDS, BaseClient, ModelInfo, UpdateCallback
from .._events import Accumulator, ChunkMeta, Done, Event, Finish, TextDelta, TokenLogprobs, UsageReport
from .._result import Result, Usage
from .._runner import BackgroundLoop
from .._shapes import Request, chat_tools
from .._vocab import SchemaMethod
from .model import (
    PLAIN,
    LocalModelError,
    existing_path,
    explicit_chat_format,
    has_chat_template,
    local_file,
    model_name,
    resolve_model,
)
from .pool import MIN_CONTEXT, Pool, Slot, context_size, generated_tokens, reply_limit
from .prefix import PrefixReuse
from .probs import Probe
from .template import Prompt, read_template

# Parameters the local backend honours itself rather than passing to llama.cpp: token probabilities are read
# from the logits, and a tool choice is kept by the tool loop.
HANDLED_HERE = ("logprobs", "top_logprobs", "tool_choice")


def local_parameters() -> tuple[str, ...]:
    """What the local backend honours: every parameter with a llama.cpp name, and those it handles itself."""
    return tuple(p.name for p in _params.PARAMETERS if p.wire_name("llama_cpp") is not None or p.name in HANDLED_HERE)


@functools.cache
def _chat_defaults() -> dict[str, Any]:
    """The sampler settings ``create_chat_completion`` uses when none is given (temperature 0.2, not
    ``create_completion``'s 0.8): the local backend kept them when it began rendering prompts itself."""
    from llama_cpp import Llama

    chat = inspect.signature(Llama.create_chat_completion).parameters
    completion = inspect.signature(Llama.create_completion).parameters
    samplers = ("temperature", "top_p", "top_k", "min_p", "typical_p", "presence_penalty", "frequency_penalty",
                "repeat_penalty", "tfs_z", "mirostat_mode", "mirostat_tau", "mirostat_eta")
    return {name: chat[name].default for name in samplers if name in chat and name in completion}


def _arguments(request: Request, prompt: Prompt, limit: int) -> dict[str, Any]:
    """``create_completion``'s keyword arguments: the sampling asked for, the reply limit, the template's stops."""
    sampling = request.sampling.for_target("llama_cpp")
    stop = sampling.pop("stop", None)
    asked = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    structure = request.structure
    # in the schema's own order: the fields are written in it (a reason after the verdict, or before it, as asked)
    bounded = _bounded(structure.schema, limit=limit) if structure and structure.method == "grammar" else None
    grammar = {"grammar": _grammar(json.dumps(bounded))} if bounded is not None else {}
    return {**_chat_defaults(), **sampling, "max_tokens": limit, "stop": asked + prompt.stop,
            "stopping_criteria": prompt.stopping, **grammar}


def _constrained(request: Request) -> bool:
    return request.structure is not None and request.structure.method == "grammar"


# A grammar cannot make an open-ended list or string end: a small model, once it repeats an item, repeats it to the
# token limit ("cook", "cook", ... measured on the stand-in), and at a high temperature a string rambles on to it
# ("wife-to-be-to-be-to-be...").  What the schema leaves unbounded is bounded in the grammar alone (the reply is
# still checked against the schema as given): a list at 10 items, and the free strings share half of the reply's
# limit, so that the object can close within it.  Two characters a token is what rambling costs (English prose
# averages four): a string cut short is still a valid value, a reply cut at the limit is no value at all.
GRAMMAR_MOST_ITEMS = 10
CHARACTERS_PER_TOKEN = 2
STRING_SHARE = 2  # the free strings together may use at most half of the reply's limit
SHORTEST_BOUND = 16  # characters: below this a bound would cut ordinary words and names


def _bounded(schema: Any, *, limit: int) -> Any:
    """``schema`` with every list that sets no ``maxItems`` given ``GRAMMAR_MOST_ITEMS`` and every free string (no
    ``maxLength``, enumeration, pattern or format) its share of a reply of at most ``limit`` tokens, for the grammar."""
    listed = _listed(schema)
    strings = _free_strings(listed)
    longest = max(SHORTEST_BOUND, limit * CHARACTERS_PER_TOKEN // STRING_SHARE // max(strings, 1))
    return _strings_bounded(listed, longest)


def _listed(schema: Any) -> Any:
    if isinstance(schema, Mapping):
        bounded = {key: _listed(value) for key, value in schema.items()}
        if bounded.get("type") == "array" and "maxItems" not in bounded:
            bounded["maxItems"] = max(GRAMMAR_MOST_ITEMS, int(bounded.get("minItems") or 0))
        return bounded
    if isinstance(schema, list):
        return [_listed(item) for item in schema]
    return schema


def _free(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "string" and not {"maxLength", "enum", "const", "format", "pattern"} & schema.keys()


def _free_strings(schema: Any) -> int:
    """How many free strings a reply can hold at most: a list's items count as many times as it may hold them."""
    if isinstance(schema, list):
        return sum(_free_strings(item) for item in schema)
    if not isinstance(schema, Mapping):
        return 0
    if _free(schema):
        return 1
    inside = sum(_free_strings(value) for key, value in schema.items() if key != "items")
    return inside + int(schema.get("maxItems") or 1) * _free_strings(schema.get("items"))


def _strings_bounded(schema: Any, longest: int) -> Any:
    if isinstance(schema, list):
        return [_strings_bounded(item, longest) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    bounded = {key: _strings_bounded(value, longest) for key, value in schema.items()}
    if _free(bounded):
        bounded["maxLength"] = max(longest, int(bounded.get("minLength") or 0))
    return bounded


def _grammar(schema: str) -> Any:
    """llama.cpp's grammar for a JSON Schema (llama-cpp-python's converter, as its ``response_format`` with a schema
    uses; its ``json_schema`` type would be ignored): only tokens that keep the reply inside the schema are drawn."""
    from llama_cpp.llama_grammar import LlamaGrammar

    try:
        return LlamaGrammar.from_json_schema(schema, verbose=False)
    except Exception as exc:  # the converter raises ValueError, or a RuntimeError from llama.cpp's parser
        raise errors.InvalidParameterError(f"llama.cpp could not make a grammar of this schema ({type(exc).__name__}: {exc})",
                                           names=("schema",)) from None


_END = object()
_STARTED = object()  # from the worker: an instance is generating this reply


class LocalClient(BaseClient):
    """Chat completions from a GGUF model in this process, with the HTTP client's events and results.

    ``n_ctx`` is the smallest context an instance is loaded with (a request that needs more reloads it
    bigger, up to the model's trained context).  ``prefix_reuse`` says how a prompt that begins like the
    previous one reuses what llama.cpp already read (see ``PrefixReuse``); the text is the same either way.
    ``template`` (a Jinja file, a llama-cpp-python chat format's name, or ``plain``) or ``chat_template`` (Jinja
    source) replaces the GGUF's own, for a GGUF that has none or a wrong one.  A GGUF with no template of its own is
    a base model: without either, its prompt is the plain framing (``framing``), not chat turns it never saw.
    """

    base_url = "local"  # where probes of it are filed; nothing compares it
    kind: ClassVar[str] = "local"
    documents_in_template: ClassVar[bool] = True  # the GGUF's chat template has a documents slot
    counts_prompt_tokens: ClassVar[bool] = True
    free: ClassVar[bool] = True
    # On two CPU cores a 3B model writes a few tokens a second: an open-ended reply would hold the kernel for
    # minutes, so a reply is capped unless --max-tokens / max_tokens= asks for more.
    default_max_tokens: ClassVar[int | None] = 512
    completes_raw: ClassVar[bool] = True  # the text tokenized as written, with no template

    def __init__(self, model: str | None = None, *, instances: int = 1, n_ctx: int = MIN_CONTEXT,
                 prefix_reuse: PrefixReuse = "auto", chat_template: str | None = None, template: str | None = None,
                 loop: BackgroundLoop | None = None, remembered: Callable[[str], str | None] | None = None) -> None:
        if instances < 1:
            raise errors.InvalidParameterError(f"instances={instances} is out of range: must be an integer >= 1")
        if prefix_reuse not in ("auto", "state", "off"):
            raise errors.InvalidParameterError(f"prefix_reuse={prefix_reuse!r} is invalid: must be auto, state or off")
        self.reference = model
        self.instances = instances
        self.n_ctx = n_ctx
        self.prefix_reuse: PrefixReuse = prefix_reuse
        if template is not None and chat_template is not None:
            raise errors.InvalidParameterError("give template= or chat_template=, not both", names=("template",))
        self.template = template
        self.chat_format: str | None = None  # a llama-cpp-python chat format, or "plain", chosen by template=
        if template is not None:
            chat_template, self.chat_format = read_template(template)
        self.chat_template = chat_template
        self._loop = loop
        self._remembered = remembered  # the framing remembered for a model file that is not here
        self._pool: Pool | None = None
        self._pool_lock = threading.Lock()
        # Replies waiting for an instance, oldest first, and the number generating (both changed on the loop only).
        self._queue: list[Accumulator] = []
        self._generating = 0
        self._executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix="granite-local")

    @property
    def model(self) -> str:  # type: ignore[override]
        """A readable name: the GGUF file's name."""
        return model_name(self.reference)

    def destination(self, request: Request) -> str:
        return f"local llama.cpp: {self.model}" + (" (raw completion)" if request.raw else "")

    def label(self, model: str, *, raw: bool = False) -> str:
        return f"{model} · local llama.cpp" + (RAW_WORDS if raw else self._framing_words())

    def _framing_words(self) -> str:
        """How the prompt is made, when it is not the GGUF's own template: the status line says so."""
        if self.framing == PLAIN:
            return " · plain framing (base model)"
        chosen = self._template_chosen()
        return f" · template {chosen['chat_format']}" if "chat_format" in chosen else " · Jinja template chosen" if chosen else ""

    @property
    def framing(self) -> str:
        """``plain`` for a base model (a GGUF with no chat template, none chosen, or ``template="plain"``), else
        ``template``.  Known without loading the model: from the GGUF's header when the file is here, else from
        the loaded model; a file not here is framed as when it was here (``remembered``, from the recordings' cache),
        else assumed to carry its template (IBM's Granite GGUF does)."""
        chosen = self._chosen_format()
        if chosen is not None or self.chat_template is not None:
            return PLAIN if chosen == PLAIN else "template"
        if self._pool is not None and self._pool.template is not None:
            return self._pool.template.framing
        path = local_file(self.reference)
        if path is None:
            return (self._remembered(self.model) if self._remembered is not None else None) or "template"
        return "template" if has_chat_template(path) else PLAIN

    def _chosen_format(self) -> str | None:
        """The chat format chosen (``template=``, or ``GRANITE_LOCAL_CHAT_FORMAT`` when no Jinja template is given)."""
        return self.chat_format or (explicit_chat_format() if self.chat_template is None else None)

    def default_tool_mode(self, supported: Sequence[str] | None) -> Literal["native", "prompted"]:
        """Prompted: the model reads Granite's ``<tool_call>`` convention from its system message."""
        return "prompted"

    def schema_method(self, supported: Sequence[str] | None) -> SchemaMethod:
        """A grammar built from the schema constrains every token: the reply cannot have another shape."""
        return "grammar"

    def schema_methods(self) -> tuple[SchemaMethod, ...]:
        return ("grammar", "prompted")  # prompted: to see what the model writes when nothing constrains it

    def sampler_defaults(self) -> dict[str, Any]:
        """What llama.cpp samples with when a request does not set a parameter (the sampling lens starts there)."""
        return dict(_chat_defaults())

    def model_file(self) -> tuple[str, Path | None]:
        """The GGUF's name, and its path when the file is here already (without loading or downloading it)."""
        return self.model, self.model_path()

    def __repr__(self) -> str:
        return f"LocalClient(model={self.model!r}, instances={self.instances})"

    def _get_pool(self) -> Pool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = Pool(resolve_model(self.reference), self.instances, self.n_ctx, self.prefix_reuse, self.chat_template,
                                  self.chat_format)
            return self._pool

    @property
    def context_loaded(self) -> int:
        """The largest llama.cpp context loaded so far (0 before the model is loaded)."""
        return self._pool.n_ctx if self._pool is not None and self._pool.template is not None else 0

    def describe(self, request: Request) -> dict[str, Any]:
        """What the model is given for ``request``, without loading it: the messages (and documents and tools)
        its chat template turns into the prompt, and llama.cpp's sampling arguments.  ``prompt_preview``
        shows the prompt text itself, which needs the model's template and tokenizer."""
        if request.raw:  # no template and no framing: the text is all the model reads
            return {"prompt": request.prompt, **request.sampling.for_target("llama_cpp")}
        described: dict[str, Any] = {"messages": [dict(m) for m in request.messages]}
        described |= self._template_chosen()
        if self._chosen_format() == PLAIN:  # plain framing chosen (a GGUF without a template gets it by itself, and
            described["framing"] = PLAIN  # its fingerprint, which a replay without the file remembers, keys that)
        if request.documents:
            described["documents"] = [dict(d) for d in request.documents]
        if request.tools:
            described["tools"] = chat_tools(request.tools)
        if _constrained(request):  # the shape llama-cpp-python constrains by: a grammar made from the schema
            described["response_format"] = {"type": "json_object", "schema": dict(request.structure.schema)}  # type: ignore[union-attr]
        return {**described, **request.sampling.for_target("llama_cpp")}

    def _template_chosen(self) -> dict[str, str]:
        """A template chosen instead of the GGUF's own (which its fingerprint covers): it changes the prompt, so it is
        shown and keyed; a Jinja source by its hash, not its text."""
        if self.chat_template is not None:
            return {"chat_template": "sha256:" + hashlib.sha256(self.chat_template.encode()).hexdigest()[:16]}
        chosen = self.chat_format or explicit_chat_format()
        return {"chat_format": chosen} if chosen and chosen != PLAIN else {}

    def model_path(self) -> Path | None:
        """The GGUF file when it is here already (for the record/replay key), without loading or downloading it."""
        return existing_path(self.reference)

    def prompt_preview(self, request: Request) -> tuple[str, int]:
        """The exact text the model reads for ``request`` after its chat template (any default system prompt
        the template adds included, an assistant prefix at the end) and its exact token count.

        Loads the model if no instance is loaded yet, and waits for one if all are generating.
        """
        pool = self._get_pool()
        with pool.instance() as slot:
            prompt = pool.prompt(slot, request)
        return prompt.text, len(prompt.tokens)

    def count_prompt_tokens(self, request: Request) -> int:
        """The prompt's exact token count (what the reply's ``usage.prompt_tokens`` will say)."""
        return self.prompt_preview(request)[1]

    async def stream(self, request: Request, acc: Accumulator, on_update: UpdateCallback | None = None) -> Result:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        worker = loop.run_in_executor(self._executor, self._generate, request, emit, stop)
        self._queue.append(acc)
        self._say_places()
        try:
            while (item := await events.get()) is not _END:
                if isinstance(item, errors.GraniteError):
                    item.result = acc.result(error=item.message)
                    raise item
                if item is _STARTED:  # the model is on it: its times count from now, not from when it queued
                    self._queue.remove(acc)
                    self._generating += 1
                    acc.sent, acc.note = True, None
                    acc.restart_clock()
                    self._say_places()
                    continue
                seen = acc.chunks
                for event in item:
                    acc.feed(event)
                if on_update is not None and acc.chunks != seen:
                    on_update(acc)
        finally:
            stop.set()  # ends generation at the next token if we were cancelled
            if acc in self._queue:
                self._queue.remove(acc)
            elif acc.sent:
                self._generating -= 1
            self._say_places()
        await worker
        return acc.result()

    def _say_places(self) -> None:
        """Each queued reply says how many are ahead of it: the model serves ``instances`` at a time, so a queued
        column is waiting its turn, not stuck."""
        busy = max(0, self._generating - self.instances + 1)
        for place, waiting in enumerate(self._queue):
            waiting.note = f"queued ({place + busy} ahead)" if place + busy else "starting"

    def _generate(self, request: Request, emit: Callable[[Any], None], stop: threading.Event) -> None:
        """Runs in the executor: stream llama.cpp's chunks to the loop as typed events."""
        try:
            if stop.is_set():  # cancelled while queued for a thread
                return
            pool = self._get_pool()
            with pool.instance() as slot:
                if not stop.is_set():
                    emit(_STARTED)
                    self._reply(pool, slot, request, emit, stop)
        except errors.GraniteError as exc:
            emit(exc)
        except Exception as exc:  # anything llama.cpp raises ends this reply, not the kernel
            emit(LocalModelError(f"llama.cpp failed during the reply ({type(exc).__name__}: {exc})."))
        finally:
            emit(_END)

    def _reply(self, pool: Pool, slot: Slot, request: Request, emit: Callable[[Any], None], stop: threading.Event) -> None:
        prompt = pool.prompt(slot, request)
        limit = reply_limit(len(prompt.tokens), request.sampling.get("max_tokens"), pool.trained, self.n_ctx)
        pool.fit(slot, context_size(len(prompt.tokens) + limit, pool.trained, self.n_ctx))
        arguments = _arguments(request, prompt, limit)
        framing = ", raw" if request.raw else "" if pool.template is None or pool.template.framing != PLAIN else ", plain framing"
        emit([ChunkMeta(self.model, f"llama.cpp (local{framing})")])  # the saved metadata names the framing
        llm = slot.llm
        reused = slot.prefix.read(prompt.tokens)  # the prompt's logits are ready: create_completion samples at once
        llm.picks = 0
        probe = Probe.attach(llm, request, arguments)
        try:
            finished = self._relay(llm.create_completion(prompt.tokens, stream=True, **arguments), probe, emit, stop)
        finally:
            llm.probe = None
        if not finished:
            return
        last = [TokenLogprobs(rest, "raw")] if probe is not None and (rest := probe.texts.finish()) else []
        prompt_tokens, tokens = len(prompt.tokens), generated_tokens(llm)
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=tokens, total_tokens=prompt_tokens + tokens, cost=0.0,
                      cached_tokens=reused)  # as OpenAI's cached_tokens: prompt tokens read earlier, not again
        emit([*last, UsageReport(usage), Done()])

    @staticmethod
    def _relay(stream: Any, probe: Probe | None, emit: Callable[[Any], None], stop: threading.Event) -> bool:
        """Send llama.cpp's completion chunks on as events; False when stopped before the end."""
        try:
            for chunk in stream:
                if stop.is_set():
                    return False
                events = _completion_events(chunk)
                if probe is not None and (shown := probe.texts.streamed(_text_of(events))):
                    events.append(TokenLogprobs(shown, "raw"))
                if events:
                    emit(events)
        finally:
            stream.close()
        return True

    async def _fetch_models(self, refresh: bool) -> dict[str, ModelInfo]:
        trained = self._pool.trained if self._pool is not None else 0
        info = ModelInfo(id=self.model, name=f"{self.model} (local, llama.cpp)", context_length=trained or self.n_ctx,
                         prompt_price=0.0, completion_price=0.0, supported_parameters=local_parameters())
        return {info.id: info}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _completion_events(chunk: Mapping[str, Any]) -> list[Event]:
    """The events of one ``create_completion`` chunk: its ``text`` (chat chunks say ``delta.content``) and its end."""
    events: list[Event] = []
    for choice in chunk.get("choices") or ():
        if choice.get("text"):
            events.append(TextDelta(str(choice["text"])))
        if choice.get("finish_reason"):
            events.append(Finish(str(choice["finish_reason"])))
    return events


def _text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))
