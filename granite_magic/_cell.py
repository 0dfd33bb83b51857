"""The ``%%granite`` grammar, in both directions, from one table.

Every option is an ``Option`` row: its flags and help, where its value goes in a
``CellRequest`` (``into``), how a parsed value becomes that value (``read``) and
how that value is written back as words (``spell``).  ``parse_cell`` walks the
table to turn a cell into a ``CellRequest`` (every value validated here, once);
``to_cell`` walks the same table to write a ``CellRequest`` back as cell text,
which is how the panel's "Copy as cell" spells exactly the request it would
send.  The sampling parameters are rows made from the parameter table, and the
options of ``%%granite?`` help are written from the rows too.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import json
import keyword
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from . import _params
from ._errors import InvalidParameterError
from ._params import Param, Sampling

if TYPE_CHECKING:
    from IPython.core.magic_arguments import MagicArgumentParser

    from ._comparison import RunSpec
    from ._spec import OutputSchema
    from ._tools import Tool
    from ._turn import Turn
    from ._vocab import ToolMode, Via

# Loading the extension imports this module and writes the help from its table: the argument parser is
# built by the first cell, and the session, the client and asyncio are imported then (or by the warm-up).

__all__ = ["FORMATS", "CellRequest", "Option", "Reading", "build_help", "build_parser", "grammar", "interpolate", "options",
           "parse_cell", "read_schema", "to_cell"]

Format = Literal["markdown", "text", "code", "json"]
FORMATS: tuple[Format, ...] = get_args(Format)

Spelled = Sequence[Sequence[str]]  # the words after the flag, once per occurrence of the option (none: left out)


@dataclass(frozen=True)
class Reading:
    """What reading a cell's options may look at besides the options."""

    namespace: Mapping[str, Any]
    cwd: Path
    history: Sequence[str] | None = None  # the cells as typed, this one last (for --cell)


def _as_is(value: Any, reading: Reading) -> Any:
    return value


def _word(value: Any) -> Spelled:
    return [[str(value)]]


def _number(value: float) -> Spelled:
    return [[repr(value)]]


def _switch(value: bool) -> Spelled:
    return [[]] if value else []


def _joined(values: Sequence[Any]) -> Spelled:
    return [[",".join(map(str, values))]]


@dataclass(frozen=True)
class Option:
    """One ``%%granite`` option.

    ``into`` is where its value goes in a ``CellRequest``, a dotted path: ``"out"``, ``"turn.model"``,
    ``"turn.sampling.top_p"``.  ``read`` turns the value argparse gives into that value; ``spell`` turns that
    value back into the words after the flag (``to_cell`` leaves out a value equal to the path's default).
    ``covers`` names the sampling parameters the option's words stand for, which are then not written twice.
    """

    flags: tuple[str, ...]
    into: str
    help: str
    metavar: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)  # argparse's action, choices, type, nargs, const, default
    read: Callable[[Any, Reading], Any] = _as_is
    spell: Callable[[Any], Spelled] = _word
    covers: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        return self.flags[-1].lstrip("-").replace("-", "_")


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _seeds(text: str, reading: Reading) -> tuple[int, ...]:
    from ._comparison import parse_seeds

    return tuple(parse_seeds(text))


def _sweeps(texts: Sequence[str], reading: Reading) -> dict[str, list[Any]]:
    from ._comparison import parse_sweeps

    return parse_sweeps(texts)


def _sweep_words(sweeps: Mapping[str, Sequence[Any]]) -> Spelled:
    return [[f"{name}=" + ",".join(map(repr, values))] for name, values in sweeps.items()]


def _max_steps(n: int, reading: Reading) -> int:
    from ._toolrun import check_max_steps  # the one range, which the Python API's max_steps= meets too

    return check_max_steps(n)


def _probs(k: int, reading: Reading) -> Sampling:
    if not 1 <= k <= 20:
        raise InvalidParameterError(f"--probs {k} is out of range: must be an integer from 1 to 20")
    return Sampling({"logprobs": True, "top_logprobs": k})


def _probs_words(sampling: Mapping[str, Any]) -> Spelled:
    k = sampling.get("top_logprobs")
    return [[str(k)]] if sampling.get("logprobs") is True and k else []


