"""Any provider litellm supports, through `litellm.acompletion` (optional extra `[litellm]`).
litellm's own retries are off (`num_retries=0`, `max_retries=0`): the engine owns the one loop.
litellm raises exceptions that subclass the openai SDK's; `map_openai_error` translates them."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from lvlmva.engine.errors import (
    BadRequest,
    ConnectionFailed,
    ProviderError,
    ProviderTimeout,
    ServerError,
)
from lvlmva.engine.providers.wire import (
    build_chat_kwargs,
    error_for_status,
    parse_logprobs,
    parse_retry_after,
    scrub,
)
from lvlmva.engine.types import ChatRequest, ChatResponse, Usage
from lvlmva.errors import ConfigError

__all__ = ["LiteLLMProvider", "import_litellm", "map_openai_error", "response_text_and_usage"]


def import_litellm() -> Any:
    """Import litellm lazily, without it fetching its model price map over the network."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError:
        raise ConfigError(
            "litellm is not installed: pip install 'lvlm-va[litellm]' "
            "(or use the built-in OpenAI-compatible provider)"
        ) from None
    return litellm


def _refused(exc: BaseException) -> bool:
    """True when the chain holds a socket error that is not a timeout (some transports
    report a refused connection as a connect timeout)."""
    seen = 0
    cause = exc.__cause__ or exc.__context__
    while cause is not None and seen < 8:
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


def _status_error(exc: Exception, status: int | None, where: str, secret: str | None):
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    extra = getattr(exc, "litellm_response_headers", None)  # litellm keeps them here
    retry_after = parse_retry_after(headers) if headers is not None else None
    if retry_after is None and extra is not None:
        retry_after = parse_retry_after(extra)
    code = getattr(exc, "code", None)
    message = f"{where}: HTTP {status}: {scrub(getattr(exc, 'message', str(exc)), secret)}"
    return error_for_status(
        status if isinstance(status, int) else None,
        message,
        retry_after=retry_after,
        code=code if isinstance(code, str) else None,
    )


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
        return ConnectionFailed(f"{where}: connection failed: {scrub(str(cause), secret)}")
    status = getattr(exc, "status_code", None)
    if isinstance(exc, openai.APIStatusError) or isinstance(status, int):
        return _status_error(exc, status, where, secret)
    if isinstance(exc, openai.APIResponseValidationError):
        return ServerError(f"{where}: malformed response: {scrub(str(exc), secret)}")
    return ProviderError(f"{where}: {type(exc).__name__}: {scrub(str(exc), secret)}")


def _details(usage: Any, name: str, field: str) -> int:
    details = getattr(usage, name, None)
    return int(getattr(details, field, 0) or 0) if details is not None else 0


def response_text_and_usage(completion: Any, *, where: str) -> ChatResponse:
    """The answer in an OpenAI-shaped chat completion object: text (`""` for null content),
    usage with its details, model (`""` when absent) and finish reason."""
    choices = getattr(completion, "choices", None) or []
    if not choices:
        raise ServerError(f"{where}: response has no choices")
    message = choices[0].message
    refusal = getattr(message, "refusal", None)
    if refusal:
        raise BadRequest(f"{where}: the model refused: {scrub(str(refusal), None)}")
    usage = getattr(completion, "usage", None)
    finish = getattr(choices[0], "finish_reason", None)
    model = getattr(completion, "model", None)
    return ChatResponse(
        message.content or "",
        Usage(
            int(getattr(usage, "prompt_tokens", 0) or 0),
            int(getattr(usage, "completion_tokens", 0) or 0),
            _details(usage, "prompt_tokens_details", "cached_tokens"),
            _details(usage, "completion_tokens_details", "reasoning_tokens"),
        ),
        model if isinstance(model, str) else "",
        finish_reason=finish if isinstance(finish, str) else None,
        content_null=message.content is None,
        logprobs=parse_logprobs(_plain(getattr(choices[0], "logprobs", None))),
    )


def _plain(value: Any) -> Any:
    """An SDK object as plain data (pydantic models dump themselves; dicts stay)."""
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


class LiteLLMProvider:
    """A `Provider` over litellm. `model` in each request is litellm's model string, e.g.
    "gpt-4o", "anthropic/claude-...", or "openai/<name>" together with `api_base` for an
    OpenAI-compatible server."""

    def __init__(
        self,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        name: str = "litellm",
        structured_output: bool = True,
    ) -> None:
        self._litellm = import_litellm()
        self.name = name
        self.api_base = api_base
        self.identity = f"litellm:{api_base}" if api_base else "litellm"
        self.supports_structured_output = structured_output
        self._secret = api_key

    def __repr__(self) -> str:
        return f"LiteLLMProvider(name={self.name!r}, api_base={self.api_base!r})"

    async def complete(self, request: ChatRequest, *, timeout: float) -> ChatResponse:
        import openai

        kwargs = build_chat_kwargs(request, structured_output=self.supports_structured_output)
        if self.api_base is not None:
            kwargs["api_base"] = self.api_base
        if self._secret is not None:
            kwargs["api_key"] = self._secret
        where = f"{self.name} ({request.model})"
        try:
            completion = await self._litellm.acompletion(
                **kwargs, timeout=timeout, num_retries=0, max_retries=0
            )
        except openai.OpenAIError as exc:  # litellm's exceptions subclass openai's
            raise map_openai_error(
                exc, provider=self.name, model=request.model, secret=self._secret
            ) from None
        answer = response_text_and_usage(completion, where=where)
        return dataclasses.replace(answer, model=answer.model or request.model)

    async def aclose(self) -> None:
        return None
