"""Structured output's schemas (``--schema``, ``schema=``): the field list, JSON Schema dicts and classes, what is
refused before anything is sent, and what the validator says about a reply."""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any, Literal, TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granite_magic import InvalidParameterError
from granite_magic._schema import schema_errors, schema_problems
from granite_magic._spec import output_schema, parse_spec, spec_text, to_spec


def refusal(given: Any) -> str:
    """The one-line message ``output_schema`` refuses ``given`` with (it must refuse, naming the schema)."""
    with pytest.raises(InvalidParameterError) as caught:
        output_schema(given)
    assert caught.value.names == ("schema",)
    assert "\n" not in caught.value.message
    return caught.value.message


# --- the field list ---------------------------------------------------------------------------------------------


def test_the_issues_example_gives_an_enumeration_a_string_and_a_number_all_required() -> None:
    schema = output_schema("sentiment: positive|negative|neutral, reason, score float")
    assert schema.schema == {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "reason": {"type": "string"},
            "score": {"type": "number"},
        },
        "required": ["sentiment", "reason", "score"],
        "additionalProperties": False,
    }
    assert schema.spec == "sentiment: positive|negative|neutral, reason, score float"
    assert (schema.name, schema.fields()) == ("reply", ["sentiment", "reason", "score"])


def test_an_enumeration_written_as_a_type_is_the_same_as_written_as_a_description() -> None:
    assert parse_spec("sentiment positive|negative") == parse_spec("sentiment: positive|negative")
    # a written type keeps a description that only looks like choices
    assert parse_spec("mood str: happy|sad")["properties"]["mood"] == {"type": "string", "description": "happy|sad"}
    # words with spaces are a description
    assert parse_spec("mood: happy or sad|angry")["properties"]["mood"] == {"type": "string", "description": "happy or sad|angry"}


def test_types_lists_and_descriptions() -> None:
    properties = parse_spec("name: the person's name, age int: in years, tall bool, tags str[], scores float[], "
                            "moods happy|sad[]: one per day, grid int[][]")["properties"]
    assert properties == {
        "name": {"type": "string", "description": "the person's name"},
        "age": {"type": "integer", "description": "in years"},
        "tall": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "scores": {"type": "array", "items": {"type": "number"}},
        "moods": {"type": "array", "items": {"type": "string", "enum": ["happy", "sad"]}, "description": "one per day"},
        "grid": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
    }
    assert parse_spec("tags: a|b|c[]")["properties"]["tags"] == {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}}


def test_with_newlines_each_line_is_a_field_and_descriptions_keep_their_commas_and_colons() -> None:
    text = """
    name: the person's name
    bio: a short bio, no more than three sentences

    born: the date, as YYYY-MM-DD: no time
    stars 1|2|3
    """
    properties = parse_spec(text)["properties"]
    assert properties == {
        "name": {"type": "string", "description": "the person's name"},
        "bio": {"type": "string", "description": "a short bio, no more than three sentences"},
        "born": {"type": "string", "description": "the date, as YYYY-MM-DD: no time"},
        "stars": {"type": "string", "enum": ["1", "2", "3"]},  # the choices of an enumeration are strings
    }


