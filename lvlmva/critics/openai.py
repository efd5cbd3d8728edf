"""Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, llama.cpp ...)
through our aiohttp client, `lvlmva.engine.providers.OpenAICompatibleProvider`. The key comes
from `settings.api_key` or `OPENAI_API_KEY`, the endpoint from `--base-url` or
`OPENAI_BASE_URL`; neither is ever printed."""

from __future__ import annotations

import argparse
import os

from lvlmva.critics.base import CliOption, CriticBackend, CriticConnection
from lvlmva.critics.settings import CriticSettings
from lvlmva.errors import ConfigError

BASE_URL = CliOption(
    ("--base-url",),
    {"help": "OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp ...) or a litellm api_base"},
)
PREFLIGHT_TIMEOUT_S = 15.0


def require_models(settings: CriticSettings, args: argparse.Namespace, kind: str) -> CriticSettings:
    """The Critic model from `--critic-model` (required) and the Judge model (default: the
    Critic's)."""
    if not args.critic_model:
        raise ConfigError(f"--critic {kind} needs --critic-model (e.g. gpt-4o)")
    return settings.replace(
        critic_model=args.critic_model,
        judge_model=args.judge_model or args.critic_model,
        base_url=args.base_url,
    )


class OpenAICritic(CriticBackend):
    name = "openai"
    summary = "an OpenAI-compatible endpoint (OPENAI_API_KEY, or --base-url for a local server)"
    cli_options = (BASE_URL,)

    def configure(self, settings: CriticSettings, args: argparse.Namespace) -> CriticSettings:
        settings = require_models(settings, args, self.name)
        if not (os.environ.get("OPENAI_API_KEY") or args.base_url or settings.api_key):
            raise ConfigError("--critic openai needs OPENAI_API_KEY or --base-url")
        return settings

    def describe(self, settings: CriticSettings) -> str:
        where = settings.base_url or os.environ.get("OPENAI_BASE_URL") or "api.openai.com"
        return (
            f"Critic: {settings.critic_model} / Judge: {settings.judge_model} via openai ({where})"
        )

    async def preflight(self, settings: CriticSettings) -> None:
        """One free `GET /models` with the key (and the organization / project headers the
        requests carry): a wrong URL, a dead server or a rejected key is a ConfigError naming
        the endpoint, before anything is trained or paid for. Batch files (`--batch files`)
        reach no endpoint: nothing to check."""
        import aiohttp

        if settings.batch is not None and settings.batch.mode == "files":
            return

        from lvlmva.engine.providers.openai_compat import openai_headers, resolve_endpoint

        base, key = resolve_endpoint(settings.base_url, settings.api_key)
        options = settings.options
        headers = openai_headers(key, options.get("organization"), options.get("project"))
        timeout = aiohttp.ClientTimeout(total=PREFLIGHT_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, trust_env=True) as session,
                session.get(f"{base}/models", headers=headers) as response,
            ):
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach the LVLM endpoint {base} ({type(exc).__name__}); check --base-url "
                "and that the server is running"
            ) from None
        if status in (401, 403):
            raise ConfigError(f"the endpoint {base} rejected the API key (HTTP {status})")
        if status >= 500:
            raise ConfigError(f"the endpoint {base} answered HTTP {status}; try again later")

    async def connect(self, settings: CriticSettings) -> CriticConnection:
        from lvlmva.engine.providers.openai_compat import OpenAICompatibleProvider

        options = {"max_response_bytes": settings.limits.max_response_bytes, **settings.options}
        provider = OpenAICompatibleProvider(
            base_url=settings.base_url, api_key=settings.api_key, **options
        )
        return CriticConnection(provider, provider)
