"""The request rules of `POST /v1/chat/completions`, as data plus the functions applying them.

Sources:

- [spec] openai/openai-openapi@f85dbe2, `CreateChatCompletionRequest` with
  `CreateModelResponseProperties` and `ModelResponseProperties`: the 37 top-level parameters
  (`KNOWN_PARAMETERS`), their types, ranges (temperature 0..2, top_p 0..1, penalties -2..2,
  n 1..128, top_logprobs 0..20) and enums (reasoning_effort, verbosity, service_tier,
  prompt_cache_retention); `model` and `messages` required; `stop` "not supported with latest
  reasoning models o3 and o4-mini", at most 4 sequences; `metadata` 16 pairs, keys <= 64 and
  values <= 512 characters; `top_logprobs` needs `logprobs: true`; `stream_options` only with
  `stream: true`.
- [unknown] unknown top-level parameters: "Unrecognized request argument supplied: x", param
  null (see `openai_errors.unknown_parameters`); a non-reasoning model answers
  `reasoning_effort` the same way.
- [reasoning] / [latest-model] / [effort]: the per-family rules, see `openai_models`.
- [ranges] "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3
  instead." with codes `decimal_above_max_value`, `integer_below_min_value` ...; "max_tokens is
  too large: N. This model supports at most M completion tokens, whereas you provided N."

The stand-in does not serve streaming, audio output, predicted outputs, web search, moderation
or tools; a request asking for them gets a 400 that says so (code `not_served_by_stand_in`),
so a test never mistakes "unsupported here" for "accepted".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lvlmva.engine.types import ChatRequest
from lvlmva.simulation.openai_content import ParsedMessages, parse_messages
from lvlmva.simulation.openai_errors import (
    format_value,
    invalid_request,
    invalid_type,
    invalid_value,
    missing_required,
    unknown_parameters,
    unsupported_parameter,
    unsupported_value,
)
from lvlmva.simulation.openai_models import ModelFamily
from lvlmva.simulation.strict_schema import ResponseFormat, check_response_format

__all__ = ["KNOWN_PARAMETERS", "PARAMETERS", "ChatParams", "Param", "validate_chat"]

Kind = Literal["number", "integer", "boolean", "string", "object", "array", "any"]


@dataclass(frozen=True)
class Param:
    """A top-level parameter's type, range and enum as the spec gives them."""

    kind: Kind
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None


_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
PARAMETERS: Mapping[str, Param] = {
    "model": Param("string"),
    "messages": Param("array"),
    "temperature": Param("number", 0, 2),
    "top_p": Param("number", 0, 1),
    "frequency_penalty": Param("number", -2, 2),
    "presence_penalty": Param("number", -2, 2),
    "n": Param("integer", 1, 128),
    "max_tokens": Param("integer", 1),
    "max_completion_tokens": Param("integer", 1),
    "seed": Param("integer"),
    "logprobs": Param("boolean"),
    "top_logprobs": Param("integer", 0, 20),
    "stream": Param("boolean"),
    "stream_options": Param("object"),
    "store": Param("boolean"),
    "stop": Param("any"),
    "logit_bias": Param("object"),
    "metadata": Param("object"),
    "reasoning_effort": Param("string", enum=_EFFORTS),
    "verbosity": Param("string", enum=("low", "medium", "high")),
    "service_tier": Param("string", enum=("auto", "default", "flex", "scale", "priority", "fast")),
    "modalities": Param("array"),
    "audio": Param("object"),
    "prediction": Param("object"),
    "tools": Param("array"),
    "tool_choice": Param("any"),
    "parallel_tool_calls": Param("boolean"),
    "function_call": Param("any"),
    "functions": Param("array"),
    "user": Param("string"),
    "safety_identifier": Param("string"),
    "prompt_cache_key": Param("string"),
    "prompt_cache_retention": Param("string", enum=("in_memory", "24h")),
    "prompt_cache_options": Param("object"),
    "web_search_options": Param("object"),
    "moderation": Param("object"),
    "response_format": Param("object"),
}
KNOWN_PARAMETERS = frozenset(PARAMETERS)
_NOT_SERVED = ("audio", "prediction", "web_search_options", "moderation", "tools", "functions")
_EXPECTED = {
    "number": "a decimal",
    "integer": "an integer",
    "boolean": "a boolean",
    "string": "a string",
    "object": "an object",
    "array": "an array",
}


@dataclass(frozen=True)
class ChatParams:
    """A checked chat-completions request: what the stand-in needs to answer and account it."""

    model: str
    answer_model: str
    family: ModelFamily
    parsed: ParsedMessages
    response_format: ResponseFormat
    max_output: int | None
    effort: str | None
    n: int
    request: ChatRequest


def _type_ok(kind: Kind, value: Any) -> bool:
    if kind == "any":
        return True
    if kind in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return kind == "number" or isinstance(value, int)
    python = {"boolean": bool, "string": str, "object": dict, "array": list}[kind]
    return isinstance(value, python)


def _check_value(name: str, spec: Param, value: Any) -> None:
    if not _type_ok(spec.kind, value):
        raise invalid_type(name, _EXPECTED.get(spec.kind, "a value"), value)
    noun = "integer" if spec.kind == "integer" else "decimal"
    if spec.minimum is not None and value < spec.minimum:
        raise invalid_value(
            name,
            f"Invalid '{name}': {noun} below minimum value. Expected a value >= "
            f"{spec.minimum:g}, but got {format_value(value)} instead.",
            f"{noun}_below_min_value",
        )
    if spec.maximum is not None and value > spec.maximum:
        raise invalid_value(
            name,
            f"Invalid '{name}': {noun} above maximum value. Expected a value <= "
            f"{spec.maximum:g}, but got {format_value(value)} instead.",
            f"{noun}_above_max_value",
        )
    if spec.enum is not None and value not in spec.enum:
        supported = ", ".join(f"'{v}'" for v in spec.enum)
        raise invalid_value(
            name, f"Invalid value: {format_value(value)}. Supported values are: {supported}."
        )