def test_blank_items_are_skipped_and_spaces_do_not_matter() -> None:
    assert parse_spec("  name ,age   int,  ") == parse_spec("name, age int")


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("", "no fields"),
        (" , ,", "no fields"),
        ("score flaot", "'flaot' (did you mean float?"),
        ("age integer", "'integer' (did you mean int?"),
        ("x Int", "did you mean int?"),
        ("colour red", "unknown type 'red'"),
        ("colour #red", "unknown type '#red' (types:"),
        (": just a description", "has no name"),
        ("name, name int", "the field 'name' is given twice"),
        ("full name: the name", "unknown type 'name' (a name is one word, as in full_name;"),
        ("first last name: the name", "'first last name' is not 'name [type]'"),
        ("2nd int", "'2nd' is not a field name"),
        ("tags[]", "[] goes after a type"),
        ("a.b", "'a.b' is not a field name"),
        ("age, int", "'int' is a type, not a field name"),
        ("name,\nage int", "with newlines, each line is one field"),
        ("mood happy||sad", "an empty choice in 'happy||sad'"),
        ("mood: happy|", "an empty choice"),
        ("mood a|b|a", "repeats a choice"),
        ("value int|str", "reads as a union of types"),
        ("{oops", "starts with { but is not JSON"),
        ("[1, 2]", "'[1' is not a field name"),
    ],
)
def test_a_spec_that_cannot_be_read_is_refused_in_one_line_naming_the_word(spec: str, named: str) -> None:
    assert named in refusal(spec)


def test_json_schema_text_is_a_spec_too() -> None:
    text = '{"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"]}'
    schema = output_schema(text)
    assert schema.spec == text and schema.fields() == ["n"]
    assert schema.errors({"n": 0}) == ["n: must be at least 1, got 0"]


# --- JSON Schema dicts ------------------------------------------------------------------------------------------


def test_a_dict_is_copied_and_gets_a_closed_top_level_unless_it_says_otherwise() -> None:
    given = {"type": "object", "title": "Weather report", "properties": {"t": {"type": "number", "description": "°C"}}}
    schema = output_schema(given)
    assert schema.schema == {"type": "object", "properties": {"t": {"type": "number", "description": "°C"}}, "required": [],
                             "additionalProperties": False, "title": "Weather report"}
    assert schema.name == "Weather_report" and schema.spec is None
    given["properties"]["t"]["type"] = "string"  # a later change to the caller's dict is not ours
    assert schema.schema["properties"]["t"]["type"] == "number"
    assert output_schema({**given, "additionalProperties": True}).schema["additionalProperties"] is True


def test_refs_to_the_schemas_own_defs_are_inlined() -> None:
    schema = output_schema({
        "type": "object",
        "properties": {"home": {"$ref": "#/$defs/Place", "description": "where they live"},
                       "trips": {"type": "array", "items": {"$ref": "#/definitions/Place"}}},
        "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
        "definitions": {"Place": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    })
    place = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    assert schema.schema["properties"] == {"home": {**place, "description": "where they live"},
                                           "trips": {"type": "array", "items": place}}
    assert "$defs" not in schema.schema and "definitions" not in schema.schema
    assert schema.errors({"home": {"city": 1}, "trips": [{}]}) == ["home.city: expected string, got integer 1",
                                                                     "trips[0].city: missing (it is required)"]


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"type": "array", "items": {"type": "string"}}, "the top level must be an object with properties"),
        ({"type": "object"}, "the top level must be an object with properties"),
        ({"type": "object", "properties": {}}, "has no properties"),
        ({"type": "object", "properties": {"a": {"type": "string", "if": {}}}}, "unsupported keyword 'if' at field a"),
        ({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer", "multipleOf": 2}}}},
         "unsupported keyword 'multipleOf' at field a[]"),
        ({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"not": {}}}}}},
         "unsupported keyword 'not' at field a.b"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "patternProperties": {}},
         "unsupported keyword 'patternProperties' at the top level"),
        ({"type": "object", "properties": {"a": {"type": "str"}}}, "'type' at field a must be one of string"),
        ({"type": "object", "properties": {"a": {"type": "number", "minimum": 0, "exclusiveMinimum": True}}},
         "'exclusiveMinimum' at field a is true (draft 4's form)"),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}},
         "'pattern' at field a must be a regular expression Python can read"),
        ({"type": "object", "properties": {"a": {"type": "string", "maxLength": -1}}}, "'maxLength' at field a must be a whole number"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "'required' at the top level names 'b'"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/Nowhere"}}}, "points outside the schema's own $defs"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/T"}}, "$defs": {"T": {"type": "array", "items": {"$ref": "#/$defs/T"}}}},
         "T -> T refers to itself"),
        ({"type": "object", "properties": {"a": {"type": "integer", "default": {1, 2}}}}, "the dict is not JSON"),
    ],
)
def test_a_schema_the_validator_cannot_check_is_refused_naming_the_keyword_and_where(given: dict[str, Any], named: str) -> None:
    assert named in refusal(given)


