"""Async Critic & Judge orchestration: providers, rate limits, retries, validation, cost.

- `types`: requests, responses, jobs, results, `Tally` (calls, reused answers, tokens, cost).
- `model_params`: what each model family takes (output budget name, temperature, reasoning
  effort, image detail) and how it counts image tokens, as data.
- `requests`: the request of each step (Critic, Judge, fused, re-ask), pure functions.
- `keys`: the cache key of a request (`request_key`, `ProviderIdentity`), a pure function.
- `answers`: answers from the cache or an identical request in flight; cache entries.
- `dispatch`: the `Dispatcher` seam (its contract) and `OnlineDispatcher` (rate limits,
  timeout, retries, budget, cost); `idle`: when the engine has nothing more to offer.
- `config`: `EngineConfig`; `engine`: `Engine` (scheduling and the per-job state machine);
  `budget`: each job's expected cost held on the meter; `breaker`: the run-level stop.
- `stats`: `EngineStats`, `Ledger`; `progress`: the critique bar.
- leaves: `validation` (schema, `parse_verdicts`), `cost`, `ratelimit`, `retry`, `errors`,
  `providers/` (OpenAI-compatible on aiohttp, litellm; `wire` their shared wire format).

The names below are imported lazily, so `import lvlmva.engine.types` stays light."""

from __future__ import annotations

from lvlmva.lazy_imports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lvlmva.engine.engine": ("Engine",),
        "lvlmva.engine.config": ("EngineConfig",),
        "lvlmva.engine.breaker": ("Breaker", "StopReason"),
        "lvlmva.engine.model_params": ("ModelRules", "rules_for"),
        "lvlmva.engine.errors": ("RunStopped", "ProviderError", "BudgetReached"),
        "lvlmva.engine.stats": ("EngineStats", "Ledger"),
        "lvlmva.engine.types": (
            "Tally", "ChatRequest", "ChatResponse", "CritiqueJob", "ImagePart", "JobResult",
            "JobStatus", "Message", "Provider", "TextPart", "Usage",
        ),
        "lvlmva.engine.dispatch": ("Call", "Dispatcher", "OnlineDispatcher"),
        "lvlmva.engine.keys": ("ProviderIdentity", "request_key"),
        "lvlmva.engine.requests": ("Sampling",),
        "lvlmva.engine.ratelimit": ("RateLimiter",),
        "lvlmva.engine.retry": ("RetryPolicy",),
        "lvlmva.engine.cost": ("CostMeter", "PriceTable", "estimate_request_tokens"),
        "lvlmva.engine.validation": ("parse_verdicts", "verdict_schema", "VerdictValidationError"),
    },
)
