"""`EngineConfig`: the models, prompts, request settings and limits of a critique run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lvlmva.engine.breaker import DEFAULT_BURST
from lvlmva.engine.cost import CostMeter, PriceTable
from lvlmva.engine.dispatch import OnlineDispatcher
from lvlmva.engine.model_params import DETAILS, check_efforts
from lvlmva.engine.requests import PromptTemplates, Sampling
from lvlmva.engine.retry import RetryPolicy
from lvlmva.errors import ConfigError

__all__ = ["EngineConfig"]


@dataclass(kw_only=True)
class EngineConfig:
    """Models, prompts and limits of a run. `rpm` / `tpm` cap each distinct provider object
    (critic and judge share one limiter when they are the same provider); `max_in_flight`
    bounds the jobs held at once (pulled and not yet yielded) and the concurrent requests.
    `temperature` is sent where the model takes one (None: never sent, the server's default);
    `request_timeout`: seconds one request may take (None: the model family's, 600 for
    reasoning models, 60 for the rest: `lvlmva.engine.dispatch.default_timeout`);
    `max_tokens` is the output budget of each call, reasoning included (None: the model
    family's default, `lvlmva.engine.model_params`); `reasoning_effort` is sent to both models
    that take one when set (`judge_reasoning_effort` overrides it for the Judge);
    `image_detail` is the
    detail policy of the Critic's images (`DETAILS`; "fit": low for images of at most 512 px,
    which then lose nothing, high for larger ones; None: no detail sent). `breaker_burst`
    identical client errors in a row stop the run. `verdict_logprobs` asks the Critic,
    Judge and fused requests for token log-probabilities with that many alternatives (0 to 20;
    sent only to models that give them), from which each result's `no_probability` is read.
    The limits, timeout, retries, prices and budget configure the default `OnlineDispatcher`."""

    critic_model: str
    judge_model: str | None = None  # default: the critic model
    prompts: PromptTemplates
    fused: bool = False
    max_in_flight: int = 64
    rpm: float | None = None
    tpm: float | None = None
    temperature: float | None = 0.0
    seed: int | None = 0
    max_tokens: int | None = None
    reasoning_effort: str | None = None
    judge_reasoning_effort: str | None = None
    image_detail: str | None = "fit"
    verdict_logprobs: int | None = None
    request_timeout: float | None = None
    max_reasks: int = 2
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    prices: PriceTable = field(default_factory=PriceTable)
    budget_usd: float | None = None
    # When many recent answers are 429s, a Retry-After pauses all new requests; a lone 429
    # only delays its own retry.
    pause_on_rate_limit: bool = True
    breaker_burst: int = DEFAULT_BURST
    progress: bool | None = None  # tqdm bar; None = only when stderr is a terminal

    def __post_init__(self) -> None:
        if self.judge_model is None:
            self.judge_model = self.critic_model
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1 (got {self.max_in_flight})")
        if self.max_reasks < 0:
            raise ConfigError(f"max_reasks must be 0 or more (got {self.max_reasks})")
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise ConfigError(f"request_timeout must be positive (got {self.request_timeout})")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1 (got {self.max_tokens})")
        if self.image_detail is not None and self.image_detail not in DETAILS:
            raise ConfigError(
                f"image_detail must be one of {', '.join(DETAILS)} (got {self.image_detail!r})"
            )
        if self.verdict_logprobs is not None and not 0 <= self.verdict_logprobs <= 20:
            raise ConfigError(
                f"verdict_logprobs must be 0 to 20 alternatives (got {self.verdict_logprobs})"
            )
        if self.breaker_burst < 1:
            raise ConfigError(f"breaker_burst must be at least 1 (got {self.breaker_burst})")
        check_efforts(
            self.critic_model, self.judge_model, self.reasoning_effort, self.judge_reasoning_effort
        )

    @property
    def sampling(self) -> Sampling:
        """What the Critic (and fused) requests carry."""
        return Sampling(
            self.temperature, self.max_tokens, self.seed, self.reasoning_effort, self.image_detail,
            self.verdict_logprobs,
        )  # fmt: skip

    @property
    def judge_sampling(self) -> Sampling:
        effort = self.judge_reasoning_effort or self.reasoning_effort
        return dataclasses.replace(self.sampling, reasoning_effort=effort)

    def online_dispatcher(self) -> OnlineDispatcher:
        """The dispatcher these settings describe."""
        return OnlineDispatcher(
            max_in_flight=self.max_in_flight,
            rpm=self.rpm,
            tpm=self.tpm,
            request_timeout=self.request_timeout,
            retry=self.retry,
            meter=CostMeter(self.prices, self.budget_usd),
            pause_on_rate_limit=self.pause_on_rate_limit,
        )
