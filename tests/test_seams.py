"""The seams: one table row reaches every place, values are validated once, a target is resolved once."""

from __future__ import annotations

import types
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from granite_magic import _params
from granite_magic._cell import build_help, build_parser, parse_cell, to_cell
from granite_magic._local import LocalClient, local_parameters
from granite_magic._params import Param
from granite_magic._session import Session
from granite_magic._shapes import API_SHAPES, Request
from granite_magic.testing import FakeOpenRouter

from .conftest import run

# A parameter the table does not have, added the way a developer would: one row.
TYPICAL_P = Param("typical_p", "float", "Locally typical sampling: keep tokens close to the expected surprise.", 1.0, 0, 1,
                  step=0.01, wire={"messages": None})


@pytest.fixture
def typical_p(monkeypatch: pytest.MonkeyPatch) -> Iterator[Param]:
    monkeypatch.setattr(_params, "PARAMETERS", (*_params.PARAMETERS, TYPICAL_P))
    monkeypatch.setitem(_params._BY_NAME, TYPICAL_P.name, TYPICAL_P)
    yield TYPICAL_P


def test_one_new_row_reaches_options_help_bodies_llama_cpp_and_the_panel(typical_p: Param, server: FakeOpenRouter,
                                                                           recorded_comms: list[Any]) -> None:
    parser = build_parser()
    assert parser.parse_args(["--typical-p", "0.5"]).typical_p == "0.5"
    help_text = build_help(parser)
    assert "--typical-p" in help_text and "number, 0 <= typical_p <= 1" in help_text
    request = parse_cell("--typical-p 0.5", "Hi", {}, parser=parser)
    assert dict(request.turn.sampling) == {"typical_p": 0.5}
    assert "--typical-p 0.5" in to_cell(request)
    with pytest.raises(_params.InvalidParameterError, match="0 <= typical_p <= 1"):
        parse_cell("--typical-p 3", "Hi", {}, parser=parser)

    wire = Request("m", ({"role": "user", "content": "Hi"},), request.turn.sampling)
    assert API_SHAPES["chat"].body(wire)["typical_p"] == 0.5
    assert API_SHAPES["responses"].body(wire)["typical_p"] == 0.5
    assert "typical_p" not in API_SHAPES["messages"].body(wire)  # the row says Messages has no such field
    assert LocalClient().describe(wire)["typical_p"] == 0.5 and "typical_p" in local_parameters()

    from granite_magic._panel import Panel

    panel = Panel(Session(), base_url=server.base_url, backend="http", prompt="Hi")
    slider = panel.controls["typical_p"].value
    assert (slider.min, slider.max, slider.value) == (0, 1, 1)
    panel.controls["typical_p"].set(0.25)
    assert "--typical-p 0.25" in panel.copy_as_cell()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts each parameter's validations and each resolution of a target, at run time."""
    calls: Counter[str] = Counter()
    # Counted inside ``validate`` itself, so that every caller is seen, those that imported it by name included
    # (``from ._params import validate``): the function object keeps its identity and gets the counting code, and
    # the counter and the original code arrive as keyword-only defaults.
    validate = _params.validate
    original = types.FunctionType(validate.__code__, validate.__globals__, validate.__name__, validate.__defaults__,
                                  validate.__closure__)

    def counting_validate(name: str, value: Any, *, calls: Counter[str], original: Callable[[str, Any], Any]) -> Any:
        calls[name] += 1
        return original(name, value)

    monkeypatch.setattr(validate, "__code__", counting_validate.__code__)
    monkeypatch.setattr(validate, "__kwdefaults__", {"calls": calls, "original": original})

    resolve = Session.resolve

    def counting_resolve(self: Session, turn: Any) -> Any:
        calls["resolve"] += 1
        return resolve(self, turn)

    monkeypatch.setattr(Session, "resolve", counting_resolve)
    return calls


def test_a_cell_validates_each_value_once_and_resolves_its_target_once(ip: InteractiveShell, server: FakeOpenRouter,
                                                                        counted: Counter[str]) -> None:
    run(ip, "--temperature 0.7 --seed 1", "Hi")
    assert (counted["temperature"], counted["seed"], counted["resolve"]) == (1, 1, 1)
    assert len(server.chat_requests) == 1


