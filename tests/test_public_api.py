"""The public surface: pinned, lazily resolved, and cheap to load as an extension."""

from __future__ import annotations

import subprocess
import sys

import granite_magic

PUBLIC = {
    "APIError", "Alternative", "AuthenticationError", "BadRequestError", "Comparison", "ConnectionDroppedError", "DEFAULT_BASE_URL",
    "DEFAULT_MODEL", "DeadlineError", "GenerationInterrupted", "GraniteClient", "GraniteError", "InsufficientCreditsError",
    "InvalidParameterError", "MissingKeyError", "ModelInfo", "ModelNotFoundError", "ModerationError", "PARAMETERS", "Panel",
    "Param", "Progress", "ProtocolError", "RateLimitError", "Result", "RetryPolicy", "Run", "RunSpec", "Sampling",
    "ServerError", "StallError", "StreamError", "Token", "ToolCall", "Usage", "__version__", "acompare", "amap", "compare", "map",
    "load_ipython_extension", "panel", "probe", "read_batch", "setting_summary", "unload_ipython_extension",
    "usage",
}


def test_public_names_are_pinned_and_resolve() -> None:
    assert set(granite_magic.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(granite_magic, name) is not None
    assert callable(granite_magic.compare) and callable(granite_magic.panel)  # functions, not same-named modules


def test_every_module_behind_the_face_is_private() -> None:
    import pathlib

    modules = {p.stem for p in pathlib.Path(granite_magic.__file__).parent.glob("*.py")}
    assert {m for m in modules if not m.startswith("_")} == {"testing"}  # the fake server is public on purpose


def test_loading_the_extension_defers_heavy_imports() -> None:
    code = (
        "import sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "ip.run_line_magic('load_ext', 'granite_magic')\n"
        "print(sorted(m for m in ('httpx', 'ipywidgets', 'llama_cpp', 'asyncio') if m in sys.modules))\n"
        "print('granite' in ip.magics_manager.magics['cell'], 'granite' in ip.magics_manager.magics['line'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert "httpx" not in out[0] and "ipywidgets" not in out[0] and "llama_cpp" not in out[0]
    assert out[1] == "True True"


def test_unload_removes_the_magics() -> None:
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "granite_magic")
    ip.run_line_magic("unload_ext", "granite_magic")
    assert "granite" not in ip.magics_manager.magics["cell"]
    ip.run_line_magic("load_ext", "granite_magic")
    assert "granite" in ip.magics_manager.magics["cell"]
