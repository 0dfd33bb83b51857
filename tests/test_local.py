"""The embedded local backend against a real model: Gemma 3 270M (GGUF, from PyPI) stands in for Granite,
whose GGUF cannot be downloaded here.  CI sets GRANITE_REQUIRE_LOCAL=1 so that a missing extra fails
instead of skipping."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from granite_magic import Comparison, GenerationInterrupted, GraniteClient
from granite_magic._comparison import plan_runs
from granite_magic._local import DEFAULT_LOCAL_FILE, DEFAULT_LOCAL_MODEL, LocalClient, local_available, resolve_model
from granite_magic._params import Sampling
from granite_magic._session import Session, Turn
from granite_magic._settings import Settings
from granite_magic._shapes import Request

from .conftest import interrupt_after, magics_of, run, shown

if not local_available():
    if os.environ.get("GRANITE_REQUIRE_LOCAL") == "1":
        raise RuntimeError("GRANITE_REQUIRE_LOCAL=1 but llama-cpp-python is not installed: pip install -e '.[dev,local]'")
    pytest.skip("the local extra is not installed (pip install -e '.[dev,local]')", allow_module_level=True)

pytestmark = pytest.mark.slow
PROMPT = "Tell me about rivers in two sentences."



def test_streams_real_text_with_usage_and_no_cost(local: LocalClient) -> None:
    seen: list[str] = []
    result = local.chat(PROMPT, seed=1, temperature=0.9, max_tokens=30, on_update=lambda acc: seen.append(acc.text))
    assert len(result.text.split()) >= 5
    assert len(seen) >= 5 and all(result.text.startswith(t) for t in seen)  # it grew token by token
    assert result.finish_reason in ("stop", "length") and not result.partial
    assert result.usage.completion_tokens and 0 < result.usage.completion_tokens <= 30
    assert result.usage.prompt_tokens and result.usage.prompt_tokens > 5
    assert result.cost == 0.0 and result.model == Path(local.reference or "").name
    assert result.provider == "llama.cpp (local, plain framing)"  # the stand-in is a base model: its framing is saved


def test_same_seed_same_text_other_seed_other_text(local: LocalClient) -> None:
    first, again, other = (local.chat(PROMPT, seed=s, temperature=0.9, max_tokens=30).text for s in (1, 1, 2))
    assert first == again
    assert first != other


def test_sampling_parameters_are_passed_through(local: LocalClient) -> None:
    short = local.chat(PROMPT, seed=3, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.1,
                       frequency_penalty=0.2, presence_penalty=0.2, max_tokens=5)
    assert short.finish_reason == "length" and short.usage.completion_tokens == 5
    greedy_a = local.chat(PROMPT, temperature=0, seed=1, max_tokens=15).text
    greedy_b = local.chat(PROMPT, temperature=0, seed=99, max_tokens=15).text
    assert greedy_a == greedy_b  # greedy decoding does not depend on the seed


def test_stop_sequence_ends_the_reply(local: LocalClient) -> None:
    full = local.chat(PROMPT, seed=5, temperature=0.9, max_tokens=30).text
    words = full.split()
    assert len(words) > 3
    stopped = local.chat(PROMPT, seed=5, temperature=0.9, max_tokens=30, stop=[words[2]])
    assert words[2] not in stopped.text and len(stopped.text) < len(full)


def test_interrupt_stops_generation_between_tokens(local: LocalClient) -> None:
    with pytest.raises(GenerationInterrupted) as info:
        local.chat(PROMPT, seed=1, temperature=0.9, max_tokens=400, on_update=interrupt_after(3))
    assert info.value.result.partial and 3 <= info.value.result.completion_tokens < 400
    assert local.chat(PROMPT, seed=1, temperature=0.9, max_tokens=5).usage.completion_tokens == 5  # the model is free again


def test_concurrent_columns_do_not_mix_outputs(model_path: str, local: LocalClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANITE_LOCAL_MODEL", model_path)
    session = Session(Settings.from_env(local_instances=2))
    comparison = session.compare(Turn(PROMPT, sampling=Sampling({"temperature": 0.9, "max_tokens": 20}), backend="local"),
                                 plan_runs([1, 2, 3, 4]), concurrency=4)
    singles = [local.chat(PROMPT, seed=s, temperature=0.9, max_tokens=20).text for s in (1, 2, 3, 4)]
    assert comparison.texts == singles and not any(comparison.errors)


class NotesSeen:
    """A grid view that keeps every waiting note each column showed, read as the grid refreshes."""

    def __init__(self) -> None:
        self.notes: list[set[str]] = []

    async def run(self, state: Any) -> None:
        import asyncio

        self.notes = [set() for _ in state]
        while True:
            for seen, acc in zip(self.notes, state, strict=True):
                if acc.note:
                    seen.add(acc.note)
            await asyncio.sleep(0.005)

    def column_done(self, index: int, result: Any) -> None:
        pass


def test_queued_local_columns_say_so_and_time_from_their_own_start(model_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One loaded model serves one column at a time: the others say how many are ahead, not "waiting for the
    first token" with the whole queue's time on the clock, and their first-token times count from their own start."""
    monkeypatch.setenv("GRANITE_LOCAL_MODEL", model_path)
    session = Session(Settings.from_env(local_instances=1))
    view = NotesSeen()
    comparison = session.compare(Turn(PROMPT, sampling=Sampling({"temperature": 0.9, "max_tokens": 16}), backend="local"),
                                 plan_runs([1, 2, 3]), view, concurrency=3)
    session.close()
    assert not any(comparison.errors)
    assert "queued (2 ahead)" in view.notes[2] and "queued (1 ahead)" in view.notes[2] and "queued (1 ahead)" in view.notes[1]
    first, second, third = comparison.results
    assert third.ttft_s is not None and first.duration_s is not None and second.duration_s is not None
    assert third.ttft_s < first.duration_s + second.duration_s  # not the time it queued behind the two before it


