"""The OpenAI chat-completions wire format, shared by the providers (and by batch files): request
bodies built from our `ChatRequest` under each model family's rules (`model_params`), HTTP
statuses and error codes mapped to our errors, `Retry-After` and `x-ratelimit-*` parsing, and
secret scrubbing. No SDK is imported here."""

from __future__ import annotations

import codecs
import email.utils
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from lvlmva.engine.errors import (
    AuthenticationFailed,
    BadRequest,
    NotFound,
    ProviderError,
    ProviderTimeout,
    QuotaExceeded,
    RateLimited,
    ServerError,
)
from lvlmva.engine.model_params import ModelRules, image_detail, rules_for
from lvlmva.engine.types import ChatRequest, Message, RateLimitInfo, TextPart, TokenLogprob

__all__ = [
    "PLACEHOLDER_KEY",
    "build_chat_kwargs",
    "error_for_status",
    "parse_error_body",
    "parse_logprobs",
    "parse_rate_limits",
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


def parse_error_body(body: bytes) -> tuple[str, str | None]:
    """The server's message and code: `error.message` / `error.code` of an OpenAI error body,
    else the body as text."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text or "(empty body)", None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        code = error.get("code") or error.get("type")
        return str(error["message"]), str(code) if isinstance(code, str) else None
    if isinstance(error, str):
        return error, None
    return text, None


def error_for_status(
    status: int | None,
    message: str,
    *,
    retry_after: float | None = None,
    code: str | None = None,
) -> ProviderError:
    """The error for a non-2xx answer: 429 `QuotaExceeded` when its code is
    `insufficient_quota` (no credit: retrying cannot help), else `RateLimited`; 401/403
    `AuthenticationFailed`; 404 `NotFound` (model or URL); 408 `ProviderTimeout`; 5xx
    `ServerError` (429 and 5xx keep `retry_after`); any other (or no) status `BadRequest`.
    `message` is already scrubbed."""
    if status == 429 and code == "insufficient_quota":
        return QuotaExceeded(
            message + " (add credit or raise the usage limit, then rerun)", status=status, code=code
        )
    if status == 429:
        return RateLimited(message, status=status, retry_after=retry_after, code=code)
    if status in (401, 403):
        return AuthenticationFailed(
            message + " (check the API key and base URL)", status=status, code=code
        )
    if status == 404:
        return NotFound(message + " (check --critic-model / --judge-model and --base-url)",
                        status=status, code=code)  # fmt: skip
    if status == 408:
        return ProviderTimeout(message, status=status, code=code)
    if status is not None and status >= 500:
        return ServerError(message, status=status, retry_after=retry_after, code=code)
    return BadRequest(message, status=status, code=code)


_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """Seconds of a Go duration as the `x-ratelimit-reset-*` headers write it ("20ms", "1s",
    "6m0s", "1h2m3.5s"), or a bare number of seconds; None when unreadable."""
    if not text:
        return None
    text = text.strip()
    try:
        value = float(text)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    parts = list(_DURATION.finditer(text))
    if not parts or "".join(p.group(0) for p in parts) != text:
        return None
    return sum(float(p.group("value")) * _UNIT_S[p.group("unit")] for p in parts)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_rate_limits(headers: Mapping[str, str] | None) -> RateLimitInfo | None:
    """The `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers (rate-limits guide),
    or None when the server sent none."""
    if not headers:
        return None
    names = ("x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens")
    if all(headers.get(name) is None for name in names):
        return None
    return RateLimitInfo(
        limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
        remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
        reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
        remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
        reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )


def scrub(text: str, secret: str | None, limit: int = 300) -> str:
    """`text` on one line, without `secret`, cut to `limit` characters."""
    if secret and secret != PLACEHOLDER_KEY:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _content(message: Message, detail: str | None, rules: ModelRules) -> str | list[dict[str, Any]]:
    """A text-only message is one string (parts joined by a blank line), else a part list;
    each image carries the `detail` its policy gives it (none when the policy gives none)."""
    parts = message.parts
    if all(isinstance(p, TextPart) for p in parts):
        return "\n\n".join(p.text for p in parts)  # type: ignore[union-attr]
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, TextPart):
            out.append({"type": "text", "text": p.text})
            continue
        image: dict[str, Any] = {"url": p.data_url}
        chosen = image_detail(p, detail, rules)
        if chosen is not None:
            image["detail"] = chosen
        out.append({"type": "image_url", "image_url": image})
    return out


def to_openai_messages(
    messages: tuple[Message, ...], detail: str | None = None, model: str = ""
) -> list[dict[str, Any]]:
    """Our messages as OpenAI chat messages; images become base64 `data:` URLs with the
    `detail` the policy gives them for `model`."""
    rules = rules_for(model)
    return [{"role": m.role, "content": _content(m, detail, rules)} for m in messages]


def build_chat_kwargs(
    request: ChatRequest,
    *,
    structured_output: bool,
    max_tokens_param: str | None = None,
) -> dict[str, Any]:
    """The chat-completions request body (also the keyword arguments of
    `litellm.acompletion`), a pure function of `request` and the two provider settings: the
    output budget goes out under the family's name (`max_completion_tokens` for OpenAI's
    models, `max_tokens` for a server of one's own; `max_tokens_param` overrides it), the
    temperature only when the request has one, `reasoning_effort` when set, `logprobs` with
    `top_logprobs` when the request asks for them, and the response
    schema as a strict `json_schema` response format only when `structured_output` is on."""
    rules = rules_for(request.model)
    kwargs: dict[str, Any] = {
        "model": request.model,
        "messages": [
            {"role": m.role, "content": _content(m, request.image_detail, rules)}
            for m in request.messages
        ],
    }
    if request.temperature is not None:
        kwargs["temperature"] = request.temperature
    kwargs[max_tokens_param or rules.token_param] = request.max_tokens
    if request.seed is not None:
        kwargs["seed"] = request.seed
    if request.reasoning_effort is not None:
        kwargs["reasoning_effort"] = request.reasoning_effort
    if request.top_logprobs is not None:
        kwargs["logprobs"] = True
        kwargs["top_logprobs"] = request.top_logprobs
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


def parse_logprobs(raw: Any) -> tuple[TokenLogprob, ...] | None:
    """The content tokens of a choice's `logprobs` object (`content[{token, logprob, bytes,
    top_logprobs[{token, logprob, bytes}]}]`), or None when there are none or they are
    malformed: log-probabilities only refine verdicts, so a server's odd shape never fails an
    answer. Each token's text is what its `bytes` add to the answer, decoded across tokens: a
    character split over several tokens (servers write such pieces as escapes like
    "\\xe2\\x80", as U+FFFD or as "") belongs to the token that completes it, so the tokens
    still spell the answer and character offsets hold after it. Without `bytes`, the `token`
    string is taken as it is."""
    content = raw.get("content") if isinstance(raw, dict) else None
    if not isinstance(content, list) or not content:
        return None
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    tokens = []
    for item in content:
        if not isinstance(item, dict):
            return None
        token, logprob = item.get("token"), item.get("logprob")
        if not isinstance(token, str) or not isinstance(logprob, int | float):
            return None
        data = _token_bytes(item)
        if data is None:
            decoder.reset()
        text = token if data is None else decoder.decode(data)
        top = item.get("top_logprobs") or []
        alternatives = tuple(
            (_alternative_text(alt), float(alt["logprob"]))
            for alt in top
            if isinstance(alt, dict) and isinstance(alt.get("token"), str)
            and isinstance(alt.get("logprob"), int | float)
        )  # fmt: skip
        tokens.append(TokenLogprob(text, float(logprob), alternatives))
    return tuple(tokens)


def _token_bytes(item: Mapping[str, Any]) -> bytes | None:
    raw = item.get("bytes")
    if not isinstance(raw, list) or not all(type(b) is int and 0 <= b < 256 for b in raw):
        return None
    return bytes(raw)


def _alternative_text(alt: Mapping[str, Any]) -> str:
    """An alternative's text: its `bytes` decoded where they are whole UTF-8, else `token`."""
    data = _token_bytes(alt)
    try:
        return alt["token"] if data is None else data.decode("utf-8")
    except UnicodeDecodeError:
        return alt["token"]
