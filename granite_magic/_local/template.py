"""The prompt: the model's own chat template turning a ``Request``'s messages into text and tokens.

The prompt is rendered here from the model's own chat template (``Template``): the GGUF's Jinja
template, a chat format or Jinja file chosen instead (``--template``), or, for a GGUF with no template (a
base model, never tuned on chat turns), the plain framing base models are prompted with: the system text,
then ``Question: ...`` / ``Answer:`` turns, the reply cut at the next ``Question:``.  Rendering it
ourselves is what lets the prompt be shown and counted exactly before anything runs
(``LocalClient.prompt_preview``), documents reach a template that takes them, and an assistant
prefix be continued rather than closed (branching in the sampling lens).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _errors as errors
from .._shapes import Request, chat_tools
from .model import PLAIN, LocalModelError, chat_format_for


@dataclass(frozen=True)
class Prompt:
    """What the model reads for a request: the text after its chat template, and that text's exact tokens."""

    text: str
    tokens: list[int]
    stop: list[str]  # the template's end-of-turn strings, added to the user's stop
    stopping: Any  # llama-cpp-python's StoppingCriteriaList (a Jinja template stops on its EOS token id), or None


class Template:
    """How one model turns messages into prompt text: its GGUF's Jinja template, or a llama-cpp-python format.

    A Jinja template is rendered by llama-cpp-python's own ``Jinja2ChatFormatter`` (its sandbox,
    ``raise_exception``, ``strftime_now``, ``tojson``, the model's BOS and EOS token texts, the generation
    prompt), so the text is the one ``create_chat_completion`` would have built.  ``reads`` is what the
    template looks at, so documents and tools go to a template only if it has a place for them.
    """

    framing = "template"  # what the status line and the saved metadata call how the prompt is made

    def __init__(self, name: str, formatter: Callable[..., Any], reads: frozenset[str], *, jinja: bool = False) -> None:
        self.name, self.formatter, self.reads, self.jinja = name, formatter, reads, jinja

    @classmethod
    def of(cls, llm: Any, template: str | None = None, chat_format: str | None = None) -> Template:
        """``template`` (Jinja) if given, else ``chat_format`` (a llama-cpp-python format name, or ``plain``), else
        the format named by ``GRANITE_LOCAL_CHAT_FORMAT``, the GGUF's template, or for a GGUF without one (a base
        model) the plain framing."""
        chosen = None if template else chat_format or chat_format_for(llm)
        if chosen == PLAIN:
            return PlainFraming()
        source = template or (None if chosen else (getattr(llm, "metadata", {}) or {}).get("tokenizer.chat_template"))
        if source:
            return cls._jinja(llm, source)
        return cls(chosen or "llama-2", _registered_formatter(chosen or "llama-2"), frozenset())

    @classmethod
    def _jinja(cls, llm: Any, source: str) -> Template:
        from jinja2 import meta
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos, bos = int(llm.token_eos()), int(llm.token_bos())
        formatter = Jinja2ChatFormatter(template=source, eos_token=_token_text(llm, eos), bos_token=_token_text(llm, bos),
                                        stop_token_ids=[eos])
        environment = formatter._environment.environment  # the formatter's own (extensions included), to parse with
        reads = frozenset(meta.find_undeclared_variables(environment.parse(source)))
        return cls("the model's Jinja template", formatter, reads, jinja=True)

    def render(self, llm: Any, request: Request) -> Prompt:
        """The prompt for ``request``; an assistant message at the end is a prefix the reply continues."""
        messages, prefix = _split_prefix(request.messages)
        documents: list[dict[str, str]] | None = [dict(d) for d in request.documents] or None
        if documents and "documents" not in self.reads:  # no place for them: a delimited block in the system message
            messages, documents = _with_documents_block(messages, request.documents), None
        response = self._format(messages, documents, self._tools(request))
        text = response.prompt + prefix  # the generation prompt is open: the model goes on from the prefix
        # As llama-cpp-python's chat handler does: special tokens in the text are parsed, and a BOS is added
        # unless the template wrote its own.  The BOS is shown too: the model reads it.
        add_bos = not getattr(response, "added_special", False)
        tokens = list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))
        bos = int(llm.token_bos())
        if add_bos and tokens[:1] == [bos] and not text.startswith(_token_text(llm, bos)):
            text = _token_text(llm, bos) + text
        stop = response.stop
        return Prompt(text, tokens, [stop] if isinstance(stop, str) else list(stop or ()), response.stopping_criteria)

    def _tools(self, request: Request) -> list[dict[str, Any]] | None:
        if not request.tools:
            return None
        if "tools" not in self.reads:
            raise errors.InvalidParameterError(
                f"This model's chat format ({self.name}) has no place for tools given natively: use tool_mode='prompted'.",
                names=("tool_mode",))
        return chat_tools(request.tools)

    def _format(self, messages: list[dict[str, Any]], documents: list[dict[str, str]] | None, tools: list[dict[str, Any]] | None) -> Any:
        extra: dict[str, Any] = {"documents": documents} if documents else {}
        try:
            response = self.formatter(messages=messages, tools=tools, **extra)
            system = "\n\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "system")
            if system and not self.jinja and system not in response.prompt:
                # Some built-in formats drop the system message (llama-cpp-python's "gemma" does); Gemma's own
                # template puts it at the start of the first user turn, and so do we: nothing the user gave is lost.
                response = self.formatter(messages=_system_in_first_turn(messages), tools=tools, **extra)
        except Exception as exc:  # jinja2's errors and the template's own raise_exception (ValueError)
            raise errors.InvalidParameterError(f"The model's chat template refused this conversation ({type(exc).__name__}: {exc}).") from None
        return response


