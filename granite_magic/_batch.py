"""A map's requests as a batch, and the batch's answers read back: pure protocol, no I/O.

Two formats carry the same list of requests, each named by a ``custom_id`` made from the row's place and its cache
key (so an answer finds its row, and a changed request is a new id):

* OpenRouter's Batch API: ``POST /batches`` with ``{"endpoint", "model", "requests": [{"custom_id", "body"}]}``
  (the server reads the body as a stream, so ``endpoint`` and ``model`` come before ``requests``; at most 5,000
  requests a call), ``GET /batches/{id}`` for its status, ``GET /batches/{id}/results`` for pages of answers.
* OpenAI-format JSONL, as ``vllm run-batch`` reads (``{"custom_id", "method", "url", "body"}`` per line) and writes
  (``{"id", "custom_id", "response": {"status_code", "body"}, "error"}`` per line; OpenAI puts failures in a file
  of their own in the same form).

An answer's ``body`` is a whole (not streamed) chat completion, or a Responses API object (OpenRouter normalises
some results to it): ``answer_events`` turns either into the events a stream of it would have given, so a batch's
reply becomes a ``Result`` through the same accumulator as a live one.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import InvalidParameterError, ProtocolError
from ._events import Event, Finish, TextDelta
from ._shapes import chunk_events, responses_usage
from ._vocab import VIAS, Via

ENDPOINT = "/v1/chat/completions"  # what every batch here sends: chat completions, the format every engine reads
MOST_PER_CALL = 5000  # OpenRouter's limit on the requests of one create call
WINDOW = "24h"  # the completion window OpenRouter gives a batch
# A batch that has ended, however it ended: its answers (those it has) can be read.
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
# Fields of a live chat body that a batch's body must not carry: batches answer whole, never streamed.
_LIVE_ONLY = ("stream", "stream_options")


def check_via(via: str, batch_file: str | None) -> Via:
    """``via`` as the vocabulary names it (``openrouter-batch`` is ``batch``), refused in one line when it is not one."""
    named = "batch" if via == "openrouter-batch" else via
    if named not in VIAS:
        raise InvalidParameterError(f"via={via!r} is invalid: must be one of {', '.join(VIAS)}", names=("via",))
    if named == "jsonl" and not batch_file:
        raise InvalidParameterError("the rows go to a batch input file for vllm run-batch: give batch_file='in.jsonl'",
                                           names=("batch_file",))
    if named != "jsonl" and batch_file:
        raise InvalidParameterError(f"batch_file= is for via='jsonl', not via={via!r}", names=("batch_file",))
    return named


def custom_id(position: int, key: str) -> str:
    """The id of the request at ``position`` (a row, or a row under one setting) whose cache key is ``key``."""
    return f"{position}-{key[:24]}"


def position_of(identifier: str) -> int | None:
    """The position a ``custom_id`` names, or None when it is not one of ours."""
    head, _, _ = identifier.partition("-")
    return int(head) if head.isdigit() else None


def batch_body(live: Mapping[str, Any]) -> dict[str, Any]:
    """A live chat body as a batch sends it: the same request, answered whole."""
    return {name: value for name, value in live.items() if name not in _LIVE_ONLY}


def jsonl_line(identifier: str, body: Mapping[str, Any]) -> str:
    """One line of an OpenAI-format batch input file (``vllm run-batch -i``)."""
    return json.dumps({"custom_id": identifier, "method": "POST", "url": ENDPOINT, "body": body}, ensure_ascii=False)


def create_bodies(model: str, requests: Iterable[tuple[str, Mapping[str, Any]]],
                  most: int = MOST_PER_CALL) -> Iterator[dict[str, Any]]:
    """The bodies of the create calls for ``requests`` (custom id, body), one at a time: at most ``most`` requests
    each, with ``endpoint`` and ``model`` written before ``requests`` (a dict keeps its order when sent as JSON)."""
    requests = iter(requests)
    while chunk := [{"custom_id": identifier, "body": body} for identifier, body in itertools.islice(requests, most)]:
        yield {"endpoint": ENDPOINT, "model": model, "requests": chunk}


# --- reading what comes back -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One request's answer: its completion body, or why there is none."""

    custom_id: str
    body: Mapping[str, Any] | None
    error: str | None