def test_several_problems_are_counted_in_the_one_line() -> None:
    assert refusal({"type": "object", "properties": {"a": {"if": {}}, "b": {"then": {}}}}).endswith("(and 1 more)")


def test_annotations_pass_and_an_output_schema_is_itself() -> None:
    given = {"type": "object", "$schema": "https://json-schema.org/draft/2020-12/schema", "$comment": "x",
             "properties": {"when": {"type": "string", "format": "date", "examples": ["2025-01-01"], "deprecated": False}}}
    assert schema_problems(given) == []
    schema = output_schema(given)
    assert output_schema(schema) is schema


@pytest.mark.parametrize("given", [42, None, ["a"], int, list[int], Literal["a"], enum.Enum("E", "A B")])
def test_what_is_no_schema_at_all_is_refused(given: Any) -> None:
    assert "schema=" in refusal(given)


# --- classes ----------------------------------------------------------------------------------------------------


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


@dataclasses.dataclass
class Address:
    city: str
    postcode: str | None = None


@dataclasses.dataclass
class Person:
    name: str
    age: int
    mood: Mood
    kind: Literal["friend", "colleague"]
    addresses: list[Address]


class Scores(TypedDict):
    label: str
    values: list[float]


@dataclasses.dataclass
class Tree:
    children: list[Tree]


@dataclasses.dataclass
class Opaque:
    handle: complex


def test_a_dataclass_round_trips_into_instances_nested_ones_too() -> None:
    schema = output_schema(Person)
    assert schema.name == "Person" and schema.spec is None
    assert schema.fields() == ["name", "age", "mood", "kind", "addresses"]
    address = schema.schema["properties"]["addresses"]["items"]
    assert address["additionalProperties"] is False and address["required"] == ["city"]
    assert schema.schema["properties"]["mood"] == {"type": "string", "enum": ["happy", "sad"]}

    reply = json.loads('{"name": "Ada", "age": 36.0, "mood": "happy", "kind": "friend", "addresses": [{"city": "London"}]}')
    assert schema.errors(reply) == []
    person = schema.decode(reply)
    assert person == Person("Ada", 36, Mood.HAPPY, "friend", [Address("London")])
    assert type(person.age) is int

    assert schema.errors({**reply, "kind": "rival"}) == ['kind: "rival" is not one of ["friend", "colleague"]']
    assert schema.errors({**reply, "addresses": [{"city": "Paris", "zip": "75"}]}) == [
        "addresses[0].zip: unexpected (expected only city, postcode)"]


def test_a_typeddict_decodes_to_a_dict() -> None:
    schema = output_schema(Scores)
    assert schema.schema["properties"] == {"label": {"type": "string"}, "values": {"type": "array", "items": {"type": "number"}}}
    assert schema.decode({"label": "x", "values": [1, 2.5]}) == {"label": "x", "values": [1.0, 2.5]}
    assert spec_text(schema) == "label, values float[]"  # a class's shape can still be written into a cell


def test_a_class_with_no_json_form_or_that_contains_itself_is_refused() -> None:
    assert refusal(Opaque) == ("schema=Opaque: Opaque.handle: complex has no JSON Schema (give it a JSON form: str, int, float, "
                               "bool, a list, an Enum, a Literal, a dataclass)")
    assert "Tree refers to itself (a recursive schema cannot be checked here)" in refusal(Tree)


