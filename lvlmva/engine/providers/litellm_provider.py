"""Any provider litellm supports, through `litellm.acompletion` (optional extra `[litellm]`).
litellm's own retries are off (`num_retries=0`, `max_retries=0`): the engine owns the one loop."""

from __future__ import annotations

import os
from typing import Any

from lvlmva.engine.providers.openai_compat import (
    build_chat_kwargs,
    map_openai_error,
    response_text_and_usage,
)
from lvlmva.engine.types import ChatRequest, ChatResponse
from lvlmva.errors import ConfigError

__all__ = ["LiteLLMProvider", "import_litellm"]


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
        text, usage, model = response_text_and_usage(completion, where=where)
        return ChatResponse(text=text, usage=usage, model=model or request.model)

    async def aclose(self) -> None:
        return None