def raw_prompt(llm: Any, text: str) -> Prompt:
    """A raw completion's prompt (``--raw``): the text as written, tokenized as llama-cpp-python's ``create_completion``
    does (special tokens parsed, so chat markers typed by hand are the model's own; a BOS first unless written)."""
    bos = int(llm.token_bos())
    written = bos != -1 and text.startswith(_token_text(llm, bos))
    tokens = list(llm.tokenize(text.encode("utf-8"), add_bos=not written, special=True))
    shown = _token_text(llm, bos) + text if tokens[:1] == [bos] and not written else text
    return Prompt(shown, tokens, [], None)


# The plain framing's turn markers: a base model continues a text of questions and answers, and the next
# "Question:" it starts is where its answer ended.
QUESTION, ANSWER = "Question:", "Answer:"
PLAIN_STOP = "\n" + QUESTION
_RESULT = re.compile(r"<tool_response>\n(.*?)\n</tool_response>", re.DOTALL)


class PlainFraming(Template):
    """How a base model is prompted: plain text, no chat-turn markers it was never trained on.

    The system text comes first, then each user turn as ``Question: ...`` and each reply as ``Answer: ...``; the
    prompt ends with ``Answer:``, and the reply is cut where the model starts the next ``Question:``.  Tool results
    (Granite's ``<tool_response>`` turns) are ``Result: ...`` lines before the next ``Answer:``; when the system text
    teaches ``<tool_call>`` blocks, the reply also ends at ``</tool_call>`` (the scanner reads an unclosed call).
    """

    framing = PLAIN

    def __init__(self) -> None:
        super().__init__("plain (a base model: no chat template)", _no_formatter, frozenset())

    def _format(self, messages: list[dict[str, Any]], documents: list[dict[str, str]] | None, tools: list[dict[str, Any]] | None) -> Any:
        from types import SimpleNamespace

        from .._granite_tools import CALL_CLOSE, CALL_OPEN

        system = "\n\n".join(str(m.get("content") or "").strip() for m in messages if m.get("role") == "system")
        parts = [f"{system}\n\n"] if system else []
        for message in (m for m in messages if m.get("role") != "system"):
            content = str(message.get("content") or "").strip()
            if message.get("role") == "assistant":
                parts.append(f" {content}\n\n")
            elif results := _RESULT.findall(content):
                parts.append("".join(f"Result: {result}\n" for result in results) + ANSWER)
            else:
                parts.append(f"{QUESTION} {content}\n{ANSWER}")
        stop = [PLAIN_STOP, *([CALL_CLOSE] if CALL_OPEN in system else [])]
        return SimpleNamespace(prompt="".join(parts), stop=stop, stopping_criteria=None, added_special=False)


def _no_formatter(**_: Any) -> Any:
    raise NotImplementedError  # the plain framing writes its text itself