def test_a_pydantic_model_round_trips_with_its_constraints_checked() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Place(pydantic.BaseModel):
        city: str = pydantic.Field(description="the city")

    class Review(pydantic.BaseModel):
        title: str = pydantic.Field(min_length=3, pattern="^[A-Z]")
        stars: int = pydantic.Field(ge=1, le=5)
        mood: Mood
        place: Place
        also: list[Place] = pydantic.Field(default_factory=list)

    schema = output_schema(Review)
    assert schema.name == "Review"
    assert schema.schema["properties"]["place"]["additionalProperties"] is False  # closed like the top level
    assert schema.schema["properties"]["mood"]["enum"] == ["happy", "sad"]  # the $ref to Mood inlined
    reply = {"title": "Great", "stars": 5, "mood": "sad", "place": {"city": "Oslo"}}
    assert schema.errors(reply) == []
    review = schema.decode(reply)
    assert isinstance(review, Review) and review.place == Place(city="Oslo") and review.mood is Mood.SAD
    assert schema.errors({**reply, "stars": 6, "title": "ok"}) == [
        "title: must be at least 3 characters long, got 2: \"ok\"", "title: \"ok\" does not match the pattern \"^[A-Z]\"",
        "stars: must be at most 5, got 6"]


def test_a_pydantic_tagged_union_is_inlined_whole() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Cat(pydantic.BaseModel):
        kind: Literal["cat"]
        lives: int

    class Dog(pydantic.BaseModel):
        kind: Literal["dog"]
        good: bool

    class Pet(pydantic.BaseModel):
        pet: Cat | Dog = pydantic.Field(discriminator="kind")

    schema = output_schema(Pet)
    assert "$defs" not in json.dumps(schema.schema)  # the discriminator's mapping pointed into them: dropped with them
    assert schema.errors({"pet": {"kind": "dog", "good": True}}) == []
    assert schema.decode({"pet": {"kind": "dog", "good": True}}).pet == Dog(kind="dog", good=True)
    assert schema.errors({"pet": {"kind": "dog", "lives": 9}}) != []


def test_a_recursive_pydantic_model_is_refused() -> None:
    pydantic = pytest.importorskip("pydantic")
    namespace: dict[str, Any] = {}
    exec("class Node(BaseModel):\n    children: list['Node'] = []", {"BaseModel": pydantic.BaseModel}, namespace)
    assert "Node -> Node refers to itself" in refusal(namespace["Node"])


def test_what_decode_refuses_is_an_error_so_decode_never_raises_for_a_value_without_errors() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Even(pydantic.BaseModel):
        n: int

        @pydantic.field_validator("n")
        @classmethod
        def even(cls, n: int) -> int:
            if n % 2:
                raise ValueError("must be even")
            return n

    schema = output_schema(Even)
    assert schema.errors({"n": 2}) == []
    assert schema.errors({"n": 3}) == ["n: Value error, must be even"]


# --- errors, words and names ------------------------------------------------------------------------------------

REVIEW = output_schema("sentiment: positive|negative|neutral, reason, score float, tags str[]")
GOOD = {"sentiment": "positive", "reason": "tasty", "score": 0.9, "tags": ["food"]}


@pytest.mark.parametrize(
    ("value", "errors"),
    [
        (GOOD, []),
        ({**GOOD, "score": "high"}, ['score: expected number, got string "high"']),
        ({k: v for k, v in GOOD.items() if k != "reason"}, ["reason: missing (it is required)"]),
        ({**GOOD, "extra": 1}, ["extra: unexpected (expected only sentiment, reason, score, tags)"]),
        ({**GOOD, "sentiment": "meh"}, ['sentiment: "meh" is not one of ["positive", "negative", "neutral"]']),
        ({**GOOD, "tags": ["a", 2]}, ["tags[1]: expected string, got integer 2"]),
        (["not", "an", "object"], ['the reply: expected object, got array ["not", "an", "object"]']),
    ],
)
def test_errors_name_the_field_and_what_is_wrong(value: Any, errors: list[str]) -> None:
    assert REVIEW.errors(value) == errors


