"""Error bodies of the OpenAI API, as the stand-in returns them.

Shape (OpenAPI spec `ErrorResponse` / `Error`, openai/openai-openapi@f85dbe2): every error is
`{"error": {"message", "type", "param", "code"}}`, all four keys present, `param` and `code`
null when they do not apply. The SDK (`openai._client._make_status_error`) maps the status to its
exception class (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 429
RateLimitError, >= 500 InternalServerError) and reads `code`, `param` and `type` from the body.

The messages below follow what the API answers, as quoted in public bug reports (each function
names its source); the wording is ours where no exact text is on record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "APIError",
    "format_value",
    "insufficient_quota",
    "invalid_api_key",
    "invalid_request",
    "invalid_type",
    "invalid_value",
    "missing_api_key",
    "missing_required",
    "model_not_found",
    "not_found",
    "unknown_parameters",
    "unsupported_parameter",
    "unsupported_value",
]


@dataclass(eq=False)
class APIError(Exception):
    """An error answer: HTTP status, the four body fields, and extra response headers (not
    frozen: Python sets `__traceback__` and `__context__` on a raised exception)."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.type}: {self.message}"

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def format_value(value: Any) -> str:
    """A JSON value as the API echoes it in messages (`0`, `0.0`, `'none'`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    if value is None:
        return "null"
    return repr(value)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def unknown_parameters(names: Iterable[str]) -> APIError:
    """`Unrecognized request argument supplied: x` - param null, code null (quoted in
    davidmigloz/langchain_dart#712 and coroot/coroot#698 for `reasoning_effort` on gpt-4o-mini,
    namankhurpia/Easy-open-ai#38 for the plural form)."""
    names = sorted(names)
    noun = "argument" if len(names) == 1 else "arguments"
    return invalid_request(f"Unrecognized request {noun} supplied: {', '.join(names)}")


def unsupported_parameter(param: str, hint: str = "") -> APIError:
    """`Unsupported parameter: 'max_tokens' is not supported with this model. Use
    'max_completion_tokens' instead.` - param named, code `unsupported_parameter` (quoted in
    griptape-ai/ComfyUI-Griptape#312 for gpt-5, teilomillet/gollm#33 for o1 / o3-mini)."""
    text = f"Unsupported parameter: '{param}' is not supported with this model."
    return invalid_request(f"{text} {hint}".strip(), param, "unsupported_parameter")


def unsupported_value(param: str, value: Any, detail: str) -> APIError:
    """`Unsupported value: 'temperature' does not support 0 with this model. Only the default (1)
    value is supported.` - param named, code `unsupported_value` (quoted in
    gabrii/Cursor-Azure-GPT-5#33 for gpt-5, OpenHands/OpenHands#4131 for o1-mini)."""
    text = f"Unsupported value: '{param}' does not support {format_value(value)} with this model."
    return invalid_request(f"{text} {detail}".strip(), param, "unsupported_value")


def invalid_type(param: str, expected: str, value: Any) -> APIError:
    got = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string"}.get(
        type(value), "an array" if isinstance(value, list) else "an object"
    )
    if value is None:
        got = "null"
    return invalid_request(
        f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
        param,
        "invalid_type",
    )


def invalid_value(param: str, message: str, code: str = "invalid_value") -> APIError:
    return invalid_request(message, param, code)


def missing_required(param: str) -> APIError:
    return invalid_request(
        f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    )


def missing_api_key() -> APIError:
    """401 for a request without `Authorization: Bearer ...` (code null)."""
    return APIError(
        401,
        "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
        "(Authorization: Bearer YOUR_KEY).",
    )


def _masked(key: str) -> str:
    """The key as the API shows it back: a few leading and trailing characters only."""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * 10}{key[-4:]}"


def invalid_api_key(key: str) -> APIError:
    """401, code `invalid_api_key`, the key masked in the message (never echoed whole)."""
    return APIError(
        401,
        f"Incorrect API key provided: {_masked(key)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        None,
        "invalid_api_key",
    )


def model_not_found(model: str) -> APIError:
    """404, code `model_not_found`, param null (quoted in rd-1-2022/ai-openai-helloworld#9 and
    langgenius/dify#13036)."""
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        None,
        "model_not_found",
    )


def insufficient_quota() -> APIError:
    """429 with type and code `insufficient_quota`: a billing state no retry fixes (quoted in
    chatanywhere/GPT_API_free#229)."""
    return APIError(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "insufficient_quota",
        None,
        "insufficient_quota",
    )


def not_found(kind: str, object_id: str, param: str = "id") -> APIError:
    """404 for a file or batch id that does not exist (or was deleted)."""
    return APIError(404, f"No such {kind} object: {object_id}", "invalid_request_error", param)