def test_a_grid_validates_each_value_once_and_resolves_its_target_once(ip: InteractiveShell, server: FakeOpenRouter,
                                                                        counted: Counter[str]) -> None:
    run(ip, "--temperature 0.7 --seeds 1-3 --sweep top_p=0.5,0.9", "Hi")
    assert len(server.chat_requests) == 6
    # temperature once, each swept top_p value once, seeds at most once each; one target for all six columns
    assert (counted["temperature"], counted["top_p"], counted["resolve"]) == (1, 2, 1) and counted["seed"] <= 3


# --- the request is what is sent, shown and keyed ---------------------------------------------------------------


def _lookup(river: str) -> str:
    """Look a river up."""
    return river


# One different value for every field of ``Request``: a field added later fails the test until it is listed here.
REQUEST_CHANGES: dict[str, Any] = {
    "model": "ibm-granite/granite-4.0-h-small",
    "messages": ({"role": "user", "content": "Tell me about basalt"},),
    "sampling": {"seed": 2},
    "documents": ({"doc_id": "1", "title": "notes.md", "text": "Granite is an igneous rock."},),
    "tools": "lookup",
    "extra": {"provider": {"require_parameters": True}},
    "prompt": "Tell me about granite",  # the same words continued raw are another request
    # asked for by the backend's own method (prompted, the schema is in the messages, which are keyed already)
    "structure": {"type": "object", "properties": {"rock": {"type": "string"}}, "required": ["rock"], "additionalProperties": False},
}


def _changed(base: Request, name: str, backend: str = "http") -> Request:
    from dataclasses import replace

    from granite_magic._params import Sampling
    from granite_magic._shapes import Structure
    from granite_magic._tools import as_tools

    value = REQUEST_CHANGES[name]
    if name == "structure":
        value = Structure(value, "reply", "provider" if backend == "http" else "grammar")
    elif name == "sampling":
        value = Sampling(value)
    elif name == "tools":
        value = tuple(as_tools([_lookup]))
    return replace(base, **{name: value})