def _check_shapes(body: Mapping[str, Any]) -> None:
    unknown = set(body) - KNOWN_PARAMETERS
    if unknown:
        raise unknown_parameters(unknown)
    for name in ("model", "messages"):
        if body.get(name) is None:
            raise missing_required(name)
    for name, value in body.items():
        if value is not None:
            _check_value(name, PARAMETERS[name], value)
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (
        isinstance(stops, list) and 1 <= len(stops) <= 4 and all(isinstance(s, str) for s in stops)
    ):
        raise invalid_type("stop", "a string or an array of 1 to 4 strings", stop)
    metadata = body.get("metadata") or {}
    if len(metadata) > 16 or any(
        len(k) > 64 or not isinstance(v, str) or len(v) > 512 for k, v in metadata.items()
    ):
        raise invalid_value(
            "metadata",
            "Invalid 'metadata': at most 16 pairs, keys up to 64 and string values up to 512 "
            "characters.",
        )
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        raise invalid_value("top_logprobs", "'top_logprobs' requires 'logprobs' to be set to true.")
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise invalid_value(
            "stream_options",
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        )


def _not_served(body: Mapping[str, Any]) -> None:
    """Features the stand-in does not implement: a 400 that says so."""
    asked = [k for k in _NOT_SERVED if body.get(k)]
    if body.get("stream"):
        asked.insert(0, "stream")
    if "audio" in (body.get("modalities") or []):
        asked.append("modalities")
    if asked:
        raise invalid_request(
            f"The OpenAI stand-in does not serve '{asked[0]}' (it answers non-streamed text "
            "completions only).",
            asked[0],
            "not_served_by_stand_in",
        )


def _effort(body: Mapping[str, Any], family: ModelFamily) -> str | None:
    value = body.get("reasoning_effort")
    if value is None:
        return family.default_effort
    if not family.efforts:
        raise unknown_parameters(["reasoning_effort"])
    if value not in family.efforts:
        supported = ", ".join(f"'{e}'" for e in family.efforts)
        raise unsupported_value("reasoning_effort", value, f"Supported values are: {supported}.")
    return value


def _family_rules(body: Mapping[str, Any], family: ModelFamily, effort: str | None) -> None:
    if body.get("verbosity") is not None and not family.verbosity:
        raise unsupported_parameter("verbosity")
    if family.reasoning and body.get("max_tokens") is not None:
        raise unsupported_parameter("max_tokens", "Use 'max_completion_tokens' instead.")
    if family.reasoning and body.get("stop") is not None:
        raise unsupported_parameter("stop")
    restricted = family.sampling == "default_only" or (
        family.sampling == "only_without_reasoning" and effort != "none"
    )
    if not restricted:
        return
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and value != 1:
            raise unsupported_value(name, value, "Only the default (1) value is supported.")
    for name in ("presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and value != 0:
            raise unsupported_parameter(name)
    if body.get("logprobs"):
        raise unsupported_parameter("logprobs")
    if body.get("top_logprobs") is not None:
        raise unsupported_parameter("top_logprobs")


def _max_output(body: Mapping[str, Any], family: ModelFamily) -> int | None:
    name = "max_tokens"
    if body.get("max_completion_tokens") is not None:
        name = "max_completion_tokens"
    value = body.get(name)
    if value is not None and value > family.max_output_tokens:
        raise invalid_value(
            name,
            f"{name} is too large: {value}. This model supports at most "
            f"{family.max_output_tokens} completion tokens, whereas you provided {value}.",
        )
    return value


def validate_chat(body: Any, family: ModelFamily, answer_model: str) -> ChatParams:
    """Check a chat-completions body for a model of `family`; APIError (400) if it breaks a
    rule. Checks run in a fixed order, so a body breaking several rules gets one answer."""
    if not isinstance(body, Mapping):
        raise invalid_request("The request body must be a JSON object.")
    _check_shapes(body)
    _not_served(body)
    effort = _effort(body, family)
    _family_rules(body, family, effort)
    max_output = _max_output(body, family)
    parsed = parse_messages(body["messages"], family)
    fmt = check_response_format(body.get("response_format"), parsed.text)
    schema = fmt.schema if fmt.type == "json_schema" else None
    if fmt.type == "json_object" or (fmt.type == "json_schema" and schema is None):
        schema = {"type": "object"}
    temperature = body.get("temperature")
    request = ChatRequest(
        model=body["model"],
        messages=parsed.messages,
        temperature=1.0 if temperature is None else float(temperature),
        max_tokens=max_output or family.max_output_tokens,
        seed=body.get("seed"),
        response_schema=schema,
        schema_name=fmt.name or "response",
        top_logprobs=(body.get("top_logprobs") or 0) if body.get("logprobs") else None,
    )
    return ChatParams(
        model=body["model"],
        answer_model=answer_model,
        family=family,
        parsed=parsed,
        response_format=fmt,
        max_output=max_output,
        effort=effort,
        n=body.get("n") or 1,
        request=request,
    )
