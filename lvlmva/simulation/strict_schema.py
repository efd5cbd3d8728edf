"""`response_format` checks, including the ones Structured Outputs' strict mode makes.

Sources:

- [spec] openai/openai-openapi@f85dbe2: `ResponseFormatText` / `ResponseFormatJsonObject` /
  `ResponseFormatJsonSchema` (a discriminated `type`; `json_schema.name` required, "a-z, A-Z,
  0-9, or contain underscores and dashes, with a maximum length of 64"; `strict` optional,
  default false).
- [strict] the Structured Outputs guide ("Supported schemas"): with `strict: true` the root must
  be an object and not `anyOf`; every object needs `additionalProperties: false` and every
  property listed in `required`; composition keywords (allOf, not, if/then/else,
  dependent*, patternProperties, unevaluated*, propertyNames, min/maxProperties, contains,
  uniqueItems) are not supported; at most 5,000 object properties, 10 levels of nesting, 1,000
  enum values and 120,000 characters of property names, enum and const values. The error text
  follows the API's, as quoted in moeru-ai/xsai#202 and dottxt-ai/outlines#844 ("Invalid
  schema for response_format 'x': In context=(...), 'additionalProperties' is required to be
  supplied and to be false."; param `response_format`; code `invalid_json_schema` in current
  answers, mavam/pi-web-providers#14).
- [json-mode] `json_object` needs the word "json" somewhere in the messages (the API's error
  "'messages' must contain the word 'json' in some form, to use 'response_format' of type
  'json_object'.").

Not checked: string keywords the guide has changed its mind about (minLength, maxLength), and
whether `$ref` targets exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lvlmva.simulation.openai_errors import APIError, invalid_request, invalid_type, invalid_value

__all__ = ["ResponseFormat", "check_response_format", "strict_schema_problem"]

_NAME = re.compile(r"\A[a-zA-Z0-9_-]+\Z")
_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}
_UNSUPPORTED = (
    "allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
    "patternProperties", "unevaluatedProperties", "propertyNames", "minProperties",
    "maxProperties", "unevaluatedItems", "contains", "minContains", "maxContains", "uniqueItems",
)  # fmt: skip
MAX_PROPERTIES, MAX_DEPTH, MAX_ENUM_VALUES, MAX_CHARS = 5000, 10, 1000, 120_000


@dataclass(frozen=True)
class ResponseFormat:
    """A checked `response_format`: `text`, `json_object` or `json_schema` (with its schema)."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema: Mapping[str, Any] | None = None
    strict: bool = False


def _schema_error(name: str, message: str) -> APIError:
    return invalid_request(
        f"Invalid schema for response_format '{name}': {message}",
        "response_format",
        "invalid_json_schema",
    )


def _subschemas(node: Mapping[str, Any], path: tuple) -> Iterator[tuple[Mapping, tuple, bool]]:
    """(child, its path, whether it adds a nesting level) for every subschema of `node`."""
    for key, value in (node.get("properties") or {}).items():
        if isinstance(value, Mapping):
            yield value, (*path, "properties", key), True
    items = node.get("items")
    if isinstance(items, Mapping):
        yield items, (*path, "items"), True
    for i, option in enumerate(node.get("anyOf") or ()):
        if isinstance(option, Mapping):
            yield option, (*path, "anyOf", i), False
    for defs in ("$defs", "definitions"):
        for key, value in (node.get(defs) or {}).items():
            if isinstance(value, Mapping):
                yield value, (*path, defs, key), False


def _object_problem(node: Mapping[str, Any], context: str) -> str | None:
    if node.get("additionalProperties") is not False:
        return (
            f"In context={context}, 'additionalProperties' is required to be supplied and to "
            "be false."
        )
    properties = node.get("properties") or {}
    required = node.get("required")
    missing = [k for k in properties if not isinstance(required, list) or k not in required]
    if missing:
        return (
            f"In context={context}, 'required' is required to be supplied and to be an array "
            f"including every key in properties. Missing '{missing[0]}'."
        )
    return None


