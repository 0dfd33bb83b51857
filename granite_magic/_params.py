"""The one table of sampling parameters, and ``Sampling``: values validated once.

Validation, the magic's options and help, the panel's controls, the three HTTP
request bodies and the llama.cpp call are all derived from ``PARAMETERS``:
adding a parameter is one row.  A row names the parameter on each target where
its wire name differs (``wire``), so no other module spells parameter names.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from ._errors import InvalidParameterError
from ._vocab import APIS, Api

__all__ = [
    "APIS",
    "PARAMETERS",
    "TARGETS",
    "Api",
    "Param",
    "Sampling",
    "WireTarget",
    "get_param",
    "read_escapes",
    "validate",
    "write_escapes",
]

# Where a request goes: the three HTTP API shapes, raw completions (--raw) and llama.cpp in this process.
WireTarget = Literal[Api, "completions", "llama_cpp"]
TARGETS: tuple[WireTarget, ...] = get_args(WireTarget)


@dataclass(frozen=True)
class Param:
    """One sampling field of the chat completions request.

    ``default`` documents what the provider uses when the field is absent: it is
    never sent, because OpenRouter injects no defaults and we want the request
    to hold only what the user chose.
    """

    name: str
    kind: str  # "float" | "int" | "bool" | "choice" | "stop" | "logit_bias"
    help: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    step: float | None = None  # slider step for the panel
    absent: str = "provider's own"  # what happens when the field is not sent and default is None
    wire: Mapping[str, str | None] = field(default_factory=dict)  # target -> its name there (None: not sent there)
    start: Any = None  # the panel's starting value when the default is the provider's own

    def wire_name(self, target: WireTarget) -> str | None:
        """The field's name in ``target``'s request, or None when that target has no such parameter."""
        return self.wire.get(target, self.name)

    @property
    def option(self) -> str:
        """The magic's long option, e.g. ``--top-p``."""
        return "--" + self.name.replace("_", "-")

    @property
    def must_be(self) -> str:
        """The range as a message says it: "must be a number, 0 <= temperature <= 2"."""
        text = self.range_text
        return f"an {text}" if text.startswith("integer") else f"a {text}" if text.startswith("number") else text

    @property
    def range_text(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "auto, none, required, or a function's name"
        if self.kind == "stop":
            return "up to 4 strings"
        if self.kind == "logit_bias":
            return 'JSON object {"token id": -100..100}'
        low = "" if self.minimum is None else _fmt(self.minimum)
        high = "" if self.maximum is None else _fmt(self.maximum)
        word = "integer" if self.kind == "int" else "number"
        if low and high:
            op = "<" if self.exclusive_minimum else "<="
            return f"{word}, {low} {op} {self.name} <= {high}"
        if low:
            op = ">" if self.exclusive_minimum else ">="
            return f"{word} {op} {low}"
        return f"any {word}"

    @property
    def short_range(self) -> str:
        """The range in a few characters, for a control's label: ``0 to 2``, ``>= 1``."""
        if self.kind in ("stop", "logit_bias", "bool", "choice") or self.minimum is None:
            return self.range_text
        low = ("over " if self.exclusive_minimum else "") + _fmt(self.minimum)
        return f"{low} to {_fmt(self.maximum)}" if self.maximum is not None else f"{'>' if self.exclusive_minimum else '>='} {_fmt(self.minimum)}"

    @property
    def default_text(self) -> str:
        return self.absent if self.default is None else _fmt(self.default)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# Ranges and defaults from OpenRouter's API reference (see shared/reference).
PARAMETERS: tuple[Param, ...] = (
    Param("temperature", "float", "Randomness: 0 is greedy, higher spreads choice over more tokens.", 1.0, 0, 2, step=0.05),
    Param("top_p", "float", "Nucleus sampling: keep the smallest set of tokens whose probability sums to p.", 1.0, 0, 1, exclusive_minimum=True, step=0.01),
    Param("top_k", "int", "Keep only the k most likely tokens (0 turns it off).", 0, 0, None, step=1),
    Param("min_p", "float", "Drop tokens less likely than min_p times the most likely one.", 0.0, 0, 1, step=0.01),
    Param("top_a", "float", "Drop tokens below top_a times the square of the top probability.", 0.0, 0, 1, step=0.01,
          wire={"llama_cpp": None}),  # llama.cpp has no top-a sampler
    Param("frequency_penalty", "float", "Penalise tokens in proportion to how often they already appeared.", 0.0, -2, 2, step=0.05),
    Param("presence_penalty", "float", "Penalise tokens that already appeared at all.", 0.0, -2, 2, step=0.05),
    Param("repetition_penalty", "float", "Multiplicative penalty on repeated tokens (1 is none).", 1.0, 0, 2, exclusive_minimum=True, step=0.01,
          wire={"llama_cpp": "repeat_penalty"}),
    Param("seed", "int", "Seed for sampling: the same seed and parameters should repeat the output.", step=1, absent="none", start=1),
    Param("max_tokens", "int", "Upper bound on the number of generated tokens.", None, 1, None, step=1, start=256,
          wire={"responses": "max_output_tokens"}),
    Param("stop", "stop", "Stop generating when one of these strings appears (up to 4); in a cell, \\n is a newline "
          "(\\t a tab, \\\\ a backslash).", absent="none", wire={"messages": "stop_sequences"}),
    Param("logit_bias", "logit_bias", "Add a bias (-100..100) to the logits of token ids.", absent="none"),
    # Token probabilities (--probs K sets both).  Anthropic's Messages API has none; the local backend reads
    # top_logprobs itself and computes the top K from the model's logits, so llama.cpp is given neither.
    Param("logprobs", "bool", "Return the log probability of each generated token.", absent="false",
          wire={"responses": None, "messages": None, "completions": None, "llama_cpp": None}),
    # The completions API's logprobs is this number (the body builder sends 0 for logprobs alone).
    Param("top_logprobs", "int", "How many most likely alternatives to return for each token (needs logprobs).", None, 0, 20,
          step=1, start=10, absent="none", wire={"messages": None, "completions": "logprobs", "llama_cpp": None}),
    # Which tool the model must call; each shape spells the value differently, so the body builders
    # write it (only when tools are offered) rather than a wire name.
    Param("tool_choice", "choice", "Whether the model may, must or must not call a tool, or which one.", absent="auto",
          wire={"chat": None, "responses": None, "messages": None, "completions": None, "llama_cpp": None}),
)

_BY_NAME = {p.name: p for p in PARAMETERS}
_MAX_STOP_SEQUENCES = 4


# What a backslash names in text typed on one line (a cell's options), as in the llm and OpenAI command lines.
_ESCAPES = {"\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


def read_escapes(text: str) -> str:
    """``\\n``, ``\\t``, ``\\r`` and ``\\\\`` in ``text`` as the characters they name; any other backslash stays as typed."""
    return re.sub(r"\\([\\ntr])", lambda found: _ESCAPES[found.group(1)], text)


def write_escapes(text: str) -> str:
    """``text`` on one line: ``read_escapes(write_escapes(text)) == text``."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def get_param(name: str) -> Param:
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(_BY_NAME)
        raise InvalidParameterError(f"unknown parameter {name!r}; known parameters: {known}") from None


def validate(name: str, value: Any) -> Any:
    """Return ``value`` coerced to the parameter's type, or raise with the valid range."""
    param = get_param(name)
    if param.kind == "bool":
        return _validate_bool(name, value)
    if param.kind == "choice":
        return _validate_choice(name, value)
    if param.kind == "stop":
        return _validate_stop(value)
    if param.kind == "logit_bias":
        return _validate_logit_bias(value)
    number = _coerce_number(param, value)
    if not _in_range(param, number):
        raise InvalidParameterError(f"{name}={value!r} is out of range: must be {param.must_be}", names=(name,))
    return number


class Sampling(Mapping[str, Any]):
    """Sampling parameters, validated once where a person typed them, then trusted.

    Built from user values (a cell's options, the panel's controls, ``chat()``'s
    keyword arguments); ``None`` means "not set" and is dropped.  Frozen: layers
    below pass it on and read it, never validate it again.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any] | None = None, /) -> None:
        checked = {name: validate(name, value) for name, value in (values or {}).items() if value is not None}
        self._values: Mapping[str, Any] = MappingProxyType(checked)

    @classmethod
    def _trusted(cls, values: Mapping[str, Any]) -> Sampling:
        sampling = cls.__new__(cls)
        sampling._values = MappingProxyType(dict(values))
        return sampling

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __or__(self, other: Sampling) -> Sampling:
        """``other``'s values over these; both are validated already."""
        return Sampling._trusted({**self._values, **other._values})

    def for_target(self, target: WireTarget) -> dict[str, Any]:
        """The values under ``target``'s field names, leaving out what it does not have."""
        wire: dict[str, Any] = {}
        for name, value in self._values.items():
            field_name = _BY_NAME[name].wire_name(target)
            if field_name is not None:
                wire[field_name] = value
        return wire

    def __repr__(self) -> str:
        return f"Sampling({dict(self._values)!r})"


def _coerce_number(param: Param, value: Any) -> float | int:
    if isinstance(value, bool):
        raise InvalidParameterError(f"{param.name}={value!r} is not a number: must be {param.must_be}", names=(param.name,))
    try:
        if param.kind == "int":
            number: float | int = _to_int(value)
        else:
            number = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"{param.name}={value!r} is not {'an integer' if param.kind == 'int' else 'a number'}: "
            f"must be {param.must_be}", names=(param.name,)
        ) from None
    if isinstance(number, float) and not math.isfinite(number):
        raise InvalidParameterError(f"{param.name}={value!r} is not finite: must be {param.must_be}", names=(param.name,))
    return number


def _to_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    return int(str(value).strip())


def _in_range(param: Param, number: float) -> bool:
    if param.minimum is not None and (number < param.minimum or (param.exclusive_minimum and number == param.minimum)):
        return False
    return param.maximum is None or number <= param.maximum


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _validate_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise InvalidParameterError(f"{name}={value!r} is invalid: must be true or false")


def _validate_choice(name: str, value: Any) -> str:
    text = str(value).strip()
    if not text or not (text in ("auto", "none", "required") or text.replace("_", "a").isalnum()):
        raise InvalidParameterError(f"{name}={value!r} is invalid: must be auto, none, required, or a function's name")
    return text


def _validate_stop(value: Any) -> list[str]:
    sequences = [value] if isinstance(value, str) else list(_iterable(value, "stop"))
    if not 1 <= len(sequences) <= _MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in sequences):
        raise InvalidParameterError(f"stop={value!r} is invalid: must be 1 to 4 non-empty strings")
    return sequences


def _iterable(value: Any, name: str) -> Iterable[Any]:
    if isinstance(value, (list, tuple)):
        return value
    raise InvalidParameterError(f"{name}={value!r} is invalid: must be a string or a list of strings")


def _validate_logit_bias(value: Any) -> dict[int, float]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidParameterError(f"logit_bias is not valid JSON ({exc.msg}): {value!r}") from None
    if not isinstance(value, Mapping):
        raise InvalidParameterError(f'logit_bias={value!r} is invalid: must be a JSON object {{"token id": -100..100}}')
    bias: dict[int, float] = {}
    for token, weight in value.items():
        if not (str(token).strip().isascii() and str(token).strip().isdigit()):
            raise InvalidParameterError(f"logit_bias key {token!r} is not a token id (a non-negative integer)")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not -100 <= weight <= 100:
            raise InvalidParameterError(f"logit_bias[{token!r}]={weight!r} is out of range: must be -100..100")
        bias[int(str(token).strip())] = weight
    return bias
