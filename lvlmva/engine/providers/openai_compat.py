"""OpenAI-compatible chat provider (OpenAI, vLLM, Ollama, llama.cpp ...) over `openai.AsyncOpenAI`
with the aiohttp transport. The SDK's own retries are off: the engine owns the one retry loop."""

from __future__ import annotations

import base64
import email.utils
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any, Literal

from lvlmva.engine.errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectionFailed,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from lvlmva.engine.types import ChatRequest, ChatResponse, ImagePart, Message, TextPart, Usage
from lvlmva.errors import ConfigError

__all__ = [
    "OpenAICompatibleProvider",
    "build_chat_kwargs",
    "map_openai_error",
    "parse_retry_after",
    "to_openai_messages",
]

log = logging.getLogger(__name__)

_PLACEHOLDER_KEY = "not-needed"  # local servers (vLLM, Ollama) accept any key


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


def _image_url(part: ImagePart) -> str:
    return f"data:{part.mime};base64,{base64.b64encode(part.data).decode('ascii')}"


def _content(message: Message) -> str | list[dict[str, Any]]:
    if all(isinstance(p, TextPart) for p in message.parts):
        return "\n\n".join(p.text for p in message.parts)  # type: ignore[union-attr]
    out: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            out.append({"type": "text", "text": part.text})
        else:
            out.append({"type": "image_url", "image_url": {"url": _image_url(part)}})
    return out


def to_openai_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """Our messages as OpenAI chat messages; images become base64 `data:` URLs."""
    return [{"role": m.role, "content": _content(m)} for m in messages]


def build_chat_kwargs(
    request: ChatRequest,
    *,
    structured_output: bool,
    max_tokens_param: str = "max_tokens",
) -> dict[str, Any]:
    """Keyword arguments for `chat.completions.create` / `litellm.acompletion`."""
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


def _scrub(text: str, secret: str | None, limit: int = 300) -> str:
    if secret and secret != _PLACEHOLDER_KEY:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refused(exc: BaseException) -> bool:
    """True when the chain holds a socket error that is not a timeout (the aiohttp transport
    reports a refused connection as a connect timeout)."""
    seen = 0
    cause = exc.__cause__ or exc.__context__
    while cause is not None and seen < 8:
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


def map_openai_error(
    exc: Exception, *, provider: str, model: str, secret: str | None
) -> ProviderError:
    """Translate an openai SDK exception (or a subclass, as litellm raises) into ours."""
    import openai

    where = f"{provider} ({model})"
    if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
        return ProviderTimeout(f"{where}: request timed out")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return ConnectionFailed(f"{where}: connection failed: {_scrub(str(cause), secret)}")
    status = getattr(exc, "status_code", None)
    if isinstance(exc, openai.APIStatusError) or isinstance(status, int):
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        extra = getattr(exc, "litellm_response_headers", None)  # litellm keeps them here
        retry_after = parse_retry_after(headers) if headers is not None else None
        if retry_after is None and extra is not None:
            retry_after = parse_retry_after(extra)
        message = f"{where}: HTTP {status}: {_scrub(getattr(exc, 'message', str(exc)), secret)}"
        if status == 429:
            return RateLimited(message, status=status, retry_after=retry_after)
        if status in (401, 403):
            return AuthenticationFailed(
                message + " (check the API key and base URL)", status=status
            )
        if status == 408:
            return ProviderTimeout(message, status=status)
        if isinstance(status, int) and status >= 500:
            return ServerError(message, status=status, retry_after=retry_after)
        return BadRequest(message, status=status)
    if isinstance(exc, openai.APIResponseValidationError):
        return ServerError(f"{where}: malformed response: {_scrub(str(exc), secret)}")
    return ProviderError(f"{where}: {type(exc).__name__}: {_scrub(str(exc), secret)}")


def _make_http_client(max_connections: int) -> Any:
    import openai

    limits_type = type(openai.DEFAULT_CONNECTION_LIMITS)
    limits = limits_type(max_connections=max_connections, max_keepalive_connections=max_connections)
    try:
        return openai.DefaultAioHttpClient(limits=limits)
    except RuntimeError:
        log.warning(
            "openai's aiohttp transport is not installed (pip install 'openai[aiohttp]'); "
            "using the httpx transport"
        )
        return openai.DefaultAsyncHttpxClient(limits=limits)


def response_text_and_usage(completion: Any, *, where: str) -> tuple[str, Usage, str | None]:
    """Text, usage and model of an OpenAI-shaped chat completion object."""
    choices = getattr(completion, "choices", None) or []
    if not choices:
        raise ServerError(f"{where}: response has no choices")
    message = choices[0].message
    refusal = getattr(message, "refusal", None)
    if refusal:
        raise BadRequest(f"{where}: the model refused: {_scrub(str(refusal), None)}")
    usage = getattr(completion, "usage", None)
    return (
        message.content or "",
        Usage(
            int(getattr(usage, "prompt_tokens", 0) or 0),
            int(getattr(usage, "completion_tokens", 0) or 0),
        ),
        getattr(completion, "model", None),
    )


class OpenAICompatibleProvider:
    """A `Provider` for any OpenAI-compatible `/v1/chat/completions` endpoint.

    `base_url=None` means OpenAI itself, which needs `api_key` or `OPENAI_API_KEY`; other servers
    get a placeholder key when none is given. `structured_output=False` for servers without
    `json_schema` response formats. `max_tokens_param="max_completion_tokens"` for OpenAI
    reasoning models, which reject `max_tokens`."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        name: str = "openai",
        structured_output: bool = True,
        max_connections: int = 256,
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
    ) -> None:
        import openai

        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if base_url is None:
                raise ConfigError(
                    "no OpenAI API key: set OPENAI_API_KEY, or pass --base-url for a local "
                    "OpenAI-compatible server"
                )
            key = _PLACEHOLDER_KEY
        if max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1 (got {max_connections})")
        self.name = name
        self.base_url = base_url
        self.supports_structured_output = structured_output
        self._max_tokens_param = max_tokens_param
        self._secret = key
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=key,
            max_retries=0,
            http_client=_make_http_client(max_connections),
        )

    def __repr__(self) -> str:
        return f"OpenAICompatibleProvider(name={self.name!r}, base_url={self.base_url!r})"

    async def complete(self, request: ChatRequest, *, timeout: float) -> ChatResponse:
        import openai

        kwargs = build_chat_kwargs(
            request,
            structured_output=self.supports_structured_output,
            max_tokens_param=self._max_tokens_param,
        )
        where = f"{self.name} ({request.model})"
        try:
            completion = await self._client.chat.completions.create(**kwargs, timeout=timeout)
        except openai.OpenAIError as exc:
            raise map_openai_error(
                exc, provider=self.name, model=request.model, secret=self._secret
            ) from None
        text, usage, model = response_text_and_usage(completion, where=where)
        return ChatResponse(text=text, usage=usage, model=model or request.model)

    async def aclose(self) -> None:
        await self._client.close()
