"""Async Critic & Judge orchestration: providers, rate limits, retries, validation, cost.

The names below are imported lazily, so `import lvlmva.engine.types` stays light."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": "lvlmva.engine.engine",
    "EngineConfig": "lvlmva.engine.engine",
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lvlmva.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
