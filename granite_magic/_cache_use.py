"""How one run meets the record/replay cache: look its recording up, record it as it streams, keep it
afterwards, and compare a live reply with it (``--verify``).

``cache_use`` decides a request's mode and key (the key is derived from what the client sends, so no field of
a request can be left out of it); a job asks ``look_up`` before it sends anything and hands its live reply to
``keep`` at the end.  The store itself is ``_cache``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex
from typing import TYPE_CHECKING, Any

from ._cache import CacheCorruptError, CacheMissError, Recorder, Recording, RunCache, cache_key, model_fingerprint, request_fields
from ._comparison import first_divergence
from ._context import read_capped
from ._events import Accumulator, Event, TextDelta

if TYPE_CHECKING:
    from ._shapes import Request
    from ._turn import Target, Turn

__all__ = ["CacheUse", "RecordingAccumulator", "cache_use", "local_fingerprint", "remembered_framing", "verification"]

_MODELS_FILE_BYTES = 1 << 20  # models.json: a fingerprint (~80 characters) per model name


def cache_use(turn: Turn, target: Target, request: Request, cache: RunCache, mode: str, *, repeat: int = 0,
              packed: bool = False) -> CacheUse | None:
    """How ``request`` meets ``cache`` in ``mode`` (a turn's ``--cache`` wins), or None when it does not.
    ``packed``: a live reply is appended to the kernel's pack, not written as a file of its own (a map's rows).

    The key is what the client sends (``describe``, as ``--dry-run`` shows it) with the backend, the host, the
    model, its fingerprint and the repetition: a field added to ``Request`` later is keyed without a change here.
    """
    mode = turn.cache or mode
    if mode == "off" and not turn.verify:
        return None
    # Replay mode set for the kernel (a classroom's GRANITE_CACHE) wins over a cell's --verify: the recording is
    # shown, and the run says it was not checked.
    verify = turn.verify and mode != "replay"
    client = target.client
    model_file = client.model_file()
    fingerprint = local_fingerprint(*model_file, cache, framing=client.framing) if model_file is not None else None
    fields = request_fields(backend=client.kind, host=client.host, model=request.model, api=target.api,
                            sent=client.describe(request), repeat=repeat, fingerprint=fingerprint)
    return CacheUse(mode, cache, fields, cache_key(fields), turn.pace, client.secrets(), verify, unverified=turn.verify and not verify,
                    packed=packed)


@dataclass(frozen=True)
class CacheUse:
    """How one request meets the cache: its mode, its key, and what a live run must do with the recording."""

    mode: str
    cache: RunCache
    fields: dict[str, Any]
    key: str
    pace: str
    secrets: tuple[str, ...]
    verify: bool = False
    unverified: bool = False  # --verify asked for in replay mode: nothing runs live, so nothing is checked
    packed: bool = False  # appended to the pack on the loop (one write), not a file made in a thread

    def look_up(self) -> tuple[Recording | None, str | None]:
        """(the recording to serve or compare with, a warning to show).

        In replay mode, where nothing may run live, a miss raises ``CacheMissError`` and a damaged file
        ``CacheCorruptError`` (naming it); elsewhere a damaged file is a miss with a warning.
        """
        if self.mode == "record" and not self.verify:  # --cache record --verify compares before it replaces
            return None, None
        try:
            recording = self.cache.load(self.key)
        except CacheCorruptError as exc:
            if self.mode == "replay":
                raise
            return None, f"{exc.message}; running live instead"
        if recording is None and self.mode == "replay":
            raise CacheMissError(self.fields, self.cache.directory)
        return recording, None

    def serves(self, recording: Recording | None) -> bool:
        """Whether the run is the recording, replayed: a hit, unless --verify wants a live run beside it."""
        return recording is not None and not self.verify

    def records(self, recording: Recording | None) -> bool:
        """Whether a live run is kept: always in record mode; otherwise only when there is no recording yet,
        so a recording stays the baseline that later --verify runs are compared with."""
        return self.mode == "record" or (recording is None and (self.mode == "auto" or self.verify))

    async def keep(self, live: Accumulator, recording: Recording | None) -> tuple[str | None, list[str], bool]:
        """After a whole live reply: store it if it ``records``, and compare it with ``recording`` (--verify).

        Returns how it compares (None without --verify), the warnings to show, and whether it was recorded.
        """
        verified = verification(recording, live) if self.verify and recording is not None else None
        warnings: list[str] = []
        stored = False
        if self.records(recording) and isinstance(live, RecordingAccumulator):
            made = live.recorder.recording()
            if self.packed:
                stored = self.cache.append(self.key, made, secrets=self.secrets)
            else:
                stored = await asyncio.to_thread(self.cache.store, self.key, made, secrets=self.secrets)
            if not stored and self.cache.recording_off:
                warnings.append(self.cache.recording_off)
            if self.verify and recording is None:
                verified = "no recording yet: this run is now the recording"
        return verified, warnings, stored


class RecordingAccumulator(Accumulator):
    """An accumulator that also records every event with its time, for the cache."""

    def __init__(self, params: Mapping[str, Any], recorder: Recorder) -> None:
        super().__init__(params)
        self.recorder = recorder

    def feed(self, event: Event) -> None:
        self.recorder.add(event)
        super().feed(event)

    def restart_clock(self) -> None:
        super().restart_clock()
        self.recorder.restart_clock()

    def start_over(self, note: str) -> None:
        super().start_over(note)
        self.recorder = Recorder(self.recorder.fields)  # the recording is of the reply that is kept


def verification(recording: Recording, live: Accumulator) -> str:
    """Whether a live reply repeats its recording, and if not, the word and the token where it first parts."""
    recorded = [event.text for _, event in recording.events if isinstance(event, TextDelta)]
    if "".join(recorded) == live.text:
        return "identical to the recording"
    token = next((i for i, (a, b) in enumerate(zip(recorded, live.parts, strict=False)) if a != b), min(len(recorded), len(live.parts)))
    word = first_divergence("".join(recorded), live.text)
    where = f"word {word.word} ({word.reference!r} -> {word.other!r})" if word is not None else "the spacing"
    return f"differs from the recording at {where}, token {token}"


def local_fingerprint(model: str, path: Path | str | None, cache: RunCache, *, framing: str | None = None) -> str | None:
    """The local model file's fingerprint (remembered for its name in the cache's ``models.json``, with the
    ``framing`` its prompts are made in), or, when the file is not here, the one remembered for its name: a classroom
    replaying a teacher's recordings has no model."""
    known = cache.directory / "models.json"
    names = _remembered(known)
    if path is None:
        return _entry(names.get(model))[0]
    fingerprint = model_fingerprint(path)
    if _entry(names.get(model)) != (fingerprint, framing):
        with contextlib.suppress(OSError):  # a read-only cache: the recordings' own warning says so
            known.parent.mkdir(parents=True, exist_ok=True)
            # a new file renamed into place: a link shipped as models.json is replaced, never written through
            temporary = known.with_name(f".models.json.{token_hex(8)}.tmp")
            entry = {"fingerprint": fingerprint, "framing": framing} if framing else fingerprint
            try:
                temporary.write_text(json.dumps({**names, model: entry}, indent=1))
                os.replace(temporary, known)
            finally:
                temporary.unlink(missing_ok=True)
    return fingerprint


def remembered_framing(model: str, cache: RunCache) -> str | None:
    """How prompts for the local model file ``model`` were made when it was here (``plain`` for a base model), so a
    replay without the file builds the same requests (a base model's tools are taught by example)."""
    return _entry(_remembered(cache.directory / "models.json").get(model))[1]


def _remembered(known: Path) -> dict[str, Any]:
    try:  # shipped with the recordings: a regular file of a small size, never a FIFO or a link to a device
        names = json.loads(read_capped(known, _MODELS_FILE_BYTES))
    except (OSError, ValueError, RecursionError):  # FileRefused is a ValueError
        return {}
    return names if isinstance(names, dict) else {}


def _entry(value: Any) -> tuple[str | None, str | None]:
    """A ``models.json`` entry as (fingerprint, framing): a bare fingerprint (as first written), or both."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict):
        fingerprint, framing = value.get("fingerprint"), value.get("framing")
        return (fingerprint if isinstance(fingerprint, str) else None), (framing if isinstance(framing, str) else None)
    return None, None