@pytest.mark.parametrize("backend", ["http", "local"])
def test_every_field_of_a_request_changes_its_cache_key(backend: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is derived from what the client sends (``describe``, as ``--dry-run`` shows it): a new ``Request``
    field is keyed without anyone listing it (the same prompt with another ``--docs`` file once replayed the first)."""
    from dataclasses import fields, replace

    from granite_magic._cache import RunCache
    from granite_magic._cache_use import cache_use
    from granite_magic._client import GraniteClient
    from granite_magic._params import Sampling
    from granite_magic._session import Target, Turn

    assert set(REQUEST_CHANGES) == {f.name for f in fields(Request)}
    client = GraniteClient(base_url="http://127.0.0.1:9/api/v1") if backend == "http" else LocalClient(str(tmp_path / "m.gguf"))
    try:
        target = Target(client, client.model, "chat")
        base = Request(client.model, ({"role": "user", "content": "Tell me about granite"},), Sampling({"seed": 1}))
        cache = RunCache(tmp_path / "cache")

        def key(request: Request) -> str:
            use = cache_use(Turn(""), target, request, cache, "auto")
            assert use is not None
            return use.key

        # What a client never receives is not asked of it: routing where it has none (the local model), documents
        # apart where its template has no slot for them (over HTTP they travel in the system message).
        never_set = {"extra"} if not client.routing(strict=True) else set()
        never_set |= {"documents"} if not client.documents_in_template else set()
        changed = [name for name in REQUEST_CHANGES if name not in never_set]
        keys = {name: key(_changed(base, name, backend)) for name in changed}
        assert key(base) not in keys.values() and len(set(keys.values())) == len(changed), keys
        assert key(replace(base)) == key(base)
        if backend == "local":  # a template chosen instead of the GGUF's own changes the prompt: it is keyed too
            chosen = LocalClient(str(tmp_path / "m.gguf"), chat_template="{{ messages }}")
            try:
                use = cache_use(Turn(""), Target(chosen, chosen.model, "chat"), base, cache, "auto")
                assert use is not None and use.key != key(base)
            finally:
                chosen.close()
            own = key(base)
            monkeypatch.setenv("GRANITE_LOCAL_CHAT_FORMAT", "chatml")
            assert key(base) not in (own, use.key)
    finally:
        client.close()


# --- one grammar both ways: parse_cell and to_cell walk the same table -----------------------------------------

# One value for each option that is not its default.  An option added to the table without one fails the test
# below, and with one it must come back through to_cell and parse_cell unchanged.
OPTION_EXAMPLES = {
    "--model": "-m fake/model", "--system": "-s 'Be brief.'", "--base-url": "--base-url http://localhost:8080/v1",
    "--backend": "--backend local", "--template": "--template chatml", "--api": "--api responses", "--out": "-o answer", "--format": "-f json",
    "--chat": "--chat notes", "--seeds": "--seeds 1-3", "--sweep": "--sweep temperature=0,0.7 --sweep top_p=0.5,0.9",
    "--repeat": "--repeat 2", "--concurrency": "--concurrency 2", "--probs": "--probs 3", "--timeout": "--timeout 2.5",
    "--context": "--context numbers,title", "--docs": "--docs notes.md", "--cell": "--cell -1", "--tools": "--tools add",
    "--tool-mode": "--tool-mode prompted", "--approve": "--approve", "--max-steps": "--max-steps 3", "--strict": "--strict",
    "--cache": "--cache auto", "--pace": "--pace original", "--verify": "--verify", "--dry-run": "--dry-run",
    "--no-interpolate": "--no-interpolate", "--raw": "--raw", "--schema": "--schema 'rock, hardness int: Mohs scale'",
    "--schema-mode": "--schema 'rock' --schema-mode prompted",
    "--over": "--over rocks", "--limit": "--over rocks --limit 2", "--sample": "--over rocks --sample 2",
    "--expect": "--over rocks --expect item", "--via": "--over rocks --via batch",
    "--batch-file": "--over rocks --via jsonl --batch-file in.jsonl",
}


def _parameter_example(param: Param) -> str:
    """A value in the row's range, written as a cell would."""
    if param.kind == "stop":
        return f"{param.option} END {param.option} 'two words'"
    value = {"bool": "true", "logit_bias": "'{\"42\": -100}'", "choice": "required"}.get(param.kind)
    if value is None:
        low = param.minimum or 0
        value = str(param.start if param.start is not None else low + 1 if param.kind == "int" else (low + (param.maximum or 2)) / 2)
    return f"{param.option} {value}"


def _add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@pytest.mark.parametrize("flag", [*OPTION_EXAMPLES, *(p.option for p in _params.PARAMETERS), "--chat (bare)"])
def test_every_option_comes_back_through_to_cell(flag: str, tmp_path: Any) -> None:
    from granite_magic._cell import grammar, options

    assert set(OPTION_EXAMPLES) == {option.flags[-1] for option in options()}, "every option needs an example here"
    (tmp_path / "notes.md").write_text("# Notes\nGranite is an igneous rock.\n")
    namespace = {"numbers": [1, 2, 3], "title": "Rocks", "add": _add, "In": [], "Out": {}, "rocks": ["granite", "basalt"]}
    history = ["", "numbers = [1, 2, 3]", "%%granite --cell -1\nHi"]
    params = {p.option: p for p in _params.PARAMETERS}
    line = "--chat" if flag == "--chat (bare)" else OPTION_EXAMPLES.get(flag) or _parameter_example(params[flag])

    def parse(line: str, prompt: str = "Tell me about {title}") -> Any:
        return parse_cell(line, prompt, namespace, cwd=tmp_path, history=history)

    request = parse(line)
    assert request != parse(""), f"{line} changes nothing"
    text = to_cell(request)
    head, _, body = text.partition("\n")
    assert head.startswith("%%granite ") and body == request.turn.prompt
    assert parse(head.removeprefix("%%granite"), body) == request, text
    assert {option.flags[-1] for option in grammar()} >= {flag.split()[0]}


def test_to_cell_writes_the_short_forms_a_person_would(tmp_path: Any) -> None:
    """--probs K stands for both probability parameters, and --seeds for the seed; the prompt keeps its braces."""
    request = parse_cell("--probs 5 --seeds 1,2 --temperature 0.5 --no-interpolate", "Say {x}", {}, cwd=tmp_path)
    text = to_cell(request)
    assert text == "%%granite --seeds 1,2 --probs 5 --no-interpolate --temperature 0.5\nSay {x}"
    assert parse_cell(text.partition("\n")[0].removeprefix("%%granite"), "Say {x}", {}) == request


def test_the_probe_sends_the_requests_it_announces(server: FakeOpenRouter, tmp_path: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The request count shown before a probe (and its worst-case cost) is read from the probe's own steps."""
    from granite_magic._probe import ProbeStore, probe_requests, probed_parameters
    from granite_magic._session import Turn
    from granite_magic._settings import Settings

    from .conftest import TEST_KEY

    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_KEY)
    session = Session(Settings.from_env(base_url=server.base_url))
    session.probes = ProbeStore(tmp_path / "probes.json")
    report = session.probe(session.resolve(Turn("")))
    assert len(server.chat_requests) + len(server.batch_creates) == report.requests == probe_requests()  # every step ran in full
    assert [o.parameter for o in report.observations][: len(probed_parameters())] == list(probed_parameters())


def test_a_batch_varies_a_whole_turn_through_one_driver(server: FakeOpenRouter, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Any) -> None:
    """A run of a batch changes sampling (a grid's column), the prompt (a dataset's row) or the assistant prefix
    (a lens branch); each is sent as its own turn, keyed as its own request, and budgeted with the others."""
    from granite_magic._comparison import RunSpec
    from granite_magic._params import Sampling
    from granite_magic._session import QuietGrid, Turn

    from .conftest import TEST_KEY

    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_KEY)
    session = Session()
    session.configure(base_url=server.base_url, cache="auto", cache_dir=str(tmp_path))
    specs = [RunSpec("seed 1", Sampling({"seed": 1})), RunSpec("row 2", prompt="Tell me about basalt"),
             RunSpec("branch", prefix="Granite is")]
    try:
        job = session.start_compare(Turn("Tell me about granite", sampling=Sampling({"max_tokens": 6})), specs)
        assert len({column.cache.key for column in job.columns if column.cache is not None}) == 3
        job.loop.run(job.stream(QuietGrid()))
        comparison = session.finish_compare(job)
    finally:
        session.close()
    assert [run.error for run in comparison.runs] == [None, None, None]
    sent = sorted([m["content"] for m in request.body["messages"]] for request in server.chat_requests)
    assert sent == [["Tell me about basalt"], ["Tell me about granite"], ["Tell me about granite", "Granite is"]]
    assert [request.body.get("seed") for request in server.chat_requests].count(1) == 1
    assert {entry.kind for entry in session.ledger.entries} == {"grid"}


