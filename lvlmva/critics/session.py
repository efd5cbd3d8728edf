"""A connected critic backend joined with the engine, the answer cache and the price table."""

from __future__ import annotations

from dataclasses import dataclass

from lvlmva.critics.base import CriticBackend, CriticConnection
from lvlmva.critics.settings import CriticSettings
from lvlmva.engine.types import Provider

__all__ = ["CriticSession", "open_session"]


@dataclass
class CriticSession:
    """What a critique run talks to: `engine.run(jobs)`; `register_truth` tells a simulated
    critic the ground-truth mask of an original image (a no-op for real LVLMs)."""

    backend: CriticBackend
    settings: CriticSettings
    connection: CriticConnection
    engine: object  # lvlmva.engine.engine.Engine

    @property
    def needs_truth(self) -> bool:
        return self.connection.truth is not None

    def register_truth(self, original_png: bytes, mask: object) -> None:
        if self.connection.truth is not None:
            self.connection.truth.add(original_png, mask)

    async def aclose(self) -> None:
        try:
            await self.engine.aclose()  # closes the providers and the cache
        finally:
            await self.connection.aclose()

    async def __aenter__(self) -> CriticSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def open_session(
    backend: CriticBackend,
    settings: CriticSettings,
    prompt_family: str,
    *,
    providers: tuple[Provider, Provider | None] | None = None,
    progress: bool | None = None,
) -> CriticSession:
    """Connect `backend` (or use the ready `providers`: Critic, Judge) and build its engine.
    `progress`: the critique bar (None: only on a terminal)."""
    from lvlmva.cache import VerdictCache
    from lvlmva.engine.cost import PriceTable
    from lvlmva.engine.engine import Engine, EngineConfig
    from lvlmva.prompts import load_prompt_set

    if providers is not None:
        critic, judge = providers
        connection = CriticConnection(critic, judge or critic)
    else:
        connection = await backend.connect(settings)
    try:
        listed = PriceTable.from_file(settings.prices_file) if settings.prices_file else None
        prices = (listed or PriceTable()).with_overrides(backend.price_overrides(settings))
        limits, request = settings.limits, settings.request
        config = EngineConfig(
            critic_model=settings.critic_model,
            judge_model=settings.judge_model,
            prompts=load_prompt_set(prompt_family),
            fused=settings.fused,
            max_in_flight=limits.max_in_flight,
            rpm=limits.rpm,
            tpm=limits.tpm,
            request_timeout=limits.request_timeout,
            temperature=request.temperature,
            seed=settings.seed,
            max_tokens=request.max_completion_tokens,
            reasoning_effort=request.reasoning_effort,
            judge_reasoning_effort=request.judge_reasoning_effort,
            image_detail=request.image_detail,
            verdict_logprobs=request.verdict_logprobs,
            prices=prices,
            budget_usd=limits.budget_usd,
            progress=progress,
        )
        cache = VerdictCache(settings.cache_dir) if settings.cache_dir else None
        dispatcher = None
        if settings.batch is not None:  # docs/batch.md
            from lvlmva.engine.batch import open_dispatcher

            dispatcher = open_dispatcher(
                settings.batch, base_url=settings.base_url, api_key=settings.api_key,
                cache=cache, online=config.online_dispatcher(), progress=progress,
                providers=(connection.critic, connection.judge),
            )  # fmt: skip
        engine = Engine(
            connection.critic, connection.judge, config, cache=cache, dispatcher=dispatcher
        )
    except BaseException:
        await connection.aclose()
        raise
    return CriticSession(backend, settings, connection, engine)
