"""How the Critic & Judge are reached, as frozen groups and the settings that hold them.

- endpoint and models: `CriticSettings` itself (`kind`, models, `base_url`, `api_key`, `fused`,
  the cache and the price table, provider `options`);
- `RequestSettings`: what every request asks for (output budget, reasoning effort, image
  detail, temperature), sent as each model family allows (`lvlmva.engine.model_params`);
- `SimulationSettings`: what the offline simulated LVLM does (only the `simulated` kind reads it);
- `EngineLimits`: rate caps, concurrency, budget, timeout and response size of the engine;
- `batch`: `lvlmva.engine.batch.BatchOptions` to send the requests through the OpenAI Batch
  API (or into batch files), or None for synchronous calls; `batch=True` means the defaults.
  Its manifest lives in the cache, so with `batch` set `cache_dir` defaults to the default
  cache directory (`lvlmva.cache.default_cache_dir()`).

Each consumer receives only its group. The flat names of earlier releases
(`CriticSettings(verdict_accuracy=0.9, budget_usd=5.0, ...)`) still work: they are routed into
their group, so `CriticSettings(budget_usd=5.0).limits.budget_usd == 5.0`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from lvlmva.engine.batch.options import BatchOptions
from lvlmva.errors import ConfigError

__all__ = [
    "SIMULATED_CRITIC_MODEL",
    "SIMULATED_JUDGE_MODEL",
    "CriticSettings",
    "EngineLimits",
    "RequestSettings",
    "SimulationSettings",
]

SIMULATED_CRITIC_MODEL = "simulated-critic"
SIMULATED_JUDGE_MODEL = "simulated-judge"


@dataclass(frozen=True)
class SimulationSettings:
    """The simulated LVLM (a documented offline simulation, never a model): the share of
    spurious clusters it marks "no" (`verdict_accuracy`), the share of the other clusters it
    marks "yes" (`relevant_accuracy`, default: the same figure), how its errors fall
    (`error_model`: "independent", the same rate on every cluster, or "ambiguity", more on
    mixed and small clusters; `lvlmva.simulation.error_models`), the share of its error rate
    that repeats on every sample of the same question (`systematic`), its latency per request
    and whether it is reached in-process or over the real HTTP client (`transport`)."""

    verdict_accuracy: float = 0.87
    relevant_accuracy: float | None = None
    error_model: Literal["independent", "ambiguity"] = "independent"
    systematic: float = 0.5
    latency_ms: float = 0.0
    transport: Literal["in-process", "http"] = "in-process"

    def __post_init__(self) -> None:
        for name in ("verdict_accuracy", "relevant_accuracy", "systematic"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if self.error_model not in ("independent", "ambiguity"):
            raise ConfigError(
                f"error_model must be 'independent' or 'ambiguity', got {self.error_model!r}"
            )
        if self.latency_ms < 0:
            raise ConfigError(f"the simulated latency must not be negative, got {self.latency_ms}")
        if self.transport not in ("in-process", "http"):
            raise ConfigError(f"transport must be 'in-process' or 'http', got {self.transport!r}")

    def identity(self, seed: int) -> str:
        """What decides the simulation's answers for critic seed `seed`, as one string (the
        same as `SimulatedLVLM.identity` of the simulator these settings build)."""
        from lvlmva.simulation.simulator import simulation_identity

        relevant = self.verdict_accuracy if self.relevant_accuracy is None else (
            self.relevant_accuracy
        )
        return simulation_identity(
            self.error_model, self.verdict_accuracy, relevant, self.systematic, 0.0, seed
        )


@dataclass(frozen=True)
class RequestSettings:
    """What the Critic and Judge requests ask for. `max_completion_tokens`: the output budget
    of a call, reasoning included (None: 1,024 for chat models, 4,096 for reasoning models);
    `reasoning_effort`: sent to reasoning models when set (`judge_reasoning_effort` overrides
    it for the Judge); `image_detail`: "fit" (default: low for images of at most 512 px, which
    then lose no pixel at a third of gpt-4o's image tokens, high for larger ones), "auto",
    "low", "high" or None (none sent); `temperature`: sent where the model allows one (None:
    never sent, for a server that refuses it); `verdict_logprobs`: ask the Critic, Judge and
    fused requests for token log-probabilities with this many alternatives, where the model
    gives them (not reasoning models), so that each verdict's P("no") weights the consensus
    (`lvlmva.engine.confidence`; None: not asked)."""

    max_completion_tokens: int | None = None
    reasoning_effort: str | None = None
    judge_reasoning_effort: str | None = None
    image_detail: str | None = "fit"
    temperature: float | None = 0.0
    verdict_logprobs: int | None = None

    def __post_init__(self) -> None:
        from lvlmva.engine.model_params import DETAILS

        if self.max_completion_tokens is not None and self.max_completion_tokens < 1:
            raise ConfigError(
                f"--max-completion-tokens must be at least 1, got {self.max_completion_tokens}"
            )
        if self.image_detail is not None and self.image_detail not in DETAILS:
            raise ConfigError(
                f"--detail must be one of {', '.join(DETAILS)}, got {self.image_detail!r}"
            )
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise ConfigError(f"temperature must be in [0, 2], got {self.temperature}")
        if self.verdict_logprobs is not None and not 0 <= self.verdict_logprobs <= 20:
            raise ConfigError(
                f"--verdict-logprobs must be 0 to 20 alternatives, got {self.verdict_logprobs}"
            )


def _positive(flag: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"{flag} must be a positive number, got {value:g}")


@dataclass(frozen=True)
class EngineLimits:
    """What bounds a critique run: requests / tokens per minute, requests in flight, a budget
    in USD, the time one request may take and the largest response body accepted."""

    rpm: float | None = None
    tpm: float | None = None
    max_in_flight: int = 32
    budget_usd: float | None = None
    request_timeout: float | None = None  # None: 600 s for reasoning models, else 60 s
    max_response_bytes: int = 4 * 2**20

    def __post_init__(self) -> None:
        _positive("--rpm", self.rpm)
        _positive("--tpm", self.tpm)
        _positive("--budget-usd", self.budget_usd)
        _positive("--request-timeout", self.request_timeout)
        if self.max_in_flight < 1:
            raise ConfigError(f"--max-in-flight must be at least 1, got {self.max_in_flight}")
        if self.max_response_bytes < 1024:
            raise ConfigError(
                f"--max-response-mb must be at least 0.001, got {self.max_response_bytes / 2**20:g}"
            )


# Flat names of earlier releases -> (group field, name inside the group).
_SHORTHAND = {
    "verdict_accuracy": ("simulation", "verdict_accuracy"),
    "relevant_accuracy": ("simulation", "relevant_accuracy"),
    "error_model": ("simulation", "error_model"),
    "systematic": ("simulation", "systematic"),
    "sim_latency_ms": ("simulation", "latency_ms"),
    "sim_transport": ("simulation", "transport"),
    "rpm": ("limits", "rpm"),
    "tpm": ("limits", "tpm"),
    "max_in_flight": ("limits", "max_in_flight"),
    "budget_usd": ("limits", "budget_usd"),
    "request_timeout": ("limits", "request_timeout"),
    "max_response_bytes": ("limits", "max_response_bytes"),
    "max_completion_tokens": ("request", "max_completion_tokens"),
    "reasoning_effort": ("request", "reasoning_effort"),
    "judge_reasoning_effort": ("request", "judge_reasoning_effort"),
    "image_detail": ("request", "image_detail"),
    "temperature": ("request", "temperature"),
    "verdict_logprobs": ("request", "verdict_logprobs"),
}


@dataclass(frozen=True, init=False)
class CriticSettings:
    """Which LVLM critiques the explanations, and how it is reached.

    `kind` names an entry of `lvlmva.critics.CRITICS`: `"simulated"` (default; the offline
    simulation), `"openai"` (any OpenAI-compatible endpoint), `"litellm"` (optional extra),
    `"ground-truth"` (no LVLM: the true spurious masks, the upper bound). Models default to the
    simulation's names. `api_key=None` lets each provider read its usual environment variable.
    `options` are passed to the provider as they are (e.g. `{"structured_output": False}`,
    `{"max_tokens_param": "max_tokens"}`, `{"organization": "org-..."}`).
    """

    kind: str
    critic_model: str
    judge_model: str
    base_url: str | None
    api_key: str | None = field(repr=False)
    fused: bool
    cache_dir: Path | None
    prices_file: Path | None
    seed: int
    options: Mapping[str, Any]
    simulation: SimulationSettings
    limits: EngineLimits
    batch: BatchOptions | None
    request: RequestSettings

    def __init__(
        self,
        kind: str = "simulated",
        critic_model: str = SIMULATED_CRITIC_MODEL,
        judge_model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        fused: bool = False,
        cache_dir: str | Path | None = None,
        prices_file: str | Path | None = None,
        seed: int = 0,
        options: Mapping[str, Any] | None = None,
        simulation: SimulationSettings | None = None,
        limits: EngineLimits | None = None,
        batch: BatchOptions | bool | None = None,
        request: RequestSettings | None = None,
        **shorthand: Any,
    ) -> None:
        groups: dict[str, Any] = {
            "simulation": simulation or SimulationSettings(),
            "limits": limits or EngineLimits(),
            "request": request or RequestSettings(),
        }
        routed: dict[str, dict[str, Any]] = {"simulation": {}, "limits": {}, "request": {}}
        for name, value in shorthand.items():
            if name not in _SHORTHAND:
                known = ", ".join(sorted(_SHORTHAND))
                raise TypeError(
                    f"CriticSettings got an unexpected argument {name!r} (besides its fields it "
                    f"takes these shorthands: {known})"
                )
            group, inner = _SHORTHAND[name]
            routed[group][inner] = value
        for group, values in routed.items():
            if values:
                groups[group] = dataclasses.replace(groups[group], **values)
        if batch is True:
            batch = BatchOptions()
        if batch and cache_dir is None:
            from lvlmva.cache import default_cache_dir

            cache_dir = default_cache_dir()
        if judge_model is None:
            simulated = critic_model == SIMULATED_CRITIC_MODEL
            judge_model = SIMULATED_JUDGE_MODEL if simulated else critic_model
        values = {
            "kind": kind,
            "critic_model": critic_model,
            "judge_model": judge_model,
            "base_url": base_url,
            "api_key": api_key,
            "fused": fused,
            "cache_dir": Path(cache_dir).expanduser() if cache_dir is not None else None,
            "prices_file": Path(prices_file) if prices_file is not None else None,
            "seed": seed,
            "options": MappingProxyType(dict(options or {})),
            **groups,
            "batch": batch or None,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> CriticSettings:
        """A copy with `changes` (fields or shorthands) applied."""
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        current["options"] = dict(current["options"])
        return CriticSettings(**{**current, **changes})

    # Read-only views of the flat names, for callers written against earlier releases.
    @property
    def verdict_accuracy(self) -> float:
        return self.simulation.verdict_accuracy

    @property
    def budget_usd(self) -> float | None:
        return self.limits.budget_usd

    @property
    def max_in_flight(self) -> int:
        return self.limits.max_in_flight
