"""The shape a reply must have (``--schema``, ``schema=``): a short field list, a JSON Schema, or a class.

Pure (no I/O).  ``output_schema(given)`` turns any of these into an ``OutputSchema``: an object schema the
project's own validator checks completely (``_schema.schema_errors`` with its value constraints), the way back
to Python (``decode``: an instance when a class was given) and the words that tell a model the shape.  Anything
that could not be checked is refused before a request is sent, in one line that names it
(``InvalidParameterError``, ``names == ("schema",)``).

The field list (after simonw/llm's concise schema syntax, which it extends with enumerations and lists)::

    sentiment: positive|negative|neutral, reason, score float

* Fields are separated by commas; when the text holds a newline, by newlines only, so that a description can
  hold commas (as in llm).  Blank items are skipped (a trailing comma is harmless).
* A field is ``name [type] [: description]``.  The name is one word of letters, digits, ``_`` and ``-``, not
  starting with a digit or ``-``; it may not be a type word (``age, int`` is a slip for ``age int``).
* Types: ``str`` (the default), ``int``, ``float``, ``bool``; an enumeration of strings is written as its
  choices, ``positive|negative|neutral`` (two or more, none empty or repeated; numbers stay strings).  ``[]``
  after a type makes a list of it (``tags str[]``, ``moods happy|sad[]``, ``grid int[][]``).
* The description runs from the first ``:`` to the end of the field (so it may hold more colons, and commas in
  the newline form) and becomes the field's ``description``.  When no type is written and the description is
  only ``|``-separated words without spaces (``sentiment: positive|negative``, the issue's own example), it is
  read as the enumeration; write ``mood str: happy|sad`` for a description that merely looks like one.
* Every field is required and no other field is allowed (OpenAI's strict mode takes such a schema).
* A text that starts with ``{`` is JSON Schema itself (``--schema '{"type": "object", ...}'`` in a cell).

A JSON Schema dict must describe an object with properties; ``$ref`` into its ``$defs`` (or ``definitions``)
is inlined (a schema that refers to itself is refused: the validator cannot follow it), a missing ``required``
means none, and a missing top-level ``additionalProperties`` means false: a reply is the fields asked for.
Keywords are those the validator checks (``_schema.schema_problems`` names any other) plus annotations.

Classes: a dataclass or a TypedDict is described by ``SchemaBuilder`` (nested dataclasses, lists, Optional,
Literal, Enum; a hint with no JSON form is refused); a pydantic model (pydantic stays optional: it is
recognised by its ``model_json_schema``) by its own JSON Schema, its objects closed unless the model says
otherwise, and decoded by ``model_validate``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, get_origin

from ._errors import InvalidParameterError
from ._schema import JsonSchema, SchemaBuilder, object_schema, schema_errors, schema_problems
from ._values import clip, safe_repr

__all__ = ["SCHEMA_INSTRUCTION", "OutputSchema", "output_schema", "parse_spec", "spec_text", "to_spec"]

REPLY = "reply"  # the name of a schema that has no class or title, and how its errors name the whole reply
SCHEMA_INSTRUCTION = "Reply with one JSON object and nothing else, of this JSON Schema:"

# Type word -> JSON Schema type.
_TYPES: dict[str, str] = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
# A type word someone may write from habit -> the one the language uses.
_LIKELY: dict[str, str] = {"string": "str", "integer": "int", "number": "float", "double": "float", "boolean": "bool",
                           "list": "str[]", "array": "str[]", "text": "str"}
_NAME = re.compile(r"[^\W\d][\w-]*")  # a letter or _, then letters, digits, _ and -
_NOT_WIRE = re.compile(r"[^a-zA-Z0-9_-]+")  # what OpenAI's json_schema name may not hold
_CHOICES = re.compile(r"[^\s|]*(?:\|[^\s|]*)+")  # a|b|c, maybe with []: a description read as an enumeration
_LONGEST_SHOWN = 80


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class OutputSchema:
    """What a reply must be: ``schema`` (always an object schema), the ``name`` a provider's ``response_format``
    takes, the ``spec`` text as given (None for a dict or a class), and ``decode``, from a value that fits to the
    Python value (an instance when a class was given, else a dict).  ``source`` is how a front end named it
    (``--schema Review``: "Review"), kept for writing the cell back.  Two schemas are equal when they ask the same
    (``decode`` is not compared)."""

    schema: JsonSchema
    name: str = REPLY
    spec: str | None = None
    decode: Callable[[Any], Any] = field(default=_same, compare=False, repr=False)
    source: str | None = None

    def __hash__(self) -> int:  # a frozen value, though its schema is a dict
        return hash((json.dumps(self.schema, sort_keys=True), self.name, self.spec, self.source))

    def errors(self, value: Any) -> list[str]:
        """What is wrong with ``value`` (decoded by ``json.loads``), one line each; empty when it fits and decodes.

        Field paths name the place (``score: must be at most 10, got 12``); the whole value is "the reply".  A
        value that fits but that ``decode`` refuses (a pydantic validator, a date that is no date) is an error
        too, so that ``decode`` never raises for a value with no errors.
        """
        found = [_relabel(error) for error in schema_errors(value, self.schema, constraints=True)]
        if found:
            return found
        try:
            self.decode(value)
        except Exception as exc:  # the class's own checks: any refusal is a reason the reply does not fit
            return _decode_errors(exc)
        return []

    def prompt_text(self) -> str:
        """The words that tell a model the shape, for a system message: one instruction line, then the schema as
        one line of JSON (the same text for the same schema)."""
        return f"{SCHEMA_INSTRUCTION}\n{json.dumps(self.schema, ensure_ascii=False)}"

    def fields(self) -> list[str]:
        """The top-level field names, in order."""
        return list(self.schema["properties"])


def output_schema(schema: str | Mapping[str, Any] | type | OutputSchema) -> OutputSchema:
    """``schema`` as an ``OutputSchema``: a field list (or JSON Schema text), a JSON Schema dict, a dataclass, a
    TypedDict or a pydantic model.  Refused in one line (``InvalidParameterError``, ``names == ("schema",)``)
    when it cannot be checked completely: an unknown type word, an empty or repeated field name, an unsupported
    keyword (named, with where), a top level that is not an object with fields, a hint with no JSON form."""
    if isinstance(schema, OutputSchema):
        return schema
    if isinstance(schema, str):
        parsed = parse_spec(schema)
        return _checked(parsed, _wire_name(parsed.get("title")), spec=schema, decode=None)
    if isinstance(schema, Mapping):
        return _checked(schema, _wire_name(schema.get("title")), spec=None, decode=None)
    if isinstance(schema, type) and get_origin(schema) is None:  # list[X] passes isinstance(type) on some Pythons
        return _from_class(schema)
    _refuse(f"schema={clip(safe_repr(schema), _LONGEST_SHOWN)} is not a schema: give a field list such as "
            f"'name, age int', a JSON Schema dict, a dataclass, a TypedDict or a pydantic model")


def spec_text(schema: OutputSchema) -> str:
    """What to write after ``--schema`` to ask for the same shape: the text as given, else the field list that
    means the same schema, else the schema as one line of JSON (a cell cannot hold a class, but it can hold its shape)."""
    return schema.spec or to_spec(schema.schema) or json.dumps(schema.schema, ensure_ascii=False)


# --- the field list ------------------------------------------------------------------------------------


def parse_spec(text: str) -> JsonSchema:
    """The JSON Schema a spec text stands for (see the module's docstring): a field list, or JSON Schema text
    (starting with ``{``, returned as parsed; ``output_schema`` checks it)."""
    if text.lstrip().startswith("{"):
        return _json_text(text)
    items = [item.strip() for item in (text.splitlines() if "\n" in text else text.split(","))]
    properties: dict[str, JsonSchema] = {}
    for item in filter(None, items):
        name, schema = _field(item, newlines="\n" in text)
        if name in properties:
            _refuse(f"schema: the field {name!r} is given twice")
        properties[name] = schema
    if not properties:
        _refuse("schema: no fields are given (write them as 'name, age int, bio: a short bio')")
    return object_schema(properties, list(properties))


def _json_text(text: str) -> JsonSchema:
    try:
        value = json.loads(text)
    except ValueError as exc:
        _refuse(f"schema: the text starts with {{ but is not JSON ({exc})")
    if not isinstance(value, dict):
        _refuse("schema: the text starts with { but is not one JSON object")
    return value


def _field(item: str, newlines: bool) -> tuple[str, JsonSchema]:
    """One ``name [type] [: description]``."""
    head, _, description = item.partition(":")
    description = description.strip()
    words = head.split()
    if not words:
        _refuse(f"schema: the field {_shown(item)} has no name (write name [type] [: description])")
    if len(words) > 2:
        _refuse(f"schema: {_shown(head.strip())} is not 'name [type]': a field's name is one word (join words with _ or -), "
                f"and a description goes after a colon")
    name = _field_name(words[0], newlines)
    if len(words) == 2:
        schema = _type(words[1], name)
    elif _CHOICES.fullmatch(description):  # "sentiment: positive|negative": the choices written as a description
        schema, description = _type(description, name), ""
    else:
        schema = {"type": "string"}
    return name, {**schema, "description": description} if description else schema


def _field_name(name: str, newlines: bool) -> str:
    if name in _TYPES:
        _refuse(f"schema: {name!r} is a type, not a field name: write the type after the name with a space, as in 'age {name}'")
    if _NAME.fullmatch(name):
        return name
    why = "use letters, digits, _ and -, starting with a letter or _"
    if newlines and name.endswith(","):
        why = "with newlines, each line is one field and commas do not separate fields"
    elif "[" in name:
        why = "[] goes after a type, as in 'tags str[]'"
    _refuse(f"schema: {name!r} is not a field name ({why})")


def _type(word: str, name: str) -> JsonSchema:
    """A type word (``int``, ``a|b|c``, maybe with ``[]`` suffixes) as a JSON Schema."""
    base, depth = word, 0
    while base.endswith("[]"):
        base, depth = base[:-2], depth + 1
    schema = {"type": _TYPES[base]} if base in _TYPES else _enumeration(base, name)
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def _enumeration(word: str, name: str) -> JsonSchema:
    choices = word.split("|")
    if len(choices) < 2:
        likely = _LIKELY.get(word.lower()) or next(iter(difflib.get_close_matches(word.lower(), _TYPES, 1, 0.6)), None)
        # "full name: ..." reads as the field full of type name: say both ways out.
        hint = f"did you mean {likely}? " if likely else f"a name is one word, as in {name}_{word}; " if _NAME.fullmatch(word) else ""
        _refuse(f"schema: the field {name!r} has an unknown type {word!r} ({hint}types: str, int, float, bool, a|b|c "
                f"for one of several words, and [] after a type for a list)")
    if "" in choices:
        _refuse(f"schema: the field {name!r} has an empty choice in {word!r}")
    if len(set(choices)) < len(choices):
        _refuse(f"schema: the field {name!r} repeats a choice in {word!r}")
    if all(choice in _TYPES for choice in choices):
        _refuse(f"schema: the field {name!r} has {word!r}, which reads as a union of types: a field list has none "
                f"(give a JSON Schema with anyOf), and the words of an enumeration cannot all be type words")
    return {"type": "string", "enum": choices}


def to_spec(schema: Mapping[str, Any]) -> str | None:
    """The field list that means ``schema`` exactly, or None when the language cannot say it (nested objects,
    optional fields, bounds...).  Descriptions holding commas give the newline form."""
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        return None
    written = [_field_text(name, sub) for name, sub in properties.items()]
    fields = [text for text in written if text is not None]
    if len(fields) < len(written):
        return None
    # Commas in a description need the newline form: one line each, each ending in a newline (one field too).
    text = "".join(f"{field}\n" for field in fields) if any("," in field for field in fields) else ", ".join(fields)
    try:
        same = parse_spec(text) == schema  # the one test of "means the same": read it back
    except InvalidParameterError:
        return None
    return text if same else None


def _field_text(name: str, schema: Any) -> str | None:
    word, depth = schema, 0
    while isinstance(word, Mapping) and word.get("type") == "array" and "items" in word:
        word, depth = word["items"], depth + 1
    if not isinstance(word, Mapping):
        return None
    base = next((w for w, t in _TYPES.items() if word.get("type") == t), None)
    if "enum" in word and isinstance(word["enum"], list):
        base = "|".join(map(str, word["enum"]))
    description = schema.get("description") if isinstance(schema, Mapping) else None
    if base is None or "\n" in str(description or ""):
        return None
    # "str" is the default, written only where a description would otherwise be read as choices.
    plain = base == "str" and not depth and not (description and _CHOICES.fullmatch(description))
    text = name if plain else f"{name} {base}{'[]' * depth}"
    return f"{text}: {description}" if description else text


# --- JSON Schema and classes ---------------------------------------------------------------------------


def _checked(given: Mapping[str, Any], name: str, spec: str | None, decode: Callable[[Any], Any] | None) -> OutputSchema:
    """An ``OutputSchema`` of a JSON Schema, once everything in it is known to be checkable."""
    schema = _inline_refs(_json_copy(given))
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), Mapping):
        _refuse(f"schema: the top level must be an object with properties (a reply is one JSON object), "
                f"not {_shown(schema)}; to ask for a list, give it a field: 'items str[]'")
    if not schema["properties"]:
        _refuse("schema: the object has no properties: name at least one field")
    schema = {"type": "object", "properties": schema["properties"], "required": schema.get("required", []),
              "additionalProperties": schema.get("additionalProperties", False), **schema}
    problems = schema_problems(schema)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        _refuse(f"schema: {problems[0]}{more}")
    return OutputSchema(schema, name, spec, decode or _integers_of(schema))


def _json_copy(given: Mapping[str, Any]) -> JsonSchema:
    """A copy of ``given`` that later changes to the caller's dict do not reach, holding only JSON values."""
    try:
        copied = json.loads(json.dumps(given, allow_nan=False))
    except (TypeError, ValueError) as exc:  # a set, an object, NaN, a dict that contains itself
        _refuse(f"schema: the dict is not JSON ({exc})")
    if not isinstance(copied, dict):  # a Mapping that dumps as something else
        _refuse("schema: the dict is not a JSON object")
    return copied


# Keywords whose values are schemas, lists of schemas, or objects of schemas: the places a $ref may be.
_ONE_SCHEMA = frozenset({"items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas"})
_DEFS = ("$defs", "definitions")


def _inline_refs(schema: JsonSchema) -> JsonSchema:
    """``schema`` with each ``$ref`` to its own ``$defs`` replaced by the definition (our validator follows none);
    a definition that refers to itself, or a reference elsewhere, is refused."""
    defs: dict[str, Any] = {}
    for key in _DEFS:
        if isinstance(schema.get(key), Mapping):
            defs.update({f"#/{key}/{name}": sub for name, sub in schema[key].items()})
    inlined = _inline(schema, defs, (), "")
    return {k: v for k, v in inlined.items() if k not in _DEFS}


def _inline(node: Any, defs: Mapping[str, Any], stack: tuple[str, ...], where: str) -> Any:
    if not isinstance(node, Mapping):
        return node
    out: dict[str, Any] = {}
    if "$ref" in node:
        ref = _unescaped(node["$ref"])
        if ref not in defs:
            _refuse(f"schema: $ref {_shown(node['$ref'])} at {where or 'the top level'} points outside the schema's own $defs")
        if ref in stack:
            cycle = " -> ".join(r.rsplit("/", 1)[-1] for r in (*stack[stack.index(ref):], ref))
            _refuse(f"schema: {cycle} refers to itself, and a recursive schema cannot be checked here")
        out.update(_inline(defs[ref], defs, (*stack, ref), where))  # its neighbours (a description) win below
    for key, value in node.items():
        if key == "$ref" or (key in _DEFS and not where):
            continue
        if key in _ONE_SCHEMA:
            value = _inline(value, defs, stack, where)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            value = [_inline(sub, defs, stack, where) for sub in value]
        elif key in _SCHEMA_MAPS and isinstance(value, Mapping):
            value = {name: _inline(sub, defs, stack, f"{where}.{name}" if where else name) for name, sub in value.items()}
        elif key == "discriminator" and isinstance(value, Mapping):  # its mapping points into the $defs that go
            value = {k: v for k, v in value.items() if k != "mapping"}
        out[key] = value
    return out


def _unescaped(ref: Any) -> str:
    """A JSON pointer's escapes undone (``~1`` is ``/``, ``~0`` is ``~``) in the name after the last ``/``."""
    if not isinstance(ref, str):
        return repr(ref)
    head, _, name = ref.rpartition("/")
    return f"{head}/{name.replace('~1', '/').replace('~0', '~')}" if head else ref


def _integers_of(schema: JsonSchema) -> Callable[[Any], Any]:
    """The decode of a dict schema: the value itself, with the ints it asks for as ints (JSON Schema counts 2.0
    as an integer; a field declared ``int`` still gives 2)."""
    return lambda value: _integers(value, schema)


def _integers(value: Any, schema: Any) -> Any:
    if not isinstance(schema, Mapping):
        return value
    if schema.get("type") == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        return {k: _integers(v, properties.get(k, schema.get("additionalProperties"))) for k, v in value.items()}
    if isinstance(value, list):
        return [_integers(item, schema.get("items")) for item in value]
    return value


def _from_class(cls: type) -> OutputSchema:
    describe, validate = getattr(cls, "model_json_schema", None), getattr(cls, "model_validate", None)
    if callable(describe) and callable(validate):  # a pydantic model, known without importing pydantic
        return _from_pydantic(cls, describe, validate)
    if not (dataclasses.is_dataclass(cls) or typing.is_typeddict(cls)):
        _refuse(f"schema={cls.__qualname__}: the top level must be an object (a reply is one JSON object): give a "
                f"dataclass, a TypedDict or a pydantic model, or a field list such as 'name, age int'")
    builder = SchemaBuilder()
    codec = builder.codec(cls, cls.__name__)
    if builder.notes:  # what the model would be told nothing about could not be checked either
        note = builder.notes[0].removesuffix(", so the model is told nothing about its form")
        why = ("a recursive schema cannot be checked here" if note.endswith("refers to itself") else
               "give it a JSON form: str, int, float, bool, a list, an Enum, a Literal, a dataclass")
        _refuse(f"schema={cls.__qualname__}: {note} ({why})")
    return _checked(codec.schema, _wire_name(cls.__name__), spec=None, decode=codec.decode)


def _from_pydantic(cls: type, describe: Callable[[], Any], validate: Callable[[Any], Any]) -> OutputSchema:
    try:
        raw = describe()
    except Exception as exc:  # pydantic's own refusal (an arbitrary type it cannot describe): its first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _refuse(f"schema={cls.__qualname__}: pydantic cannot describe it ({first})")
    if not isinstance(raw, Mapping):
        _refuse(f"schema={cls.__qualname__}: its model_json_schema() is not a JSON Schema object")
    return _checked(_closed(_inline_refs(_json_copy(raw))), _wire_name(cls.__name__), spec=None, decode=validate)


def _closed(node: Any) -> Any:
    """Every object with properties allows no others unless it says so (pydantic writes nothing for its default
    extra="ignore"): the model is asked for the fields it has, and a strict provider takes the schema."""
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    closed = {k: v if k in ("enum", "const", "default", "examples") else _closed(v) for k, v in node.items()}
    if "properties" in node and "additionalProperties" not in node and isinstance(node["properties"], Mapping):
        closed["additionalProperties"] = False
    return closed


# --- messages ------------------------------------------------------------------------------------------


def _refuse(message: str) -> NoReturn:
    raise InvalidParameterError(" ".join(message.split("\n")), names=("schema",))  # always one line


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)
    return repr(clip(text, _LONGEST_SHOWN)) if isinstance(value, str) else clip(text, _LONGEST_SHOWN)


def _wire_name(text: Any) -> str:
    """A name OpenAI's json_schema takes (``^[a-zA-Z0-9_-]{1,64}$``): the class name or title, else "reply"."""
    name = _NOT_WIRE.sub("_", text).strip("_")[:64] if isinstance(text, str) else ""
    return name or REPLY


def _relabel(error: str) -> str:
    # schema_errors names the whole value "the arguments" (tools' words); here the whole value is the reply.
    return f"the {REPLY}{error.removeprefix('the arguments')}" if error.startswith("the arguments") else error


def _decode_errors(exc: Exception) -> list[str]:
    """A refusal by ``decode`` as error lines: pydantic's errors one by one (``loc: msg``), else the first line."""
    listed = getattr(exc, "errors", None)
    if callable(listed):
        try:
            return [f"{'.'.join(map(str, e.get('loc', ()))) or f'the {REPLY}'}: {e.get('msg', '')}" for e in listed()]
        except Exception:  # not pydantic's errors() after all
            pass
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return [f"the {REPLY}: {first}"]
