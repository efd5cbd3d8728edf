"""Any provider litellm supports (optional extra `[litellm]`): model strings such as
`anthropic/claude-...`; each provider's key comes from its usual environment variable, read
by litellm itself (an explicit `settings.api_key` overrides it for every model)."""

from __future__ import annotations

import argparse

from lvlmva.critics.base import CriticBackend, CriticConnection
from lvlmva.critics.openai import BASE_URL, require_models
from lvlmva.critics.settings import CriticSettings


class LiteLLMCritic(CriticBackend):
    name = "litellm"
    summary = "any litellm provider (pip install 'lvlm-va[litellm]'; keys from their env vars)"
    cli_options = (BASE_URL,)

    def configure(self, settings: CriticSettings, args: argparse.Namespace) -> CriticSettings:
        return require_models(settings, args, self.name)

    def describe(self, settings: CriticSettings) -> str:
        where = f" ({settings.base_url})" if settings.base_url else ""
        return (
            f"Critic: {settings.critic_model} / Judge: {settings.judge_model} via litellm{where}"
        )

    async def connect(self, settings: CriticSettings) -> CriticConnection:
        from lvlmva.engine.providers.litellm_provider import LiteLLMProvider

        provider = LiteLLMProvider(
            api_base=settings.base_url, api_key=settings.api_key, **settings.options
        )
        return CriticConnection(provider, provider)