def _timeout(value: float, reading: Reading) -> float:
    if not value > 0:
        raise InvalidParameterError(f"--timeout {value:g} is out of range: must be a number of seconds > 0")
    return value


def _tools(text: str, reading: Reading) -> tuple[Tool, ...]:
    from ._tools import resolve_tools

    return tuple(resolve_tools(_names(text), reading.namespace))


def read_schema(text: str, reading: Reading) -> OutputSchema:
    """``--schema``: a field list (``"sentiment positive|negative, reason"``), or the name of a dataclass, TypedDict,
    pydantic model or JSON Schema dict of the notebook (a name the notebook defines as one of these wins)."""
    from ._spec import output_schema

    named = reading.namespace.get(text.strip()) if text.strip().isidentifier() else None
    if isinstance(named, (type, Mapping)):
        return dataclasses.replace(output_schema(named), source=text.strip())
    return output_schema(text)


def _schema_words(schema: OutputSchema) -> Spelled:
    from ._spec import spec_text

    return [[schema.source or spec_text(schema)]]  # the notebook's name for it, else a text that reads back the same


def _over(name: str, reading: Reading) -> str:
    """``--over NAME``: a variable of the notebook holding the rows (read when the cell runs)."""
    if name not in reading.namespace:
        raise InvalidParameterError(f"--over names {name}, which this notebook does not define")
    return name


def _chat_words(name: str) -> Spelled:
    return [[]] if name == "default" else [[name]]


