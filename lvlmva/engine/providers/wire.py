"""The OpenAI chat-completions wire format, shared by the providers: request bodies built from
our `ChatRequest`, HTTP statuses mapped to our errors, `Retry-After` parsing and secret
scrubbing. No SDK is imported here."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any

from lvlmva.engine.errors import (
    AuthenticationFailed,
    BadRequest,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from lvlmva.engine.types import ChatRequest, Message, TextPart

__all__ = [
    "PLACEHOLDER_KEY",
    "build_chat_kwargs",
    "error_for_status",
    "parse_retry_after",
    "scrub",
    "to_openai_messages",
]

PLACEHOLDER_KEY = "not-needed"  # local servers (vLLM, Ollama) accept any key


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            ms = float(value)
            if math.isfinite(ms):
                return max(0.0, ms / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_for_status(
    status: int | None, message: str, *, retry_after: float | None = None
) -> ProviderError:
    """The error for a non-2xx answer: 429 `RateLimited`, 401/403 `AuthenticationFailed`,
    408 `ProviderTimeout`, 5xx `ServerError` (429 and 5xx keep `retry_after`), any other
    (or no) status `BadRequest`. `message` is already scrubbed."""
    if status == 429:
        return RateLimited(message, status=status, retry_after=retry_after)
    if status in (401, 403):
        return AuthenticationFailed(message + " (check the API key and base URL)", status=status)
    if status == 408:
        return ProviderTimeout(message, status=status)
    if status is not None and status >= 500:
        return ServerError(message, status=status, retry_after=retry_after)
    return BadRequest(message, status=status)


def scrub(text: str, secret: str | None, limit: int = 300) -> str:
    """`text` on one line, without `secret`, cut to `limit` characters."""
    if secret and secret != PLACEHOLDER_KEY:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _content(message: Message) -> str | list[dict[str, Any]]:
    """A text-only message is one string (parts joined by a blank line), else a part list."""
    parts = message.parts
    if all(isinstance(p, TextPart) for p in parts):
        return "\n\n".join(p.text for p in parts)  # type: ignore[union-attr]
    return [
        {"type": "text", "text": p.text}
        if isinstance(p, TextPart)
        else {"type": "image_url", "image_url": {"url": p.data_url}}
        for p in parts
    ]


def to_openai_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """Our messages as OpenAI chat messages; images become base64 `data:` URLs."""
    return [{"role": m.role, "content": _content(m)} for m in messages]


def build_chat_kwargs(
    request: ChatRequest,
    *,
    structured_output: bool,
    max_tokens_param: str = "max_tokens",
) -> dict[str, Any]:
    """The chat-completions request body (also the keyword arguments of
    `litellm.acompletion`). The response schema goes out as a strict `json_schema` response
    format only when `structured_output` is on."""
    kwargs: dict[str, Any] = {
        "model": request.model,
        "messages": to_openai_messages(request.messages),
        "temperature": request.temperature,
        max_tokens_param: request.max_tokens,
    }
    if request.seed is not None:
        kwargs["seed"] = request.seed
    if request.response_schema is not None and structured_output:
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": request.schema_name,
                "schema": dict(request.response_schema),
                "strict": True,
            },
        }
    return kwargs
