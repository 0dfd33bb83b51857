"""The ``%%granite`` grammar, in both directions.

``parse_cell`` turns a cell's option line and body into a ``CellRequest`` (every
value validated here, once); ``to_cell`` writes a ``CellRequest`` back as cell
text, which is how the panel's "Copy as cell" spells exactly the request it
would send.  The parser is built from two tables, ``OPTIONS`` and the
parameter table, and ``%%granite?`` help is generated from the parser.
"""

from __future__ import annotations

import builtins
import json
import keyword
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser

from . import _params
from ._errors import InvalidParameterError
from ._params import Param, Sampling, get_param

if TYPE_CHECKING:
    from ._comparison import RunSpec
    from ._session import Turn
    from ._tools import Tool

# Loading the extension builds the parser and its help from this module: the session,
# the client and asyncio are imported by the first cell, not here.

__all__ = ["FORMATS", "OPTIONS", "CellRequest", "Option", "build_help", "build_parser", "interpolate", "parse_cell", "to_cell"]

Format = Literal["markdown", "text", "code", "json"]
FORMATS: tuple[Format, ...] = ("markdown", "text", "code", "json")


@dataclass(frozen=True)
class Option:
    """One option of ``%%granite`` besides the sampling parameters (those come from ``PARAMETERS``)."""

    flags: tuple[str, ...]
    help: str
    metavar: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # argparse's action, choices, type, nargs, const, default

    @property
    def dest(self) -> str:
        return self.flags[-1].lstrip("-").replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option(("-m", "--model"), "model id (default ibm-granite/granite-4.0-h-micro, env GRANITE_MODEL)", "ID"),
    Option(("-s", "--system"), "system prompt", "TEXT"),
    Option(("--base-url",), "an OpenAI-compatible API (default OpenRouter, env GRANITE_BASE_URL)", "URL"),
    Option(("--backend",), "http (OpenRouter or --base-url), local (llama.cpp here: pip install 'granite-magic[local]'), "
           "or auto (default, env GRANITE_BACKEND): http with a key or base URL, else local", None,
           {"choices": ("auto", "http", "local")}),
    Option(("--api",), "HTTP request format: OpenAI chat completions (default), OpenAI Responses, or Anthropic Messages",
           None, {"choices": ("chat", "responses", "messages")}),
    Option(("-o", "--out"), "store the Result (or Comparison) in variable NAME", "NAME"),
    Option(("-f", "--format"), "markdown (default), text, code (fences stripped), json (parsed)", None,
           {"choices": FORMATS, "default": "markdown"}),
    Option(("--chat",), 'continue conversation NAME (default "default"); otherwise every cell is stateless', "NAME",
           {"nargs": "?", "const": "default"}),
    Option(("--seeds",), "side by side over seeds: 1,2,3 or 1-4", "SEEDS"),
    Option(("--sweep",), "side by side over a parameter's values, e.g. temperature=0,0.7,1.4 (repeatable, one per parameter; "
           "combines with --seeds)", "NAME=V1,V2", {"action": "append"}),
    Option(("--repeat",), "run every column N times and report whether repeats were identical", "N", {"type": int, "default": 1}),
    Option(("--concurrency",), "columns streaming at once (default 4)", "N", {"type": int}),
    Option(("--probs",), "token probabilities: the K (1 to 20) most likely alternatives of every token, shaded in the reply, "
           "with a sampler lens under it (sets --logprobs and --top-logprobs)", "K", {"type": int}),
    Option(("--timeout",), "stop a reply that takes longer than S seconds in all (default: no limit)", "S", {"type": float}),
    Option(("--context",), "describe these variables to the model (DataFrames, arrays, collections, text) in a context block",
           "NAME[,NAME]"),
    Option(("--docs",), "give the model these files as documents (text, Markdown, code, notebooks; globs allowed)", "PATH[,PATH]"),
    Option(("--cell",), "include the source (and output) of cell In[N]; -1 is the cell before this one", "N", {"type": int}),
    Option(("--tools",), "let the model call these functions of the notebook (their schemas come from signatures and "
           "docstrings); the calls run here and their results go back to the model", "NAME[,NAME]"),
    Option(("--tool-mode",), "native (the API's tools), prompted (Granite's <tool_call> convention in the system message), "
           "or auto (default: native when the model's listing names tools)", None, {"choices": ("native", "prompted", "auto")}),
    Option(("--approve",), "ask before running each tool call (y/N in the input prompt under the cell)", None, {"action": "store_true"}),
    Option(("--max-steps",), "at most N requests in a tool-using turn (default 5)", "N", {"type": int}),
    Option(("--strict",), "OpenRouter: route only to providers that honour every parameter sent (none found: a clear error)",
           None, {"action": "store_true"}),
    Option(("--cache",), "record and replay: off, auto (serve recordings, record the rest), record, replay (never send)",
           None, {"choices": ("off", "auto", "record", "replay")}),
    Option(("--pace",), "a replay streams instantly (default) or at the recorded pace (original)", None,
           {"choices": ("instant", "original")}),
    Option(("--verify",), "run live and compare each reply with its recording (drift across days and machines; replay mode: not checked)", None,
           {"action": "store_true"}),
    Option(("--dry-run",), "show the exact request; send nothing", None, {"action": "store_true"}),
    Option(("--no-interpolate",), "send {name} literally instead of the value of variable name", None, {"action": "store_true"}),
)