# --- the layers of ARCHITECTURE.md ----------------------------------------------------------------------------

# The rows of ARCHITECTURE.md's picture, lowest first; a module may import its own row and the rows below.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"_params", "_settings", "_vocab", "_errors", "_result", "_tokens", "_values", "_version"}),  # facts
    frozenset({"_shapes", "_events", "_sse", "_tools", "_granite_tools", "_schema", "_spec", "_structured", "_docstrings",
               "_context", "_rows", "_batch", "_plan"}),  # sans-I/O
    frozenset({"_client", "_runner", "_local"}),  # transport
    frozenset({"_session", "_turn", "_requests", "_toolrun", "_probe", "_ledger", "_cache_use", "_cache", "_codec", "_pack",
               "_dask",  # map over a Dask DataFrame: each partition through the pandas path, on the workers
               "_comparison", "_kernel", "_batchrun"}),  # running
    frozenset({"_grid", "_render", "_lens", "_markdown", "_rowsview"}),  # showing
    frozenset({"_magic", "_panel", "_branch", "_api", "_advice", "_approve", "_cell"}),  # front ends
)
# The two arrows up the picture that ARCHITECTURE.md names, both lazy.
UPWARD = {("_result", "_lens"), ("_result", "_markdown"), ("_client", "_toolrun")}