@functools.cache
def options() -> tuple[Option, ...]:
    """The options besides the sampling parameters (the first call imports the modules that name their choices)."""
    from ._settings import BACKENDS
    from ._vocab import CACHE_MODES, MAX_STEPS, PACES, SCHEMA_MODES, TOOL_MODES, VIAS

    return (
        Option(("-m", "--model"), "turn.model", "model id (default ibm-granite/granite-4.0-h-micro, env GRANITE_MODEL)", "ID"),
        Option(("-s", "--system"), "turn.system", "system prompt", "TEXT"),
        Option(("--base-url",), "turn.base_url", "an OpenAI-compatible API (default OpenRouter, env GRANITE_BASE_URL)", "URL"),
        Option(("--backend",), "turn.backend", "http (OpenRouter or --base-url), local (llama.cpp here: pip install "
               "'granite-magic[local]'), or auto (default, env GRANITE_BACKEND): http with a key or base URL, else local", None,
               {"choices": BACKENDS}),
        Option(("--template",), "turn.template", "the local model's chat template: a llama.cpp chat format (gemma, "
               "chatml, ...), plain (a base model's Question/Answer text), or a Jinja file; default: the GGUF's own, or "
               "plain for a GGUF without one", "NAME|FILE"),
        Option(("--api",), "turn.api", "HTTP request format: OpenAI chat completions (default), OpenAI Responses, or "
               "Anthropic Messages", None, {"choices": _params.APIS}),
        Option(("--raw",), "turn.raw", "continue the cell's text as written: no chat turns, no template, no framing (the "
               "completions endpoint over HTTP); not with --system, --chat, --tools, --context, --docs or --template", None,
               {"action": "store_true"}, spell=_switch),
        Option(("--schema",), "turn.schema", "the reply is JSON of this shape, validated (Result.value) and repaired once: "
               "fields like 'sentiment positive|negative|neutral, reason, score float' (types str int float bool, a|b "
               "choices, [] lists, ': description'), or the name of a dataclass, TypedDict, pydantic model or JSON Schema "
               "dict; a grammar on the local model, the provider's response_format where listed, else the prompt",
               "SPEC|NAME", read=read_schema, spell=_schema_words),
        Option(("--schema-mode",), "turn.schema_mode", "how --schema is obtained: auto (default: a grammar on the local "
               "model, the provider's response_format where listed or probed, else the prompt), or grammar, provider or "
               "prompted by name", None, {"choices": SCHEMA_MODES, "default": "auto"}),
        Option(("--over",), "over", "run the prompt once per row of this DataFrame, list of dicts or list of strings of the "
               "notebook: {column} is the row's value ({item} for strings); the result is a DataFrame (with -o NAME)",
               "NAME", read=_over),
        Option(("--limit",), "limit", "with --over: only the first N rows (try a few first)", "N", {"type": int}),
        Option(("--expect",), "expect", "with --over: score each reply against this column (the schema's field of that name, "
               "or its first, equal to it; a plain reply holding it as a word): the cell shows each setting's accuracy "
               "with a 95 percent interval", "COLUMN"),
        Option(("--sample",), "sample", "with --over: N rows drawn at random (the same N each time)", "N", {"type": int}),
        Option(("--via",), "via", "with --over: what answers the rows: live (default: one request each), batch "
               "(OpenRouter's Batch API at its batch price: run the cell again to resume, even after a restart) or jsonl "
               "(a file for vllm run-batch, see --batch-file)", None, {"choices": VIAS, "default": "live"}),
        Option(("--batch-file",), "batch_file", "with --via jsonl: where to write the batch input file", "PATH"),
        Option(("-o", "--out"), "out", "store the Result (or Comparison) in variable NAME", "NAME"),
        Option(("-f", "--format"), "format", "markdown (default), text, code (fences stripped), json (parsed)", None,
               {"choices": FORMATS, "default": "markdown"}),
        Option(("--chat",), "turn.chat", 'continue conversation NAME (default "default"); otherwise every cell is stateless',
               "NAME", {"nargs": "?", "const": "default"}, spell=_chat_words),
        Option(("--seeds",), "seeds", "side by side over seeds: 1,2,3 or 1-4", "SEEDS", read=_seeds, spell=_joined,
               covers=("seed",)),  # every column's seed comes from --seeds
        Option(("--sweep",), "sweeps", "side by side over a parameter's values, e.g. temperature=0,0.7,1.4 (repeatable, one "
               "per parameter; combines with --seeds)", "NAME=V1,V2", {"action": "append"}, read=_sweeps, spell=_sweep_words),
        Option(("--repeat",), "repeat", "run every column N times and report whether repeats were identical", "N",
               {"type": int, "default": 1}),
        Option(("--concurrency",), "concurrency", "columns streaming at once (default 4)", "N", {"type": int}),
        Option(("--probs",), "turn.sampling", "token probabilities: the K (1 to 20) most likely alternatives of every token, "
               "shaded in the reply, with a sampler lens under it (sets --logprobs and --top-logprobs)", "K", {"type": int},
               read=_probs, spell=_probs_words, covers=("logprobs", "top_logprobs")),
        Option(("--timeout",), "turn.timeout_s", "stop a reply that takes longer than S seconds in all (default: no limit)", "S",
               {"type": float}, read=_timeout, spell=_number),
        Option(("--context",), "context", "describe these variables to the model (DataFrames, arrays, collections, text) in a "
               "context block", "NAME[,NAME]", read=lambda text, reading: _names(text), spell=_joined),
        Option(("--docs",), "docs", "give the model these files as documents (text, Markdown, code, notebooks; globs allowed)",
               "PATH[,PATH]", read=lambda text, reading: _names(text), spell=_joined),
        Option(("--cell",), "cell", "include the source (and output) of cell In[N]; -1 is the cell before this one", "N",
               {"type": int}),
        Option(("--tools",), "tools", "let the model call these functions of the notebook (their schemas come from signatures "
               "and docstrings); the calls run here and their results go back to the model", "NAME[,NAME]", read=_tools,
               spell=lambda tools: _joined([tool.name for tool in tools])),
        Option(("--tool-mode",), "tool_mode", "native (the API's tools), prompted (Granite's <tool_call> convention in the "
               "system message), or auto (default: native when the model's listing names tools)", None,
               {"choices": TOOL_MODES, "default": "auto"}),
        Option(("--approve",), "approve", "ask before running each tool call (y/N in the input prompt under the cell)", None,
               {"action": "store_true"}, spell=_switch),
        Option(("--max-steps",), "max_steps", f"at most N requests in a tool-using turn, 1 to 50 (default {MAX_STEPS}); 1 offers "
               "the tools once and runs none of the calls", "N", {"type": int}, read=_max_steps),
        Option(("--strict",), "turn.strict", "OpenRouter: route only to providers that honour every parameter sent (none "
               "found: a clear error)", None, {"action": "store_true"}, read=lambda on, reading: True if on else None,
               spell=_switch),
        Option(("--cache",), "turn.cache", "record and replay: off, auto (serve recordings, record the rest), record, replay "
               "(never send)", None, {"choices": CACHE_MODES}),
        Option(("--pace",), "turn.pace", "a replay streams instantly (default) or at the recorded pace (original)", None,
               {"choices": PACES, "default": "instant"}),
        Option(("--verify",), "turn.verify", "run live and compare each reply with its recording (drift across days and "
               "machines; replay mode: not checked)", None, {"action": "store_true"}, spell=_switch),
        Option(("--dry-run",), "dry_run", "show the exact request; send nothing", None, {"action": "store_true"}, spell=_switch),
        Option(("--no-interpolate",), "literal", "send {name} literally instead of the value of variable name", None,
               {"action": "store_true"}, spell=_switch),
    )



