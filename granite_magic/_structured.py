"""Structured output (``--schema``), without I/O: the request that asks for JSON of a schema, what a reply holds,
and the one repair.

Whatever the method (``Structure.method``), the schema is in the prompt: a grammar constrains tokens only and the
model never sees the schema's descriptions, and a provider's ``response_format`` says nothing to a model that was
not told what the fields mean.  Every reply is then checked here, by the project's own validator: a grammar or a
provider can be wrong (a provider may drop ``response_format`` silently), so ``valid`` is measured, not assumed.  A
reply that does not fit is sent back once with what is wrong (instructor's re-ask); after that it is reported as
invalid, its text kept.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._result import Result, Usage
from ._shapes import Request, Structure
from ._values import raw_decode
from ._vocab import SchemaMethod

if TYPE_CHECKING:
    from ._spec import OutputSchema

__all__ = ["CUT_SHORT", "MOST_ATTEMPTS", "finished", "read_reply", "repair_request", "structured_request", "worth_repairing"]

MOST_ATTEMPTS = 2  # the first request, and one repair
_REPAIR = ("That reply does not fit the schema: {problems}. Reply again with only the corrected JSON object, and "
           "nothing before or after it.")
_MOST_PROBLEMS = 5  # named in a repair request; the rest are counted
CUT_SHORT = "the reply was cut at its token limit (finish: length): ask for more tokens (max tokens)"


def worth_repairing(result: Result, problems: Sequence[str]) -> bool:
    """A reply that does not fit is asked again, unless the token limit cut it: the same limit would cut the next."""
    return bool(problems) and result.finish_reason != "length"
_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


def structured_request(request: Request, schema: OutputSchema, method: SchemaMethod) -> Request:
    """``request`` asking for a reply of ``schema`` by ``method``: the schema in the system message, and the
    ``Structure`` each client spells (a grammar, ``response_format``, or nothing more)."""
    messages = _with_system(request.messages, schema.prompt_text())
    return dataclasses.replace(request, messages=messages, structure=Structure(schema.schema, schema.name, method))


def read_reply(text: str, schema: OutputSchema) -> tuple[Any, list[str]]:
    """The JSON value a reply holds (in a code fence or around prose too: a model asked in words may add them) and
    what is wrong with it against ``schema``; the value is None unless it fits."""
    found = _json_text(text)
    if found is None:
        return None, ["it holds no JSON object"]
    try:  # a raw newline inside a string is read as one: llama.cpp's JSON grammar lets a model write it
        value, _ = raw_decode(found, strict=False)
    except ValueError as exc:
        return None, [f"it is not valid JSON ({str(exc).split(':')[0]})"]
    problems = schema.errors(value)
    return (None if problems else value), problems


def repair_request(request: Request, reply: str, problems: Sequence[str]) -> Request:
    """The request that asks again: the conversation, the reply that did not fit, and what is wrong with it."""
    named = "; ".join(problems[:_MOST_PROBLEMS]) + (f"; and {len(problems) - _MOST_PROBLEMS} more" if len(problems) > _MOST_PROBLEMS else "")
    messages = (*request.messages, {"role": "assistant", "content": reply}, {"role": "user", "content": _REPAIR.format(problems=named)})
    return dataclasses.replace(request, messages=messages)


def finished(result: Result, schema: OutputSchema, method: str, attempts: int, earlier: Sequence[Result] = ()) -> Result:
    """``result`` with the validated value (an instance when a class was given), how it was obtained, how many
    requests it took and, when it still does not fit, what is wrong; the usage counts every attempt's tokens."""
    value, problems = (None, ["the reply is not whole"]) if result.partial else read_reply(result.text, schema)
    if problems and result.finish_reason == "length":
        problems = [CUT_SHORT, *problems]
    decoded = schema.decode(value) if not problems else None
    usage = _total(result.usage, [each.usage for each in earlier]) if earlier else result.usage
    return dataclasses.replace(result, value=decoded, schema_method=method, schema_attempts=attempts,
                               schema_errors=list(problems), usage=usage)


def _json_text(text: str) -> str | None:
    """Where the JSON object in a reply starts: a fenced block's body, else the first ``{``."""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start = body.find("{")
    return body[start:] if start >= 0 else None


def _with_system(messages: Sequence[Mapping[str, Any]], addition: str) -> tuple[Mapping[str, Any], ...]:
    if messages and messages[0].get("role") == "system":
        return ({**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{addition}"}, *messages[1:])
    return ({"role": "system", "content": addition}, *messages)


def _total(last: Usage, earlier: Sequence[Usage]) -> Usage:
    """Every attempt's tokens and cost: a repaired reply cost both requests (a count unknown for one is unknown)."""
    def total(name: str) -> Any:
        values = [getattr(usage, name) for usage in (*earlier, last)]
        return None if any(v is None for v in values) else sum(values)

    return Usage(**{f.name: total(f.name) for f in dataclasses.fields(Usage)})