def _imports() -> dict[str, set[str]]:
    """Each module of the package (``_local.x`` as ``_local``) and the package modules it imports, at any level."""
    import ast
    from pathlib import Path

    import granite_magic

    root = Path(granite_magic.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = parts[0]
        if name in ("__init__", "testing", "__main__"):
            continue
        package = parts[:-1]  # the folder the module is in, inside the package ("_local" for _local/client.py)
        found = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(package)[: len(package) - (node.level - 1)]  # "from .." climbs one folder
                targets = [*base, *(node.module.split(".") if node.module else [])]
                names = [targets[0]] if targets else [alias.name for alias in node.names]
                found.update(n for n in names if n != name)
    return graph


def test_the_import_graph_has_no_cycle_and_its_arrows_point_down() -> None:
    graph = _imports()
    layer = {module: index for index, row in enumerate(LAYERS) for module in row}
    assert set(graph) <= set(layer), f"a module missing from LAYERS (and ARCHITECTURE.md): {set(graph) - set(layer)}"
    upward = {(a, b) for a, targets in graph.items() for b in targets if b in layer and layer[b] > layer[a]}
    assert upward == UPWARD

    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: tuple[str, ...]) -> None:
        seen[module] = 1
        # the named upward arrows are lazy, made when a result shows itself: no import ever runs them in a circle
        for target in sorted(graph.get(module, set()) - {b for a, b in UPWARD if a == module}):
            assert seen.get(target) != 1, f"an import cycle: {' -> '.join((*path, module, target))}"
            if target not in seen:
                visit(target, (*path, module))
        seen[module] = 2

    for module in sorted(graph):
        if module not in seen:
            visit(module, ())


# --- a backend is one client class ----------------------------------------------------------------------------


class _EchoClient:
    """A third backend written the way a contributor would: one BaseClient subclass, nothing else touched."""

    @staticmethod
    def make() -> Any:
        from granite_magic._client import BaseClient, ModelInfo
        from granite_magic._events import Accumulator, Done, Finish, TextDelta, UsageReport
        from granite_magic._result import Result, Usage

        class EchoClient(BaseClient):
            kind = "echo"
            model = "echo-1"
            base_url = "echo://"

            @property
            def target(self) -> str:
                return "echo"

            def describe(self, request: Request) -> dict[str, Any]:
                return {"messages": [dict(m) for m in request.messages], **request.sampling.for_target("chat")}

            async def stream(self, request: Request, acc: Accumulator, on_update: Any = None) -> Result:
                acc.sent = True
                for event in (TextDelta(str(request.messages[-1]["content"])[::-1]), Finish("stop", "stop"),
                              UsageReport(Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2, cost=0.5)), Done()):
                    acc.feed(event)
                return acc.result()

            async def _fetch_models(self, refresh: bool) -> dict[str, ModelInfo]:
                return {"echo-1": ModelInfo("echo-1", prompt_price=0.25, completion_price=0.25, max_completion_tokens=1)}

        return EchoClient()


def test_a_third_backend_is_one_client_class(tmp_path: Any) -> None:
    """The session, the cache, the budget and the ledger ask a client what it can do; none of them knows its class."""
    from granite_magic._comparison import plan_runs
    from granite_magic._params import Sampling
    from granite_magic._session import QuietGrid, Target, Turn

    client = _EchoClient.make()
    session = Session()
    session.configure(cache="auto", cache_dir=str(tmp_path), budget_usd=10.0)
    target = Target(client, client.model, "chat")
    result, error = session.run(Turn("granite"), target=target)
    assert error is None and result.text == "etinarg" and result.cost == 0.5
    again, _ = session.run(Turn("granite"), target=target)
    assert again.cached and again.text == "etinarg"  # keyed on what the client describes
    job = session.start_compare(Turn("basalt", sampling=Sampling({"max_tokens": 1})), plan_runs([1, 2]), target=target)
    job.loop.run(job.stream(QuietGrid()))
    assert session.finish_compare(job).texts == ["tlasab", "tlasab"]
    assert [entry.backend for entry in session.ledger.entries] == ["echo", "echo", "echo", "echo"]
    assert session.ledger.total_cost == 1.5  # three billed runs; the cached one is free
