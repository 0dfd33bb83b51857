from __future__ import annotations

import pytest

from granite_magic import PARAMETERS, InvalidParameterError
from granite_magic._params import Sampling, get_param, validate

PROTOCOL_FIELDS = {
    "temperature", "top_p", "top_k", "min_p", "top_a", "frequency_penalty", "presence_penalty",
    "repetition_penalty", "seed", "max_tokens", "stop", "logit_bias", "logprobs", "top_logprobs", "tool_choice",
}


def test_table_covers_every_sampling_field_with_help() -> None:
    assert {p.name for p in PARAMETERS} == PROTOCOL_FIELDS
    for param in PARAMETERS:
        assert param.help and param.range_text and param.default_text


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("temperature", "0.7", 0.7),
        ("temperature", 0, 0.0),
        ("temperature", 2, 2.0),
        ("top_p", 1, 1.0),
        ("top_k", "40", 40),
        ("top_k", 0, 0),
        ("seed", "-3", -3),
        ("seed", 7.0, 7),
        ("max_tokens", 1, 1),
        ("repetition_penalty", 2, 2.0),
        ("frequency_penalty", -2, -2.0),
        ("stop", "END", ["END"]),
        ("stop", ["a", "b"], ["a", "b"]),
        ("logit_bias", '{"50256": -100}', {50256: -100}),
    ],
)
def test_valid_values_are_coerced(name: str, value: object, expected: object) -> None:
    assert validate(name, value) == expected


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("temperature", 3, "temperature=3 is out of range: must be a number, 0 <= temperature <= 2"),
        ("temperature", -0.1, "0 <= temperature <= 2"),
        ("top_p", 0, "0 < top_p <= 1"),
        ("repetition_penalty", 0, "0 < repetition_penalty <= 2"),
        ("top_k", -1, "top_k=-1 is out of range: must be an integer >= 0"),
        ("top_k", 1.5, "top_k=1.5 is not an integer"),
        ("max_tokens", 0, "max_tokens=0 is out of range: must be an integer >= 1"),
        ("min_p", 1.5, "0 <= min_p <= 1"),
        ("presence_penalty", 2.5, "-2 <= presence_penalty <= 2"),
        ("temperature", "hot", "temperature='hot' is not a number"),
        ("temperature", float("nan"), "not finite"),
        ("seed", True, "seed=True is not a number"),
        ("stop", ["a", "b", "c", "d", "e"], "1 to 4 non-empty strings"),
        ("stop", [""], "1 to 4 non-empty strings"),
        ("logit_bias", "{bad", "logit_bias is not valid JSON"),
        ("logit_bias", {"x": 1}, "not a token id"),
        ("logit_bias", {"5": 101}, "-100..100"),
        ("warmth", 1, "unknown parameter 'warmth'"),
    ],
)
def test_invalid_values_name_parameter_value_and_range(name: str, value: object, fragment: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        validate(name, value)
    assert fragment in str(info.value)


def test_only_set_fields_are_kept() -> None:
    assert dict(Sampling({"temperature": 0.2, "top_p": None, "seed": 3})) == {"temperature": 0.2, "seed": 3}


def test_sampling_is_validated_on_creation_and_frozen() -> None:
    sampling = Sampling({"temperature": "0.7", "logit_bias": '{"7": 5}'})
    assert dict(sampling) == {"temperature": 0.7, "logit_bias": {7: 5}}
    with pytest.raises(InvalidParameterError, match="temperature"):
        Sampling({"temperature": 9})
    with pytest.raises(TypeError):
        sampling["temperature"] = 1.0  # type: ignore[index]


def test_each_target_gets_its_own_field_names() -> None:
    sampling = Sampling({"max_tokens": 5, "stop": ["x"], "repetition_penalty": 1.1, "top_a": 0.2})
    assert sampling.for_target("chat") == {"max_tokens": 5, "stop": ["x"], "repetition_penalty": 1.1, "top_a": 0.2}
    assert sampling.for_target("responses")["max_output_tokens"] == 5
    assert sampling.for_target("messages")["stop_sequences"] == ["x"]
    # llama.cpp calls it repeat_penalty and has no top-a sampler
    assert sampling.for_target("llama_cpp") == {"max_tokens": 5, "stop": ["x"], "repeat_penalty": 1.1}


def test_option_names_follow_the_design() -> None:
    assert get_param("top_p").option == "--top-p"
    assert get_param("repetition_penalty").option == "--repetition-penalty"