@dataclass(frozen=True)
class BatchState:
    """What a batch object says about itself."""

    id: str
    status: str
    total: int
    completed: int
    failed: int
    error: str | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def batch_state(data: Any) -> BatchState:
    """A batch object (as created or polled); a reply that is not one raises ``ProtocolError`` saying what came."""
    if not isinstance(data, Mapping) or not isinstance(data.get("id"), str) or not isinstance(data.get("status"), str):
        raise ProtocolError(f"The batch API answered with something that is not a batch: {_brief(data)}")
    counts = _mapping(data.get("request_counts"))
    error = data.get("error")
    message = error.get("message") if isinstance(error, Mapping) else error if isinstance(error, str) else None
    return BatchState(data["id"], data["status"], _count(counts.get("total")), _count(counts.get("completed")),
                      _count(counts.get("failed")), str(message) if message else None)


def results_page(data: Any) -> tuple[list[Any], str | None]:
    """The result rows of one page of ``GET /batches/{id}/results`` and the cursor of the next (None: the last)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
        raise ProtocolError(f"The batch API answered with something that is not a page of results: {_brief(data)}")
    cursor = data.get("next_cursor")
    more = data.get("has_more", cursor is not None)
    return list(data["data"]), str(cursor) if more and cursor else None


def read_answer(row: Any) -> Answer | None:
    """One result row or output line (the same envelope in OpenRouter's results and OpenAI/vLLM output files);
    None when it names no request."""
    if not isinstance(row, Mapping) or not isinstance(row.get("custom_id"), str):
        return None
    identifier, response, error = row["custom_id"], row.get("response"), row.get("error")
    if error:
        return Answer(identifier, None, _error_text(error))
    if not isinstance(response, Mapping):
        return Answer(identifier, None, "the batch gave this request no response")
    status, body = response.get("status_code", 200), response.get("body")
    if status != 200 or not isinstance(body, Mapping):
        reason = _error_text(body.get("error")) if isinstance(body, Mapping) and body.get("error") else "no completion"
        return Answer(identifier, None, f"HTTP {status}: {reason}")
    return Answer(identifier, body, None)


def read_answer_lines(lines: Iterable[str]) -> tuple[dict[str, Answer], list[str]]:
    """The answers in a JSONL output (or errors) file by custom id, and a note for each line that could not be read
    (kept out, never fatal: one bad line does not lose the others)."""
    answers: dict[str, Answer] = {}
    unreadable: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            answer = read_answer(json.loads(line))
        except ValueError as exc:
            answer, why = None, f"not JSON ({exc})"
        else:
            why = "it names no custom_id"
        if answer is None:
            unreadable.append(f"line {number}: {why}")
        else:
            answers[answer.custom_id] = _better(answers.get(answer.custom_id), answer)
    return answers, unreadable


def answer_events(body: Mapping[str, Any]) -> list[Event]:
    """The events a stream of this whole reply would have given (chat completion or Responses object)."""
    if body.get("object") == "response" or ("output" in body and "choices" not in body):
        return _response_events(body)
    choices = body.get("choices")
    choices = choices if isinstance(choices, list) else []
    # a whole choice is one chunk whose delta is the message: the chunk reader does the rest (text, calls, logprobs)
    as_chunk = {"choices": [{**choice, "delta": choice.get("message")} for choice in choices if isinstance(choice, Mapping)],
                "usage": body.get("usage")}
    return chunk_events(as_chunk)


def _response_events(body: Mapping[str, Any]) -> list[Event]:
    texts = [part.get("text") for item in body.get("output") or () if isinstance(item, Mapping) and item.get("type") == "message"
             for part in item.get("content") or () if isinstance(part, Mapping) and part.get("type") == "output_text"]
    text = "".join(t for t in texts if isinstance(t, str))
    reason = "length" if body.get("status") == "incomplete" else "stop"
    return [*([TextDelta(text)] if text else []), *responses_usage(body), Finish(reason, None)]


def _better(kept: Answer | None, new: Answer) -> Answer:
    """A request answered twice (an output file and an errors file, or a retried request): a reply wins."""
    return kept if kept is not None and kept.body is not None else new


def _error_text(error: Any) -> str:
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
        return f"{message} ({code})" if code and message else str(message or code or "an error without a message")
    return str(error)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _brief(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, default=str) if not isinstance(data, str) else data
    return text if len(text) <= 120 else text[:117] + "..."