def _param_option(param: Param) -> Option:
    if param.kind == "stop":  # typed on one line: \n is a newline, and to_cell writes one so
        return Option((param.option,), f"turn.sampling.{param.name}", _param_help(param), param.kind.upper(), {"action": "append"},
                      read=lambda sequences, reading: [_params.read_escapes(s) for s in sequences],
                      spell=functools.partial(_param_words, param))
    return Option((param.option,), f"turn.sampling.{param.name}", _param_help(param), param.kind.upper(), {},
                  spell=functools.partial(_param_words, param))


def _param_help(param: Param) -> str:
    return f"{param.help} Range: {param.range_text}; when not sent: {param.default_text}."


def _param_words(param: Param, value: Any) -> Spelled:
    if param.kind == "stop":
        return [[_params.write_escapes(sequence)] for sequence in value]
    if param.kind == "logit_bias":
        return [[json.dumps({str(k): v for k, v in value.items()})]]
    if param.kind == "bool":
        return [["true" if value else "false"]]
    return [[value if isinstance(value, str) else repr(value)]]


def grammar() -> tuple[Option, ...]:
    """Every option of ``%%granite``: ``options()``, then one per row of the parameter table."""
    return (*options(), *map(_param_option, _params.PARAMETERS))


def build_parser() -> MagicArgumentParser:
    from IPython.core.magic_arguments import MagicArgumentParser

    parser = MagicArgumentParser(  # type: ignore[no-untyped-call]
        prog="%%granite", add_help=False, description="Send the cell to Granite and stream the reply."
    )
    for option in grammar():
        settings: dict[str, Any] = dict(option.settings)
        if option.metavar:
            settings["metavar"] = option.metavar
        parser.add_argument(*option.flags, dest=option.dest, help=option.help, **settings)
    return parser


def build_help(parser: MagicArgumentParser | None = None) -> str:
    """``%%granite?``'s options: every option as the parser knows it (the front end adds its own sections)."""
    parser = parser or build_parser()
    sampling = {p.name for p in _params.PARAMETERS}
    rows: dict[bool, list[str]] = {False: [], True: []}
    for action in parser._actions:
        flags = ", ".join(action.option_strings)
        metavar = action.metavar or ("|".join(action.choices) if action.choices else "")
        rows[action.dest in sampling].append(f"  {flags} {metavar}".rstrip().ljust(34) + f" {action.help}")
    return "\n".join([
        "Send the cell to Granite and stream the reply.", "",
        "%%granite [options]", "<prompt; {name} is replaced by the value of variable name>", "",
        "Options:", *rows[False], "",
        "Sampling parameters (only those you set are sent; --stop may repeat):", *rows[True],
    ])


# --- {name} ---------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_]\w*)\}\}|\{([A-Za-z_]\w*)\}")


