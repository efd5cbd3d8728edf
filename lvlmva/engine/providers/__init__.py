"""Chat providers behind the engine's `Provider` protocol (see `lvlmva.engine.types`)."""

from lvlmva.engine.providers.litellm_provider import LiteLLMProvider
from lvlmva.engine.providers.openai_compat import OpenAICompatibleProvider
from lvlmva.engine.providers.wire import parse_retry_after

__all__ = ["LiteLLMProvider", "OpenAICompatibleProvider", "parse_retry_after"]