TEMPLATE_FILE_BYTES = 1 << 20  # a chat template is a few kilobytes: a bigger file is not one


def read_template(template: str) -> tuple[str | None, str | None]:
    """``template=`` (``--template NAME|FILE``) as (Jinja source, chat format name): a Jinja file's text, or a
    llama-cpp-python chat format's name (or ``plain``, the framing of a base model).  Refused before anything runs."""
    path = Path(template).expanduser()
    if path.is_file():
        try:
            with open(path, "rb") as file:
                source = file.read(TEMPLATE_FILE_BYTES + 1)
        except OSError as exc:
            raise errors.InvalidParameterError(f"template={template!r} could not be read ({exc.strerror})", names=("template",)) from None
        if len(source) > TEMPLATE_FILE_BYTES:
            raise errors.InvalidParameterError(f"template={template!r} is over 1 MB: not a chat template", names=("template",))
        return source.decode("utf-8", errors="replace"), None
    if template == PLAIN:
        return None, PLAIN
    names = chat_format_names()
    if template in names:
        return None, template
    if "/" in template or "." in template:
        raise errors.InvalidParameterError(f"template={template!r} is not a file", names=("template",))
    raise errors.InvalidParameterError(f"template={template!r} is neither a file nor a chat format: use a Jinja file, plain, "
                                       f"or one of {', '.join(names)}", names=("template",))


def chat_format_names() -> list[str]:
    """llama-cpp-python's registered chat formats."""
    from llama_cpp import llama_chat_format

    return sorted(llama_chat_format.LlamaChatCompletionHandlerRegistry()._chat_handlers)  # type: ignore[no-untyped-call]


def _token_text(llm: Any, token: int) -> str:
    """A special token's text as llama-cpp-python gives it to templates (``bos_token``, ``eos_token``)."""
    return "" if token == -1 else str(llm._model.token_get_text(token))


def _registered_formatter(name: str) -> Callable[..., Any]:
    """The prompt formatter behind one of llama-cpp-python's registered chat formats.

    The registry keeps only the completion handler it wraps around each formatter; the formatter is the
    one variable that handler closes over (``chat_formatter_to_chat_completion_handler``).
    """
    from llama_cpp import llama_chat_format

    try:
        handler = llama_chat_format.get_chat_completion_handler(name)
    except ValueError:
        raise LocalModelError(f"llama-cpp-python has no chat format {name!r} (GRANITE_LOCAL_CHAT_FORMAT).") from None
    code, closure = getattr(handler, "__code__", None), getattr(handler, "__closure__", None)
    cells = dict(zip(code.co_freevars if code else (), closure or (), strict=False))
    if "chat_formatter" not in cells:
        raise LocalModelError(f"The chat format {name!r} is a handler of its own, not a prompt format: "
                              "use a GGUF with a chat template, or another GRANITE_LOCAL_CHAT_FORMAT.")
    formatter: Callable[..., Any] = cells["chat_formatter"].cell_contents
    return formatter


def _split_prefix(messages: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The messages to render, and the text of a final assistant message the reply continues ("" if none)."""
    rendered = [dict(m) for m in messages]
    last = rendered[-1] if rendered else {}
    if last.get("role") == "assistant" and isinstance(last.get("content"), str) and not last.get("tool_calls"):
        return rendered[:-1], str(last["content"])
    return rendered, ""


def _with_documents_block(messages: list[dict[str, Any]], documents: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """The documents as the delimited block the HTTP backends send, at the end of the system message."""
    from .._context import Document, documents_block

    # The request's documents are the template's {doc_id, title, text}: the file kind is not among them.
    block = documents_block([Document(d.get("title") or f"document {d.get('doc_id', i)}", d.get("text", ""), d.get("kind", "text"))
                             for i, d in enumerate(documents, start=1)])
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{block}"}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def _system_in_first_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system = "\n\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "system")
    turns = [m for m in messages if m.get("role") != "system"]
    first = next((i for i, m in enumerate(turns) if m.get("role") == "user"), None)
    if first is None:
        return [{"role": "user", "content": system}, *turns]
    turns[first] = {**turns[first], "content": f"{system}\n\n{turns[first].get('content') or ''}"}
    return turns