def interpolate(template: str, namespace: Mapping[str, Any]) -> str:
    """Replace ``{name}`` by the value of ``name``; leave everything else verbatim.

    Only a bare identifier that exists in ``namespace`` is replaced, so code and
    JSON with braces (``{"a": 1}``, ``{x for x in y}``, ``{unknown}``) pass through
    untouched; ``{{name}}`` gives a literal ``{name}``.
    """

    def replace(match: re.Match[str]) -> str:
        escaped, name = match.groups()
        if escaped is not None:
            return "{" + escaped + "}"
        if name not in namespace:
            return match.group(0)
        try:
            return str(namespace[name])
        except Exception as exc:  # the user's __str__: any failure is theirs to see, as one line
            raise InvalidParameterError(f"{{{name}}} could not be turned into text ({type(exc).__name__}: {exc})") from None

    return _PLACEHOLDER.sub(replace, template)


# --- a whole cell ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CellRequest:
    """Everything a ``%%granite`` cell asks for, validated."""

    turn: Turn
    seeds: tuple[int, ...] = ()
    sweeps: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    repeat: int = 1
    concurrency: int | None = None
    out: str | None = None
    format: Format = "markdown"
    dry_run: bool = False
    literal: bool = False  # --no-interpolate: the prompt is sent as written
    warnings: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_mode: ToolMode = "auto"
    approve: bool = False
    max_steps: int | None = None
    # What the cell points at, as written (the turn holds what they say: its context block and documents).
    over: str | None = None  # --over: the notebook variable whose rows the prompt goes over
    expect: str | None = None  # --expect: the column each row's reply is scored against
    limit: int | None = None  # --limit / --sample: a few of those rows
    sample: int | None = None
    via: Via = "live"  # --via: what answers the rows
    batch_file: str | None = None  # --batch-file: the input file --via jsonl writes
    context: tuple[str, ...] = ()  # --context: variable names
    docs: tuple[str, ...] = ()  # --docs: paths and globs, from the working directory
    cell: int | None = None  # --cell: an earlier cell's number

    @property
    def is_grid(self) -> bool:
        return bool(self.seeds or self.sweeps or self.repeat != 1)

    def plan(self) -> list[RunSpec] | None:
        """The comparison's columns, or None for a single run."""
        from ._comparison import plan_runs

        return plan_runs(self.seeds, self.sweeps, self.repeat) if self.is_grid else None


def parse_cell(line: str, cell: str, namespace: Mapping[str, Any], *, defaults: Sampling | None = None,
               parser: MagicArgumentParser | None = None, cwd: Path | None = None,
               history: Sequence[str] | None = None) -> CellRequest:
    """A cell's options and body as a ``CellRequest``; InvalidParameterError (one line) for anything wrong.

    ``defaults`` (``%config GraniteMagics.default_params``) are sent unless the cell sets them; ``cwd`` is where
    ``--docs`` paths start, and ``history`` the cells as typed, this one last (for ``--cell``).
    """
    from IPython.core.error import UsageError

    from ._context import load_documents
    from ._turn import Turn

    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise InvalidParameterError(f"the options do not parse ({exc}): check the quotes") from None
    try:
        args = (parser or build_parser()).parse_args(words)
    except UsageError as exc:
        raise InvalidParameterError(f"{exc} (see %%granite? for the options)") from None
    reading = Reading(namespace, cwd or Path.cwd(), history)
    values: dict[str, Any] = {}
    for option in grammar():
        value = getattr(args, option.dest)
        if value is not None:
            values[option.into] = option.read(value, reading)

    sampled = {path.removeprefix("turn.sampling."): values.pop(path) for path in list(values) if path.startswith("turn.sampling.")}
    sampling = (defaults or Sampling()) | Sampling(sampled) | values.pop("turn.sampling", Sampling())
    fields = {path.removeprefix("turn."): values.pop(path) for path in list(values) if path.startswith("turn.")}
    if values.get("over"):  # {name} is each row's column, filled per row: not the notebook's variables
        values["literal"] = True
    prompt = cell if values.get("literal") else interpolate(cell, namespace)
    if not prompt.strip():
        raise InvalidParameterError("the cell has no prompt: write it on the lines below %%granite")
    docs = values.get("docs", ())
    turn = Turn(prompt=prompt.strip("\n"), sampling=sampling, context=_context(values.get("context", ()), values.get("cell"), reading),
                documents=tuple(load_documents(docs, base=reading.cwd)) if docs else (), **fields)
    request = CellRequest(turn=turn, warnings=_out_warnings(values.get("out")), **values)
    _check_raw(request)
    _check_over(request)
    _check_grid(request)
    return request