def build_parser() -> MagicArgumentParser:
    parser = MagicArgumentParser(  # type: ignore[no-untyped-call]
        prog="%%granite", add_help=False, description="Send the cell to Granite and stream the reply."
    )
    for option in OPTIONS:
        settings: dict[str, Any] = dict(option.settings)
        if option.metavar:
            settings["metavar"] = option.metavar
        parser.add_argument(*option.flags, dest=option.dest, help=option.help, **settings)
    for param in _params.PARAMETERS:
        extra: dict[str, Any] = {"action": "append"} if param.kind == "stop" else {}
        parser.add_argument(param.option, dest=param.name, metavar=param.kind.upper(), help=_param_help(param), **extra)
    return parser


def _param_help(param: Param) -> str:
    return f"{param.help} Range: {param.range_text}; when not sent: {param.default_text}."


def build_help(parser: MagicArgumentParser | None = None) -> str:
    """``%%granite?``: every option as the parser knows it, then the line magic's subcommands."""
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
        "Sampling parameters (only those you set are sent; --stop may repeat):", *rows[True], "",
        "Line magic:",
        "  %granite models             context length, prices and supported parameters",
        "  %granite panel [PROMPT]     a widget panel: every parameter, presets, Run/Stop, seed comparison",
        "  %granite history [NAME]     show a conversation (all if no name)",
        "  %granite reset [NAME]       forget a conversation (all if no name)",
        "  %granite key                ask for the API key (hidden; kept for this kernel only)",
        "  %granite last               the last result",
        "  %granite usage              what this kernel's runs cost (granite_magic.usage() for a DataFrame)",
        "  %granite credits            the key's remaining credit and limit (OpenRouter)",
        "  %granite probe [MODEL]      measure which parameters the provider really honours", "",
        "Defaults: %config GraniteMagics.<name> for model, base_url, backend, api, default_params, concurrency,",
        "          updates_per_second, read_timeout, timeout, local_instances, live, budget_usd",
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
    tool_mode: str = "auto"
    approve: bool = False
    max_steps: int | None = None

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
    from ._comparison import parse_seeds, parse_sweeps
    from ._context import load_documents
    from ._session import Turn
    from ._tools import resolve_tools

    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise InvalidParameterError(f"the options do not parse ({exc}): check the quotes") from None
    try:
        args = (parser or build_parser()).parse_args(words)
    except UsageError as exc:
        raise InvalidParameterError(f"{exc} (see %%granite? for the options)") from None
    prompt = cell if args.no_interpolate else interpolate(cell, namespace)
    if not prompt.strip():
        raise InvalidParameterError("the cell has no prompt: write it on the lines below %%granite")
    request = CellRequest(
        turn=Turn(prompt=prompt.strip("\n"), system=args.system, model=args.model, base_url=args.base_url,
                  sampling=(defaults or Sampling()) | Sampling({p.name: getattr(args, p.name) for p in _params.PARAMETERS})
                  | _probs(args.probs),
                  chat=args.chat, backend=args.backend, api=args.api, timeout_s=_timeout(args.timeout),
                  context=_context(args, namespace, cwd or Path.cwd(), history),
                  documents=tuple(load_documents(_names(args.docs), base=cwd or Path.cwd())) if args.docs else (),
                  cache=args.cache, pace=args.pace or "instant", verify=args.verify, strict=True if args.strict else None),
        seeds=tuple(parse_seeds(args.seeds)) if args.seeds else (),
        sweeps=parse_sweeps(args.sweep or ()),
        repeat=args.repeat, concurrency=args.concurrency, out=args.out, format=args.format,
        dry_run=args.dry_run, literal=args.no_interpolate, warnings=_out_warnings(args.out),
        tools=tuple(resolve_tools(_names(args.tools), namespace)) if args.tools else (),
        tool_mode=args.tool_mode or "auto", approve=args.approve, max_steps=args.max_steps,
    )
    _check_grid(request)
    return request


