"""Record and replay from cells: hits, misses, modes, drift checks, and what is (never) written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from granite_magic import Comparison, Result
from granite_magic.testing import FakeOpenRouter

from .conftest import TEST_KEY, run, shown


def test_auto_records_a_miss_and_serves_the_hit_without_sending(ip: InteractiveShell, server: FakeOpenRouter, cached: Any) -> None:
    recorded = run(ip, "--seed 4 --max-tokens 12 -o first", "Tell me about granite")
    assert " · recorded" in shown(recorded)  # the status line confirms it
    out = run(ip, "--seed 4 --max-tokens 12 -o again", "Tell me about granite")
    first, again = ip.user_ns["first"], ip.user_ns["again"]
    assert len(server.chat_requests) == 1  # the second cell sent nothing
    assert again.cached and not first.cached and again.text == first.text and again.usage == first.usage
    assert again.ttft_s == pytest.approx(first.ttft_s, abs=2e-4)  # the recorded timings, not the replay's
    assert "cached" in shown(out) and "recorded" not in shown(out)
    entries = cached.session.ledger.entries
    assert entries[-1].cached and entries[-1].cost == 0 and entries[-2].cost > 0
    files = list(Path(cached.cache_dir).rglob("*.json.gz"))
    assert len(files) == 1 and TEST_KEY.encode() not in files[0].read_bytes()


def test_replay_never_sends_and_names_a_missing_request(ip: InteractiveShell, server: FakeOpenRouter, cached: Any) -> None:
    run(ip, "--seed 1 --max-tokens 8 -o live", "Hi")
    requests = len(server.chat_requests)
    out = run(ip, "--cache replay --seed 1 --max-tokens 8 -o back", "Hi")
    assert ip.user_ns["back"].text == ip.user_ns["live"].text and len(server.chat_requests) == requests
    out = run(ip, "--cache replay --seed 2 --max-tokens 8", "Hi")
    assert "No recording in" in out.stderr and "seed 2" in out.stderr and "Traceback" not in out.stderr
    assert len(server.chat_requests) == requests


def test_record_always_calls_and_overwrites(ip: InteractiveShell, server: FakeOpenRouter, cached: Any) -> None:
    run(ip, "--seed 1 --max-tokens 8", "Hi")
    run(ip, "--cache record --seed 1 --max-tokens 8", "Hi")
    assert len(server.chat_requests) == 2 and len(list(Path(cached.cache_dir).rglob("*.json.gz"))) == 1


def test_repeats_are_recorded_apart_and_verify_reports_drift(ip: InteractiveShell, server: FakeOpenRouter, cached: Any) -> None:
    run(ip, "--seeds 1-2 --repeat 2 --max-tokens 10", "Tell a story")
    assert len(list(Path(cached.cache_dir).rglob("*.json.gz"))) == 4  # the repeat index is part of the key
    out = run(ip, "--seeds 1-2 --max-tokens 10 --verify -o same", "Tell a story")
    same: Comparison = ip.user_ns["same"]
    assert [run_.verified for run_ in same.runs] == ["identical to the recording"] * 2
    server.honour_seed = False  # the provider drifts: the same seed no longer gives the same text
    out = run(ip, "--seeds 1-2 --max-tokens 10 --verify -o drift", "Tell a story")
    drift: Comparison = ip.user_ns["drift"]
    assert all(r.verified and r.verified.startswith("differs from the recording at word") for r in drift.runs)
    assert "token" in (drift.runs[0].verified or "") and "verified:" in shown(out)


def test_a_corrupt_recording_is_a_miss_in_auto_and_an_error_in_replay(ip: InteractiveShell, server: FakeOpenRouter,
                                                                      cached: Any) -> None:
    run(ip, "--seed 3 --max-tokens 8 -o r", "Hi")
    (path,) = Path(cached.cache_dir).rglob("*.json.gz")
    path.write_bytes(path.read_bytes()[:20])  # truncated
    out = run(ip, "--cache replay --seed 3 --max-tokens 8", "Hi")
    assert str(path) in out.stderr and "unusable" in out.stderr and "Traceback" not in out.stderr
    out = run(ip, "--seed 3 --max-tokens 8 -o again", "Hi")
    assert "running live instead" in out.stderr and ip.user_ns["again"].text == ip.user_ns["r"].text


def test_cache_subcommand_counts_and_clears(ip: InteractiveShell, server: FakeOpenRouter, cached: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run(ip, "--seed 1 --max-tokens 5", "Hi")
    run(ip, "--seed 1 --max-tokens 5", "Hi")
    ip.run_line_magic("granite", "cache")
    report = capsys.readouterr().out
    assert "1 recordings" in report and "1 hits, 1 misses" in report
    ip.run_line_magic("granite", "cache clear")
    assert "removed 1 recordings" in capsys.readouterr().out and not list(Path(cached.cache_dir).rglob("*.json.gz"))


def test_pace_original_replays_the_recorded_timings(ip: InteractiveShell, server: FakeOpenRouter, cached: Any) -> None:
    from granite_magic.testing import Scenario

    server.push(Scenario(tokens=6, tokens_per_s=60))
    run(ip, "--seed 9 -o live", "Hi")
    run(ip, "--seed 9 --pace original -o paced", "Hi")
    live, paced = ip.user_ns["live"], ip.user_ns["paced"]
    assert isinstance(paced, Result) and paced.cached and paced.text == live.text
    assert paced.ttft_s == pytest.approx(live.ttft_s, abs=2e-4)


def test_verify_and_replay_in_one_cell_are_refused_before_sending(ip: InteractiveShell, server: FakeOpenRouter,
                                                                  cached: Any) -> None:
    out = run(ip, "--cache replay --verify --seed 1 --max-tokens 8", "Hi")
    assert "--verify runs live and --cache replay never does" in out.stderr and "nothing was sent" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not server.chat_requests


def test_verify_in_a_replaying_kernel_shows_the_recording_unchecked(ip: InteractiveShell, server: FakeOpenRouter,
                                                                    cached: Any) -> None:
    """A classroom replays a teacher's notebook (GRANITE_CACHE=replay): its drift check cannot run live, so the
    cell shows the recording and says it was not checked, rather than failing or calling anything."""
    run(ip, "--seeds 1-2 --max-tokens 10 -o live", "Tell a story")
    requests = len(server.chat_requests)
    cached.cache = "replay"
    out = run(ip, "--seeds 1-2 --max-tokens 10 --verify -o back", "Tell a story")
    back: Comparison = ip.user_ns["back"]
    assert back.texts == ip.user_ns["live"].texts and len(server.chat_requests) == requests
    assert [r.verified for r in back.runs] == ["not checked: the cache is in replay mode (this is the recording)"] * 2
    assert "not checked" in shown(out) and "Traceback" not in out.stderr
    out = run(ip, "--seed 1 --max-tokens 10 --verify -o one", "Tell a story")
    assert ip.user_ns["one"].text == back.texts[0] and ip.user_ns["one"].cached
    assert "not checked" in out.stderr and len(server.chat_requests) == requests


def test_a_recording_stays_the_baseline_until_record_mode_replaces_it(ip: InteractiveShell, server: FakeOpenRouter,
                                                                      cached: Any) -> None:
    run(ip, "--seed 5 --max-tokens 10 -o original", "Tell a story")
    server.honour_seed = False  # the provider drifts
    for name in ("first", "again"):  # a drift check does not make the drifted text the new baseline
        out = run(ip, f"--seed 5 --max-tokens 10 --verify -o {name}", "Tell a story")
        assert "differs from the recording" in out.stderr
    run(ip, "--cache replay --seed 5 --max-tokens 10 -o kept", "Tell a story")
    assert ip.user_ns["kept"].text == ip.user_ns["original"].text
    run(ip, "--cache record --seed 5 --max-tokens 10 -o replaced", "Tell a story")
    run(ip, "--cache replay --seed 5 --max-tokens 10 -o back", "Tell a story")
    assert ip.user_ns["back"].text == ip.user_ns["replaced"].text != ip.user_ns["original"].text


def test_record_mode_with_verify_compares_before_it_replaces(ip: InteractiveShell, server: FakeOpenRouter, cached: Any) -> None:
    run(ip, "--seed 6 --max-tokens 10 -o original", "Tell a story")
    server.honour_seed = False
    out = run(ip, "--cache record --verify --seed 6 --max-tokens 10 -o drifted", "Tell a story")
    assert "differs from the recording" in out.stderr
    run(ip, "--cache replay --seed 6 --max-tokens 10 -o back", "Tell a story")
    assert ip.user_ns["back"].text == ip.user_ns["drifted"].text != ip.user_ns["original"].text
