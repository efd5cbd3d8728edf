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

_EXPORTS = {
    "Engine": "lvlmva.engine.engine",
    "EngineConfig": "lvlmva.engine.config",
    "Breaker": "lvlmva.engine.breaker",
    "StopReason": "lvlmva.engine.breaker",
    "ModelRules": "lvlmva.engine.model_params",
    "rules_for": "lvlmva.engine.model_params",
    "RunStopped": "lvlmva.engine.errors",
    "EngineStats": "lvlmva.engine.stats",
    "Ledger": "lvlmva.engine.stats",
    "Tally": "lvlmva.engine.types",
    "Call": "lvlmva.engine.dispatch",
    "Dispatcher": "lvlmva.engine.dispatch",
    "OnlineDispatcher": "lvlmva.engine.dispatch",
    "ProviderIdentity": "lvlmva.engine.keys",
    "request_key": "lvlmva.engine.keys",
    "Sampling": "lvlmva.engine.requests",
    "ChatRequest": "lvlmva.engine.types",
    "ChatResponse": "lvlmva.engine.types",
    "CritiqueJob": "lvlmva.engine.types",
    "ImagePart": "lvlmva.engine.types",
    "JobResult": "lvlmva.engine.types",
    "JobStatus": "lvlmva.engine.types",
    "Message": "lvlmva.engine.types",
    "Provider": "lvlmva.engine.types",
    "TextPart": "lvlmva.engine.types",
    "Usage": "lvlmva.engine.types",
    "ProviderError": "lvlmva.engine.errors",
    "BudgetReached": "lvlmva.engine.errors",
    "RateLimiter": "lvlmva.engine.ratelimit",
    "RetryPolicy": "lvlmva.engine.retry",
    "CostMeter": "lvlmva.engine.cost",
    "PriceTable": "lvlmva.engine.cost",
    "estimate_request_tokens": "lvlmva.engine.cost",
    "parse_verdicts": "lvlmva.engine.validation",
    "verdict_schema": "lvlmva.engine.validation",
    "VerdictValidationError": "lvlmva.engine.validation",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