def _context(args: Any, namespace: Mapping[str, Any], cwd: Path, history: Sequence[str] | None) -> str | None:
    """The system-side block of what the cell points at: variables, documents, earlier cells."""
    from ._context import cell_source, context_block

    blocks = []
    if args.context:
        names = _names(args.context)
        missing = [name for name in names if name not in namespace]
        if missing:
            raise InvalidParameterError(f"--context names {', '.join(missing)}, which this notebook does not define")
        blocks.append(context_block([(name, namespace[name]) for name in names]))

    if args.cell is not None:
        typed = history if history is not None else namespace.get("In") or []
        blocks.append("The user points at this notebook cell:\n"
                      + cell_source(typed, namespace.get("Out") or {}, args.cell))  # the running cell is the last entry
    return "\n\n".join(b for b in blocks if b) or None


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _probs(k: int | None) -> Sampling:
    if k is None:
        return Sampling()
    if not 1 <= k <= 20:
        raise InvalidParameterError(f"--probs {k} is out of range: must be an integer from 1 to 20")
    return Sampling({"logprobs": True, "top_logprobs": k})


def _timeout(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise InvalidParameterError(f"--timeout {value:g} is out of range: must be a number of seconds > 0")
    return value


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
    """The cell text that asks for exactly ``request`` (the inverse of ``parse_cell``)."""
    turn = request.turn
    words: list[str] = []
    for flag, value in (("-m", turn.model), ("-s", turn.system), ("--base-url", turn.base_url),
                        ("--backend", turn.backend), ("--api", turn.api), ("-o", request.out)):
        if value:
            words += [flag, value]
    sampling = dict(turn.sampling)
    if sampling.get("logprobs") is True and sampling.get("top_logprobs"):
        del sampling["logprobs"]
        words += ["--probs", str(sampling.pop("top_logprobs"))]
    for name, value in sampling.items():
        if name == "seed" and request.seeds:
            continue  # every column's seed comes from --seeds
        words += _param_words(get_param(name), value)
    if request.seeds:
        words += ["--seeds", ",".join(map(str, request.seeds))]
    for name, values in request.sweeps.items():
        words += ["--sweep", f"{name}=" + ",".join(map(repr, values))]
    if request.repeat != 1:
        words += ["--repeat", str(request.repeat)]
    if request.concurrency is not None:
        words += ["--concurrency", str(request.concurrency)]
    if turn.timeout_s is not None:
        words += ["--timeout", repr(turn.timeout_s)]
    words += ["--cache", turn.cache] if turn.cache else []
    words += ["--pace", turn.pace] if turn.pace != "instant" else []
    words += ["--verify"] if turn.verify else []
    words += ["--strict"] if turn.strict else []
    if request.format != "markdown":
        words += ["-f", request.format]
    if request.tools:
        words += ["--tools", ",".join(tool.name for tool in request.tools)]
        words += ["--tool-mode", request.tool_mode] if request.tool_mode != "auto" else []
        words += ["--approve"] if request.approve else []
        words += ["--max-steps", str(request.max_steps)] if request.max_steps is not None else []
    if "{" in turn.prompt:
        words.append("--no-interpolate")
    return " ".join(["%%granite", *(shlex.quote(w) for w in words)]) + "\n" + turn.prompt


def _param_words(param: Param, value: Any) -> list[str]:
    if param.kind == "stop":
        return [w for sequence in value for w in (param.option, sequence)]
    if param.kind == "logit_bias":
        return [param.option, json.dumps({str(k): v for k, v in value.items()})]
    if param.kind == "bool":
        return [param.option, "true" if value else "false"]
    return [param.option, repr(value)]