@pytest.mark.parametrize(
    ("value", "schema", "errors"),
    [
        (5, {"minimum": 5, "maximum": 5}, []),
        (4, {"minimum": 5}, ["x: must be at least 5, got 4"]),
        (6.5, {"maximum": 5}, ["x: must be at most 5, got 6.5"]),
        (0, {"exclusiveMinimum": 0}, ["x: must be more than 0, got 0"]),
        (1, {"exclusiveMaximum": 1}, ["x: must be less than 1, got 1"]),
        ("ab", {"minLength": 3}, ['x: must be at least 3 characters long, got 2: "ab"']),
        ("日本語", {"maxLength": 3}, []),  # characters, not bytes
        ("abc", {"pattern": "^b"}, ['x: "abc" does not match the pattern "^b"']),
        ("abc", {"pattern": "b"}, []),  # search, not match: JSON Schema patterns are not anchored
        ([1, True, 1], {"uniqueItems": True}, ["x: items 0 and 2 are equal (the items must be unique)"]),
        ("5", {"minimum": 9}, []),  # a bound checks numbers only
        (True, {"minimum": 9}, []),  # true is no number in JSON
    ],
)
def test_constraints_are_checked_for_structured_output(value: Any, schema: dict[str, Any], errors: list[str]) -> None:
    assert schema_errors(value, schema, "x", constraints=True) == errors


def test_tools_arguments_are_checked_without_the_constraints_as_before() -> None:
    assert schema_errors(4, {"minimum": 5}) == []
    assert schema_errors({"a": 4}, {"properties": {"a": {"minimum": 5}}}, constraints=True) == ["a: must be at least 5, got 4"]


def test_a_field_declared_int_decodes_to_an_int() -> None:
    schema = output_schema("n int, ns int[], x float")
    assert schema.decode({"n": 2.0, "ns": [1.0, 3], "x": 2.0}) == {"n": 2, "ns": [1, 3], "x": 2.0}
    assert type(schema.decode({"n": 2.0, "ns": [], "x": 1})["n"]) is int


def test_the_prompt_states_the_schema_on_one_line_and_is_the_same_each_time() -> None:
    schema = output_schema("ville: nom de la ville, température float")
    text = schema.prompt_text()
    instruction, body = text.split("\n")
    assert instruction == "Reply with one JSON object and nothing else, of this JSON Schema:"
    assert json.loads(body) == schema.schema and "température" in body  # not escaped
    assert output_schema("ville: nom de la ville, température float").prompt_text() == text


def test_names_fit_openais_json_schema_name() -> None:
    assert output_schema({"type": "object", "title": "A réview: 5 stars!" * 9, "properties": {"a": {}}}).name == (
        "A_r_view_5_stars_A_r_view_5_stars_A_r_view_5_stars_A_r_view_5_st")
    assert output_schema({"type": "object", "title": "???", "properties": {"a": {}}}).name == "reply"


def test_equal_schemas_are_equal_and_hash_alike_and_the_front_ends_name_is_kept() -> None:
    a, b = output_schema("a int, b"), output_schema("a int, b")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    named = dataclasses.replace(output_schema(Person), source="Person")  # --schema Person, a name in the notebook
    assert named.source == "Person" and named != output_schema(Person)
    assert named.decode({"name": "Bo", "age": 2, "mood": "sad", "kind": "friend", "addresses": []}) == Person("Bo", 2, Mood.SAD, "friend", [])


def test_spec_text_writes_the_spec_back_or_the_schema_as_json() -> None:
    assert spec_text(REVIEW) == REVIEW.spec
    bio = {"type": "object", "properties": {"bio": {"type": "string", "description": "short, kind"}}, "required": ["bio"]}
    assert spec_text(output_schema(bio)) == "bio: short, kind\n"  # the newline form keeps the comma
    assert output_schema(spec_text(output_schema(bio))).schema == output_schema(bio).schema
    optional = {**bio, "required": []}  # the field list has no optional fields: its JSON instead
    assert json.loads(spec_text(output_schema(optional))) == output_schema(optional).schema
    nested = output_schema(Person)
    assert to_spec(nested.schema) is None
    assert output_schema(spec_text(nested)).schema == nested.schema  # JSON Schema text, read back the same