def _node_problem(node: Mapping[str, Any], path: tuple) -> str | None:
    context = repr(path)
    for keyword in _UNSUPPORTED:
        if keyword in node:
            return f"In context={context}, '{keyword}' is not permitted."
    kinds = node.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds] if kinds is not None else []
    for kind in kinds:
        if kind not in _TYPES:
            return f"In context={context}, type {kind!r} is not a supported type."
    if "object" in kinds or "properties" in node:
        return _object_problem(node, context)
    return None


def strict_schema_problem(schema: Mapping[str, Any]) -> str | None:
    """The first way `schema` breaks strict mode, worded as the API words it; None if none."""
    if "anyOf" in schema or schema.get("type") != "object":
        return "In context=(), the root schema must be an object of type 'object', not anyOf."
    counts = {"properties": 0, "enum": 0, "chars": 0}
    stack: list[tuple[Mapping, tuple, int]] = [(schema, (), 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"In context={path!r}, the schema nests deeper than {MAX_DEPTH} levels."
        problem = _node_problem(node, path)
        if problem:
            return problem
        names = list(node.get("properties") or {})
        counts["properties"] += len(names)
        values = list(node.get("enum") or []) + ([node["const"]] if "const" in node else [])
        counts["enum"] += len(node.get("enum") or [])
        counts["chars"] += sum(len(n) for n in names) + sum(len(str(v)) for v in values)
        for child, child_path, deeper in _subschemas(node, path):
            stack.append((child, child_path, depth + 1 if deeper else depth))
    if counts["properties"] > MAX_PROPERTIES:
        return f"The schema has {counts['properties']} object properties; at most {MAX_PROPERTIES}."
    if counts["enum"] > MAX_ENUM_VALUES:
        return f"The schema has {counts['enum']} enum values; at most {MAX_ENUM_VALUES}."
    if counts["chars"] > MAX_CHARS:
        return (
            f"Property names and enum values total {counts['chars']} characters; at most "
            f"{MAX_CHARS}."
        )
    return None


def _json_schema(spec: Any) -> ResponseFormat:
    where = "response_format.json_schema"
    if not isinstance(spec, Mapping):
        raise invalid_type(where, "an object", spec)
    name = spec.get("name")
    if name is None:
        raise invalid_request(f"Missing required parameter: '{where}.name'.", f"{where}.name",
                              "missing_required_parameter")  # fmt: skip
    if not isinstance(name, str):
        raise invalid_type(f"{where}.name", "a string", name)
    if len(name) > 64:
        raise invalid_value(
            f"{where}.name",
            f"Invalid '{where}.name': string too long. Expected a string with maximum length 64, "
            f"but got a string with length {len(name)} instead.",
            "string_above_max_length",
        )
    if not _NAME.match(name):
        raise invalid_value(
            f"{where}.name",
            f"Invalid '{where}.name': string does not match pattern. Expected a string that "
            "matches the pattern '^[a-zA-Z0-9_-]+$'.",
        )
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise invalid_type(f"{where}.strict", "a boolean", strict)
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, Mapping):
        raise invalid_type(f"{where}.schema", "an object", schema)
    if strict:
        if schema is None:
            raise _schema_error(name, "a schema is required when strict is true.")
        problem = strict_schema_problem(schema)
        if problem:
            raise _schema_error(name, problem)
    return ResponseFormat("json_schema", name, schema, bool(strict))


def check_response_format(value: Any, message_text: str) -> ResponseFormat:
    """The checked `response_format` (APIError 400 if invalid). `message_text` is all text of
    the messages, for the json_object rule."""
    if value is None:
        return ResponseFormat()
    if not isinstance(value, Mapping):
        raise invalid_type("response_format", "an object", value)
    kind = value.get("type")
    if kind == "text":
        return ResponseFormat()
    if kind == "json_object":
        if "json" not in message_text.lower():
            raise invalid_request(
                "'messages' must contain the word 'json' in some form, to use 'response_format' "
                "of type 'json_object'.",
                "messages",
            )
        return ResponseFormat("json_object")
    if kind == "json_schema":
        return _json_schema(value.get("json_schema"))
    raise invalid_value(
        "response_format.type",
        f"Invalid value: {kind!r}. Supported values are: 'text', 'json_object', and 'json_schema'.",
    )
