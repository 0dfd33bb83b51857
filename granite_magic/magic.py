"""The ``%%granite`` cell magic and the ``%granite`` line magic.

Front end only: parse options (generated from the parameter table), describe
the turn, show it.  HTTP and JSON live in the layers below.
"""

from __future__ import annotations

import json
import shlex
import sys
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser
from IPython.utils.text import dedent
from traitlets import Dict, Enum, Float, Integer, Unicode

from . import errors
from .params import PARAMETERS

if TYPE_CHECKING:
    from .comparison import RunSpec
    from .render import LiveView
    from .session import Session, Turn

# Loading the extension imports only this module, the parameter table and the
# errors: the client, asyncio, httpx and ipywidgets wait for the first cell.

__all__ = ["GraniteMagics", "register", "unregister"]

FORMATS = ("markdown", "text", "code", "json")
SUBCOMMANDS = ("models", "panel", "history", "reset", "key", "last")


def build_parser() -> MagicArgumentParser:
    parser = MagicArgumentParser(  # type: ignore[no-untyped-call]
        prog="%%granite", add_help=False, description="Send the cell to Granite and stream the reply."
    )
    parser.add_argument("-m", "--model", help="model id (default: ibm-granite/granite-4.0-h-micro, or GRANITE_MODEL)")
    parser.add_argument("-s", "--system", help="system prompt")
    for param in PARAMETERS:
        extra: dict[str, Any] = {"action": "append"} if param.kind == "stop" else {}
        parser.add_argument(param.option, dest=param.name, metavar=param.kind.upper(), help=param.help, **extra)
    parser.add_argument("--base-url", help="an OpenAI-compatible API (default: OpenRouter, or GRANITE_BASE_URL)")
    parser.add_argument("--backend", choices=("auto", "http", "local"), help="http API, local llama.cpp, or auto")
    parser.add_argument("--api", choices=("chat", "responses", "messages"), help="HTTP request format (default chat)")
    parser.add_argument("-o", "--out", metavar="NAME", help="store the result in this variable")
    parser.add_argument("-f", "--format", choices=FORMATS, default="markdown", help="how to show and parse the reply")
    parser.add_argument("--chat", nargs="?", const="default", metavar="NAME", help="continue a named conversation")
    parser.add_argument("--seeds", metavar="SEEDS", help="compare side by side over seeds: 1,2,3 or 1-4")
    parser.add_argument("--sweep", action="append", metavar="NAME=V1,V2", help="compare over values of a parameter (repeatable)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="run every column N times (determinism audit)")
    parser.add_argument("--concurrency", type=int, metavar="N", help="columns streaming at once (default 4)")
    parser.add_argument("--dry-run", action="store_true", help="show the request body and send nothing")
    parser.add_argument("--no-interpolate", action="store_true", help="send {name} literally")
    return parser


def build_help() -> str:
    rows = "\n".join(
        f"  {p.option + ' ' + p.kind.upper():<28} {p.help}\n  {'':<28} range: {p.range_text}; default: {p.default_text}"
        for p in PARAMETERS
    )
    return dedent("""\
    Send the cell to Granite and stream the reply.

    %%granite [options]
    <prompt; {name} is replaced by the value of a variable>

    Options:
      -m, --model ID               model id (default ibm-granite/granite-4.0-h-micro, env GRANITE_MODEL)
      -s, --system TEXT            system prompt
      --base-url URL               OpenAI-compatible API (default OpenRouter, env GRANITE_BASE_URL)
      --backend auto|http|local    local: run the model here with llama.cpp (pip install 'granite-magic[local]');
                                   auto (default, env GRANITE_BACKEND): http with a key or base URL, else local
      --api chat|responses|messages  the HTTP request format: OpenAI chat completions (default), OpenAI
                                   Responses, or Anthropic Messages
      -o, --out NAME               store the Result in variable NAME
      -f, --format FORMAT          markdown (default), text, code (fences stripped), json (parsed)
      --chat [NAME]                continue conversation NAME (default "default"); otherwise stateless
      --seeds SEEDS                side by side over seeds: 1,2,3 or 1-4
      --sweep NAME=V1,V2,...       side by side over a parameter's values (repeatable; combines with --seeds)
      --repeat N                   run every column N times and report whether repeats were identical
      --concurrency N              columns streaming at once (default 4)
      --dry-run                    show the exact request body; send nothing
      --no-interpolate             leave {name} as written

    Sampling parameters (only those you set are sent; --stop may repeat):
    """) + rows + dedent("""

    Line magic:
      %granite models             context length, prices and supported parameters
      %granite panel [PROMPT]     a widget panel: every parameter, presets, Run/Stop, seed comparison
      %granite history [NAME]     show a conversation (all if no name)
      %granite reset [NAME]       forget a conversation (all if no name)
      %granite key                ask for the API key (hidden; kept for this kernel only)
      %granite last               the last result

    Defaults: %config GraniteMagics.model / base_url / backend / api / default_params / concurrency /
              updates_per_second / read_timeout / local_instances / live
    """)


@magics_class
class GraniteMagics(Magics):
    model = Unicode("", help="Default model id (empty: GRANITE_MODEL or Granite 4.0 Micro).").tag(config=True)
    base_url = Unicode("", help="Default base URL (empty: GRANITE_BASE_URL or OpenRouter).").tag(config=True)
    default_params = Dict(help="Sampling parameters sent unless a cell sets them, e.g. {'temperature': 0.2}.").tag(config=True)
    updates_per_second = Float(15.0, help="Most widget refreshes per second while streaming.").tag(config=True)
    concurrency = Integer(4, help="Comparison columns streaming at once.").tag(config=True)
    backend = Enum(["auto", "http", "local"], "auto", help="auto, http (OpenRouter or base_url) or local (llama.cpp).").tag(config=True)
    api = Enum(["chat", "responses", "messages"], "chat", help="HTTP request format: chat, responses or messages.").tag(config=True)
    local_instances = Integer(1, help="Local model copies loaded to serve comparison columns at once.").tag(config=True)
    read_timeout = Float(60.0, help="Seconds without data before a stream counts as stalled.").tag(config=True)
    live = Enum(["auto", "widget", "terminal"], "auto", help="Streaming view: a widget in a kernel, printed text in a terminal.").tag(config=True)

    def __init__(self, shell: InteractiveShell | None = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._session: Session | None = None
        self._parser: MagicArgumentParser | None = None

    @property
    def parser(self) -> MagicArgumentParser:
        if self._parser is None:
            self._parser = build_parser()
        return self._parser

    @property
    def session(self) -> Session:
        if self._session is None:
            from .session import Session

            self._session = Session()
        return self._session

    @line_cell_magic
    def granite(self, line: str, cell: str | None = None) -> Any:
        if cell is None:
            return self._subcommand(line)
        return self._cell(line, cell)

    # --- the cell magic -------------------------------------------------------------

    def _cell(self, line: str, cell: str) -> None:
        try:
            args = self.parser.parse_args(shlex.split(line))
            turn = self._turn(args, cell)
            specs = self._plan(args)
            self.session.client_for(turn)  # resolves the backend, refusing combinations that cannot work
            if specs is not None and self._concurrency(args) < 1:
                raise errors.InvalidParameterError(f"--concurrency {self._concurrency(args)} is out of range: must be an integer >= 1")
        except errors.InvalidParameterError as exc:
            _error(f"{exc} (nothing was sent)")
            return None
        except UsageError as exc:  # what argparse errors become in a magic
            _error(f"{exc} (nothing was sent; see %%granite? for the options)")
            return None
        self.session.read_timeout_s = self.read_timeout
        self.session.local_instances = self.local_instances
        if args.dry_run:
            self._dry_run(turn)
            return None
        swept = [name for spec in specs or () for name in spec.params]
        for name in self.session.unsupported(turn, also=swept):
            _warn(f"{name} is not in this model's supported parameters: the provider may ignore it.")
        if specs is None:
            self._stream(turn, args)
        else:
            self._compare(turn, specs, args)
        return None

    def _plan(self, args: Any) -> list[RunSpec] | None:
        """The comparison grid, or None for a single run."""
        from .comparison import parse_seeds, parse_sweep, plan_runs

        if not (args.seeds or args.sweep or args.repeat != 1):
            return None
        if args.chat:
            raise errors.InvalidParameterError("--chat cannot be combined with --seeds, --sweep or --repeat")
        sweep = dict(parse_sweep(text) for text in args.sweep or ())
        return plan_runs(parse_seeds(args.seeds) if args.seeds else (), sweep, args.repeat)

    def _concurrency(self, args: Any) -> int:
        return self.concurrency if args.concurrency is None else int(args.concurrency)

    def _compare(self, turn: Turn, specs: list[RunSpec], args: Any) -> None:
        from .grid import GridView, TerminalGridView
        from .render import describe_params

        title = describe_params(self.session.label(turn), turn.params)
        labels = [spec.label for spec in specs]
        grid: GridView | TerminalGridView
        grid = GridView(title, labels, rate=self.updates_per_second) if self._widgets() else TerminalGridView(title, labels)
        grid.show()
        comparison = self.session.compare(turn, specs, grid, concurrency=self._concurrency(args))
        grid.finish(comparison)
        if args.out:
            self.shell.user_ns[args.out] = comparison  # type: ignore[union-attr]
        failed = [f"{label}: {error}" for label, error in zip(comparison.labels, comparison.errors, strict=True) if error]
        if failed:
            _error("some columns failed; their partial text is kept.\n  " + "\n  ".join(failed))

    def _turn(self, args: Any, cell: str) -> Turn:
        from .session import Turn, interpolate

        sampling = {p.name: getattr(args, p.name) for p in PARAMETERS}
        params = {**self.default_params, **{k: v for k, v in sampling.items() if v is not None}}
        prompt = cell if args.no_interpolate else interpolate(cell, self.shell.user_ns if self.shell else {})
        return Turn(
            prompt=prompt.strip("\n"),
            system=args.system,
            model=args.model or self.model or None,
            base_url=args.base_url or self.base_url or None,
            params=params,
            chat=args.chat,
            backend=args.backend or (self.backend if self.backend != "auto" else None),
            api=args.api or self.api,
        )

    def _dry_run(self, turn: Turn) -> None:
        client, body, _ = self.session.prepare(turn)
        text = json.dumps(body, indent=2, ensure_ascii=False)
        _display({"text/plain": f"{client.target}\n{text}",
                  "text/markdown": f"`{client.target}` (dry run: nothing sent)\n```json\n{text}\n```"})

    def _stream(self, turn: Turn, args: Any) -> None:
        from .render import describe_params

        title = describe_params(self.session.label(turn), turn.params)
        view = self._view(title)
        view.show()
        result, error = self.session.run(turn, view)
        error = _parse_format(result, args.format) or error
        view.finish(result, args.format, {"chat": turn.chat} if turn.chat else None)
        if args.format == "code" and result.value and not result.partial and self.shell is not None:
            self.shell.set_next_input(result.value, replace=False)
        if args.out:
            self.shell.user_ns[args.out] = result  # type: ignore[union-attr]
        if error:
            _error(error)

    def _widgets(self) -> bool:
        return self.live == "widget" or (self.live == "auto" and getattr(self.shell, "kernel", None) is not None)

    def _view(self, title: str) -> LiveView:
        from .render import TerminalView, WidgetView

        return WidgetView(title, rate=self.updates_per_second) if self._widgets() else TerminalView(title)

    # --- the line magic -----------------------------------------------------------------

    def _subcommand(self, line: str) -> Any:
        words = shlex.split(line)
        if not words or words[0] not in SUBCOMMANDS:
            _error(f"unknown subcommand {line.strip()!r}; use one of: {', '.join(SUBCOMMANDS)} (see %granite?)")
            return None
        command, rest = words[0], words[1:]
        name = rest[0] if rest else None
        if command == "models":
            self._models()
        elif command == "panel":
            return self.panel(" ".join(rest))
        elif command == "history":
            self._history(name)
        elif command == "reset":
            forgotten = self.session.reset(name)
            print(f"forgot {', '.join(forgotten)}" if forgotten else "no conversations to forget")
        elif command == "key":
            self._ask_key()
        elif command == "last":
            return self.session.last
        return None

    def _models(self) -> None:
        from .session import Turn

        turn = Turn("", model=self.model or None, base_url=self.base_url or None, backend=self.backend if self.backend != "auto" else None)
        client = self.session.client_for(turn)
        try:
            models = client.models()
        except errors.GraniteError as exc:
            _error(exc.message)
            return
        wanted = self.session.model(turn)
        rows = [m for m in models.values() if m.id == wanted or "granite" in m.id.lower()]
        lines = ["| model | context | USD / M input | USD / M output | supported parameters |", "|---|---|---|---|---|"]
        for info in rows:
            lines.append(
                f"| {info.id} | {info.context_length or '?':,} | {_money(info.per_million(info.prompt_price))} | "
                f"{_money(info.per_million(info.completion_price))} | {', '.join(info.supported_parameters)} |"
            )
        table = "\n".join(lines)
        _display({"text/markdown": table.replace("$", "\\$"), "text/plain": table})

    def panel(self, prompt: str = "") -> Any:
        """A panel that starts from this kernel's defaults and shares its session."""
        from .panel_ui import Panel

        return Panel(
            self.session, prompt=prompt, model=self.model or None, base_url=self.base_url or None,
            backend=self.backend if self.backend != "auto" else None, api=self.api,
            concurrency=self.concurrency, rate=self.updates_per_second, **self.default_params,
        )

    def _history(self, name: str | None) -> None:
        names = [name] if name else list(self.session.conversations)
        if not names or (name and name not in self.session.conversations):
            print("no conversation yet: use %%granite --chat [NAME]")
            return
        for each in names:
            conversation = self.session.conversations[each]
            print(f"── {each} ──")
            if conversation.system:
                print(f"[system] {conversation.system}")
            for message in conversation.messages:
                print(f"[{message['role']}] {message['content']}")

    def _ask_key(self) -> None:
        import getpass

        key = getpass.getpass("OpenRouter API key (kept for this kernel only): ").strip()
        if not key:
            print("no key entered; nothing changed")
            return
        self.session.set_api_key(key)
        print("key set for this kernel")


GraniteMagics.granite.__doc__ = build_help()


def _parse_format(result: Any, fmt: str) -> str | None:
    """Fill ``result.value`` for code and json; a message if the JSON does not parse."""
    from .markdown import extract_code, parse_json_reply

    if fmt == "code":
        result.value = extract_code(result.text)[0]
    elif fmt == "json" and result.text:
        try:
            result.value = parse_json_reply(result.text)
        except ValueError as exc:
            return f"The reply is not valid JSON ({exc}); the raw text is kept in the output and in .text."
    return None


def _money(value: float | None) -> str:
    return "?" if value is None else f"${value:.3f}"


def _display(data: dict[str, Any]) -> None:
    from .render import display_raw

    display_raw(data)


def _error(message: str) -> None:
    print(f"granite: {message}", file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    print(f"granite: warning: {message}", file=sys.stderr, flush=True)


_registered: dict[int, GraniteMagics] = {}


def register(ipython: InteractiveShell) -> None:
    magics = GraniteMagics(shell=ipython)
    ipython.register_magics(magics)
    _registered[id(ipython)] = magics


def unregister(ipython: InteractiveShell) -> None:
    magics = _registered.pop(id(ipython), None)
    if magics is not None:
        configurables: list[Any] = ipython.configurables
        if magics in configurables:
            configurables.remove(magics)
        ipython.magics_manager.registry.pop(type(magics).__name__, None)
        for kind in ("line", "cell"):
            ipython.magics_manager.magics[kind].pop("granite", None)