@pytest.fixture
def keyless_ip(ip: InteractiveShell, model_path: str, monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.delenv("GRANITE_BASE_URL", raising=False)
    monkeypatch.setenv("GRANITE_LOCAL_MODEL", model_path)
    magics = magics_of(ip)
    magics.base_url = ""
    magics.session.set_api_key(None)
    magics.session.clients.clear()
    return ip


def test_auto_picks_local_without_a_key_and_says_so(keyless_ip: InteractiveShell) -> None:
    out = run(keyless_ip, "--seed 1 --max-tokens 10 -o r", PROMPT)
    assert "local llama.cpp" in shown(out) and " · free" in shown(out) and "$0.000000" not in shown(out)
    result = keyless_ip.user_ns["r"]
    assert result.text and result.provider == "llama.cpp (local, plain framing)"
    assert "local llama.cpp · plain framing (base model)" in shown(out)  # the status line names the framing


def test_a_local_reply_is_capped_unless_asked_for_more(keyless_ip: InteractiveShell, local: LocalClient) -> None:
    """An open-ended reply on two cores would hold the kernel for minutes: the local default cap is in the request
    (the title says it, a dry run shows it, the cache keys it), and --max-tokens raises it."""
    out = run(keyless_ip, "--dry-run --seed 1", PROMPT)
    assert f'"max_tokens": {LocalClient.default_max_tokens}' in shown(out)
    assert local.request(PROMPT).sampling["max_tokens"] == LocalClient.default_max_tokens
    assert local.request(PROMPT, max_tokens=2000).sampling["max_tokens"] == 2000
    out = run(keyless_ip, "--seed 1 --max-tokens 3 -o r", PROMPT)
    assert "max tokens 3" in shown(out) and keyless_ip.user_ns["r"].completion_tokens == 3
    assert GraniteClient(base_url="http://127.0.0.1:9/v1").request(PROMPT).sampling.get("max_tokens") is None  # the provider's own


def test_seed_comparison_through_the_magic(keyless_ip: InteractiveShell) -> None:
    run(keyless_ip, "--backend local --seeds 1-2 --repeat 2 --temperature 0.9 --max-tokens 20 -o c", PROMPT)
    comparison = keyless_ip.user_ns["c"]
    assert isinstance(comparison, Comparison)
    assert comparison.groups == [[0, 1], [2, 3]] and comparison.seed_honoured is True


def test_dry_run_names_the_local_model(keyless_ip: InteractiveShell) -> None:
    out = run(keyless_ip, "--backend local --dry-run --seed 3", PROMPT)
    assert "local llama.cpp: gemma-3-270m-q4_k_m.gguf" in shown(out) and '"seed": 3' in shown(out)


def test_dry_run_shows_the_prompt_the_model_reads_verbatim(keyless_ip: InteractiveShell) -> None:
    """Markdown would make a heading of ``### rain`` and fold the lines: the prompt is shown as a block, as is."""
    out = run(keyless_ip, "--backend local --dry-run -s '### rain (pandas.DataFrame)'", PROMPT)
    markdown = out.outputs[-1].data["text/markdown"]
    block = markdown[markdown.index("```text\n") + len("```text\n"):]
    block = block[: block.index("\n```")]
    text, _ = magics_of(keyless_ip).session.resolve(Turn("", backend="local")).client.prompt_preview(
        Request("m", ({"role": "system", "content": "### rain (pandas.DataFrame)"}, {"role": "user", "content": PROMPT})))
    assert block == text and block.startswith("<bos>### rain (pandas.DataFrame)\n")


def test_top_a_is_flagged_as_unsupported_locally(keyless_ip: InteractiveShell) -> None:
    out = run(keyless_ip, "--backend local --top-a 0.5 --max-tokens 3", PROMPT)
    assert "top_a is not in this model's supported parameters" in out.stderr


def test_neither_key_nor_local_names_both_ways_forward(keyless_ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    # Patched where the session looks it up: the package face, which re-exports it from _local.model.
    monkeypatch.setattr("granite_magic._local.local_available", lambda: False)
    out = run(keyless_ip, "", PROMPT)
    assert "OPENROUTER_API_KEY" in out.stderr and "granite-magic[local]" in out.stderr


def test_default_model_is_downloaded_once_with_a_size_message(
    model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the network download is stubbed: it 'fetches' the stand-in GGUF into the hub cache layout."""
    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("GRANITE_LOCAL_MODEL", raising=False)
    calls: list[tuple[str, str]] = []

    def fake_download(repo_id: str, filename: str, **_: Any) -> str:
        calls.append((repo_id, filename))
        snapshot = tmp_path / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "0" / filename
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"models--{repo_id.replace('/', '--')}" / "refs").mkdir(exist_ok=True)
        (tmp_path / f"models--{repo_id.replace('/', '--')}" / "refs" / "main").write_text("0")
        snapshot.symlink_to(model_path)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    first = resolve_model()
    assert calls == [(DEFAULT_LOCAL_MODEL, DEFAULT_LOCAL_FILE)]
    assert "about 1.9 GB" in capsys.readouterr().err
    assert resolve_model() == first and len(calls) == 1  # the second time it comes from the cache
    assert LocalClient(str(first)).chat(PROMPT, seed=1, max_tokens=3).text


def test_bad_model_reference_is_explained(tmp_path: Path) -> None:
    from granite_magic._local import LocalModelError

    with pytest.raises(LocalModelError, match="not a file"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(LocalModelError, match="Name the file"):
        resolve_model("someone/some-GGUF")


def test_template_chooses_the_chat_format_or_a_jinja_file(keyless_ip: InteractiveShell, tmp_path: Path) -> None:
    """``--template`` reaches the local client (a client per template, so each prompt is its own), is shown by a dry
    run and keyed; a name that is neither a file nor a format, or a template over HTTP, is refused in one line."""
    plain = shown(run(keyless_ip, "--dry-run --seed 1", PROMPT))
    assert f"Question: {PROMPT}\nAnswer:" in plain and "<start_of_turn>" not in plain
    chosen = shown(run(keyless_ip, "--template plain --dry-run --seed 1", PROMPT))
    assert '"framing": "plain"' in chosen  # chosen, it is keyed; by itself the GGUF's fingerprint covers it
    gemma = shown(run(keyless_ip, "--template gemma --dry-run --seed 1", PROMPT))
    assert f"<start_of_turn>user\n{PROMPT}<end_of_turn>\n<start_of_turn>model\n" in gemma and '"chat_format": "gemma"' in gemma
    assert '"framing"' not in gemma
    jinja = tmp_path / "turns.jinja"
    jinja.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]")
    chosen = shown(run(keyless_ip, f"--template {jinja} --dry-run --seed 1", PROMPT))
    assert f"[user] {PROMPT}\n[assistant]" in chosen and '"chat_template": "sha256:' in chosen
    out = run(keyless_ip, "--template gemma --seed 1 --max-tokens 3 -o r", PROMPT)
    assert "local llama.cpp · template gemma" in shown(out) and keyless_ip.user_ns["r"].provider == "llama.cpp (local)"

    refused = run(keyless_ip, "--template nope --seed 1", PROMPT)
    assert "--template nope is neither a file nor a chat format" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert "--template gemma chooses the local model's chat template" in run(keyless_ip, "--backend http --base-url "
                                                                             "http://127.0.0.1:9/v1 --template gemma", PROMPT).stderr