def _context(names: Sequence[str], cell: int | None, reading: Reading) -> str | None:
    """The system-side block of what the cell points at: variables and an earlier cell."""
    from ._context import cell_source, context_block

    namespace = reading.namespace
    blocks = []
    if names:
        missing = [name for name in names if name not in namespace]
        if missing:
            raise InvalidParameterError(f"--context names {', '.join(missing)}, which this notebook does not define")
        blocks.append(context_block([(name, namespace[name]) for name in names]))

    if cell is not None:
        typed = reading.history if reading.history is not None else namespace.get("In") or []
        blocks.append("The user points at this notebook cell:\n"
                      + cell_source(typed, namespace.get("Out") or {}, cell))  # the running cell is the last entry
    return "\n\n".join(b for b in blocks if b) or None


def _check_raw(request: CellRequest) -> None:
    if request.turn.schema is not None and request.tools:
        raise InvalidParameterError("--schema asks for one JSON reply and --tools for calls before an answer: use one of them")
    if request.turn.raw and request.tools:
        raise InvalidParameterError("--raw continues the prompt as written, with no chat turn, so tools cannot go with it: "
                                    "leave out --tools or --raw")


def _check_over(request: CellRequest) -> None:
    if request.over is None:
        if (request.limit is not None or request.sample is not None or request.expect is not None or request.via != "live"
                or request.batch_file is not None):
            raise InvalidParameterError("--limit, --sample, --expect, --via and --batch-file are about the rows of --over: "
                                        "give --over NAME too")
        return
    from ._batch import check_via

    check_via(request.via, request.batch_file)
    for flag, given in (("--chat", request.turn.chat is not None), ("--tools", bool(request.tools)), ("--raw", request.turn.raw)):
        if given:
            raise InvalidParameterError(f"--over runs the prompt once per row: it cannot take {flag}")


def _check_grid(request: CellRequest) -> None:
    if request.concurrency is not None and request.concurrency < 1:
        raise InvalidParameterError(f"--concurrency {request.concurrency} is out of range: must be an integer >= 1")
    if request.is_grid:
        if request.turn.chat is not None:
            raise InvalidParameterError("--chat cannot be combined with --seeds, --sweep or --repeat")
        if request.tools:
            raise InvalidParameterError("--tools cannot be combined with --seeds, --sweep or --repeat")
        request.plan()  # refuses grids that are too large or name a seed twice, before anything is sent


def _out_warnings(name: str | None) -> tuple[str, ...]:
    if name is None:
        return ()
    if not name.isidentifier() or keyword.iskeyword(name):
        raise InvalidParameterError(f"-o {name!r} is not a variable name: use letters, digits and _, not starting with a digit")
    if hasattr(builtins, name):
        return (f"-o {name} hides Python's built-in {name}() in this notebook (del {name} brings it back).",)
    return ()


def to_cell(request: CellRequest) -> str:
    """The cell text that asks for exactly ``request``: ``parse_cell`` of it gives ``request`` back.

    Each option of the table writes its value unless it is the default; a prompt with braces is sent as
    written (``--no-interpolate``), since a ``CellRequest`` holds it already interpolated.
    """
    from ._turn import Turn

    blank = CellRequest(Turn(""))
    if "{" in request.turn.prompt:
        request = dataclasses.replace(request, literal=True)
    words: list[str] = []
    covered: set[str] = set()
    for option in grammar():
        if option.into in covered:
            continue
        value = _at(request, option.into)
        if value == _at(blank, option.into):
            continue
        spelled = option.spell(value)
        covered.update(f"turn.sampling.{name}" for name in option.covers if spelled)
        words += [word for occurrence in spelled for word in (option.flags[0], *occurrence)]
    return " ".join(["%%granite", *(shlex.quote(w) for w in words)]) + "\n" + request.turn.prompt


def _at(request: CellRequest, path: str) -> Any:
    """The value at a dotted path (``"turn.sampling.top_p"``): attributes, then a mapping's entries."""
    value: Any = request
    for name in path.split("."):
        value = value.get(name) if isinstance(value, Mapping) else getattr(value, name)
    return value