# --- properties -------------------------------------------------------------------------------------------------

TYPE_WORDS = ("str", "int", "float", "bool")
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,12}", fullmatch=True).filter(lambda name: name not in TYPE_WORDS)
CHOICE = st.from_regex(r"[a-z][a-z0-9_.-]{0,8}", fullmatch=True).filter(lambda word: word not in TYPE_WORDS)
DESCRIPTION = st.from_regex(r"[A-Za-z][A-Za-z0-9 ,.'()-]{0,30}[a-z]", fullmatch=True)


@st.composite
def fields(draw: st.DrawFn) -> tuple[str, str, int, str | None]:
    """One field: its name, its base type word (a type or choices), how many [] and maybe a description."""
    name = draw(NAMES)
    base = draw(st.one_of(st.sampled_from(TYPE_WORDS), st.lists(CHOICE, min_size=2, max_size=4, unique=True).map("|".join)))
    return name, base, draw(st.integers(0, 2)), draw(st.none() | DESCRIPTION)


def written(field: tuple[str, str, int, str | None]) -> str:
    name, base, depth, description = field
    return f"{name} {base}{'[]' * depth}" + (f": {description}" if description else "")


def fitting(data: st.DataObject, base: str, depth: int) -> Any:
    """A JSON value of the field's type."""
    if depth:
        return data.draw(st.lists(st.just(None), max_size=3).map(lambda items: [fitting(data, base, depth - 1) for _ in items]))
    scalars: dict[str, st.SearchStrategy[Any]] = {"str": st.text(max_size=5), "int": st.integers(),
                                                  "float": st.floats(allow_nan=False, allow_infinity=False), "bool": st.booleans()}
    return data.draw(scalars[base] if base in scalars else st.sampled_from(base.split("|")))


def join(specs: list[tuple[str, str, int, str | None]]) -> str:
    """A spec of these fields: with commas, or one per line when a description holds a comma."""
    if any(description and "," in description for *_, description in specs):
        return "".join(f"{written(field)}\n" for field in specs)
    return ", ".join(map(written, specs))


# A type the value drawn for another no longer fits.
OTHER_TYPE = {"str": "int", "int": "str", "float": "bool", "bool": "str"}


@settings(max_examples=200, deadline=None)
@given(specs=st.lists(fields(), min_size=1, max_size=6, unique_by=lambda field: field[0]), data=st.data())
def test_any_spec_fits_values_of_its_types_and_a_changed_type_names_its_field(
        specs: list[tuple[str, str, int, str | None]], data: st.DataObject) -> None:
    schema = output_schema(join(specs))
    assert schema.fields() == [name for name, *_ in specs]
    value = {name: fitting(data, base, depth) for name, base, depth, _ in specs}
    assert schema.errors(value) == []
    spec = to_spec(schema.schema)  # the field list that means the same, read back the same
    assert spec is not None and parse_spec(spec) == schema.schema

    # one field's type changed: the same value now fails there, and only there
    index = data.draw(st.integers(0, len(specs) - 1))
    name, base, depth, description = specs[index]
    if not depth:
        changed = (name, OTHER_TYPE.get(base, "int"), 0, description)
    elif depth == 1 or value[name]:  # one [] less: a list (of lists) no longer fits, since its items are lists
        changed = (name, base, depth - 1, description)
    else:  # [] fits a list of any items: ask for a scalar
        changed = (name, "int", 0, description)
    errors = output_schema(join([changed if i == index else field for i, field in enumerate(specs)])).errors(value)
    assert errors and all(error.split(":")[0].split("[")[0] == name for error in errors), errors
