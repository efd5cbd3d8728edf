"""How the engine's calls reach a provider: the `Dispatcher` seam and `OnlineDispatcher`.

The engine builds every request (`lvlmva.engine.requests`) and its cache key
(`lvlmva.engine.keys`), looks it up in the cache and shares identical requests in flight; what
is left to send goes to its dispatcher as a `Call`. The contract:

- `await send(call)` returns the provider's `ChatResponse` for `call.request`, whenever it
  comes: at once (online) or hours later (a batch). It raises `ProviderError` when the call
  failed for good (retries are the dispatcher's business: the job then FAILs with that
  reason) and `BudgetReached` when it will not send the call (the job ends NOT_RUN). It is
  cancelled when the engine no longer needs the answer.
- `call.custom_id` is unique among the calls in flight (the cache key, the re-ask number and
  "L" for a retry with a larger output budget): a batch file's `custom_id`.
- A dispatcher books what it spends on `call.ledger`: `called()` per request that reached
  the provider, `spent(usage, usd)` per response, `retried(error)` per retry. Its `meter` (a
  `CostMeter`, the engine's `cost`) holds the price table and the budget; the engine holds
  each job's expected cost on it before the job starts and each call's worst case until
  `send` returns (`lvlmva.engine.budget`), so a dispatcher does not reserve: it `add`s each
  response's cost (and books it on the ledger, which reconciles the job's hold).
- `halt()` (optional): the run was stopped by the engine's breaker; calls not yet on the wire
  are not sent (`RunHalted`), and no retry starts.
- `max_in_flight` is how many calls it wants at once; the engine holds that many jobs.
- `on_idle()` is called once the engine has nothing more to offer for now: every job it holds
  waits on a call in `send` (its own, or an identical job's) and no job can be pulled. It
  comes at the earliest one event-loop iteration after the last call entered `send`, so
  `send` must take its call in (e.g. append it to the open shard) before it first suspends.
  Answers a dispatcher delivers together (resolved in one event-loop callback) are all taken
  in before the next `on_idle`. A batching dispatcher closes its partial shard here and must
  not hold calls back past it: nothing more comes until some answer is delivered. It comes
  only after new calls were offered, and is never awaited: start work, don't do it.
- `await aclose()` when the engine closes (after cancelling what was in flight).

`OnlineDispatcher` sends each call as it comes: the provider's rate limiter (slowed down by
the `x-ratelimit-*` headers before the endpoint answers 429), a timeout, retries
(`call_with_retries`), the cost meter and the rate-limit signal.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lvlmva.engine.cost import CostMeter, PriceTable, estimate_request_tokens
from lvlmva.engine.errors import ProviderError, ProviderTimeout, RateLimited, RunHalted
from lvlmva.engine.model_params import rules_for
from lvlmva.engine.ratelimit import RateLimiter, RateLimitSignal
from lvlmva.engine.retry import RetryPolicy, call_with_retries
from lvlmva.engine.stats import Ledger
from lvlmva.engine.types import ChatRequest, ChatResponse, Provider

__all__ = ["Call", "Dispatcher", "OnlineDispatcher", "default_timeout"]

log = logging.getLogger(__name__)

TIMEOUT_GRACE_S = 5.0  # the provider enforces the timeout; this guards one that does not
REASONING_TIMEOUT_S = 600.0  # the openai SDK's default: a reasoning model may think for minutes
TIMEOUT_S = 60.0
TIMEOUT_ATTEMPTS = 2  # a timed-out request may still be processed and billed: one retry only


def default_timeout(model: str) -> float:
    """Seconds one request to `model` may take when none is configured."""
    return REASONING_TIMEOUT_S if rules_for(model).reasoning else TIMEOUT_S


@dataclass(frozen=True)
class Call:
    """One request the engine wants answered. `key` is the cache key its valid answer is
    stored under; `attempt` counts the re-asks of the same key (0: the first request)."""

    step: str  # "critic", "judge" or "fused"
    provider: Provider
    request: ChatRequest
    key: str
    ledger: Ledger
    attempt: int = 0
    larger_budget: bool = False  # asked again with a larger output budget (cut at the limit)

    @property
    def custom_id(self) -> str:
        return f"{self.key}-{self.attempt}" + ("L" if self.larger_budget else "")


@runtime_checkable
class Dispatcher(Protocol):
    """Sends the engine's calls (see the module doc for the contract)."""

    max_in_flight: int
    meter: CostMeter
    batch_priced: bool  # its calls pay the batch share of the list price (budget holds use it)

    async def send(self, call: Call) -> ChatResponse: ...

    def on_idle(self) -> None: ...

    async def aclose(self) -> None: ...


class OnlineDispatcher:
    """Sends each call at once. `rpm` / `tpm` cap each distinct provider object (critic and
    judge share one limiter when they are the same provider); at most `max_in_flight`
    requests are open at once."""

    def __init__(
        self,
        *,
        max_in_flight: int = 64,
        rpm: float | None = None,
        tpm: float | None = None,
        request_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        meter: CostMeter | None = None,
        pause_on_rate_limit: bool = True,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.meter = meter if meter is not None else CostMeter(PriceTable())
        self.batch_priced = False
        self._rpm, self._tpm = rpm, tpm
        self._timeout = request_timeout
        self._retry = retry or RetryPolicy()
        self._pause_on_rate_limit = pause_on_rate_limit
        self._limiters: dict[int, RateLimiter] = {}
        self._rate_signal = RateLimitSignal()
        self._halted = False

    def limiter(self, provider: Provider) -> RateLimiter:
        """The rate limiter of `provider` (one per provider object)."""
        limiter = self._limiters.get(id(provider))
        if limiter is None:
            limiter = RateLimiter(rpm=self._rpm, tpm=self._tpm, max_concurrency=self.max_in_flight)
            self._limiters[id(provider)] = limiter
        return limiter

    async def send(self, call: Call) -> ChatResponse:
        """One logical request: rate-limited attempts with retries."""
        estimated = estimate_request_tokens(call.request)
        timeouts = 0

        async def attempt() -> ChatResponse:
            nonlocal timeouts
            if timeouts:
                self.meter.check_resend()
            try:
                return await self._attempt(call, estimated)
            except ProviderTimeout as exc:
                timeouts += 1
                if timeouts >= TIMEOUT_ATTEMPTS:
                    exc.retryable = False  # the endpoint may be billing each of them
                raise

        def on_retry(attempt_number: int, error: ProviderError, wait: float) -> None:
            call.ledger.retried(error)
            log.debug(
                "%s attempt %d failed (%s); retrying in %.2f s",
                call.step,
                attempt_number,
                error,
                wait,
            )

        return await call_with_retries(
            attempt, self._retry, on_retry=on_retry
        )

    def halt(self) -> None:
        """Send nothing more: calls waiting for admission or a retry end with `RunHalted`."""
        self._halted = True

    async def _attempt(self, call: Call, estimated: int) -> ChatResponse:
        provider, request = call.provider, call.request
        timeout = self._timeout if self._timeout is not None else default_timeout(request.model)
        limiter = self.limiter(provider)
        if self._halted:
            raise RunHalted("not sent, the run was stopped")
        async with limiter.acquire(estimated) as permit:
            if self._halted:
                raise RunHalted("not sent, the run was stopped")
            call.ledger.called()
            try:
                async with asyncio.timeout(timeout + TIMEOUT_GRACE_S):
                    response = await provider.complete(request, timeout=timeout)
            except (TimeoutError, ProviderTimeout) as exc:
                if getattr(exc, "status", None) is None:
                    # No answer at all (not an HTTP 408): the endpoint may still run the
                    # request and bill it, so its worst case is counted.
                    call.ledger.timed_out(self.meter.timed_out(request.model, estimated))
                if isinstance(exc, ProviderTimeout):
                    raise
                raise ProviderTimeout(f"{provider.name}: no answer in {timeout:g} s") from None
            except RateLimited as exc:
                saturated = self._rate_signal.record(True)
                if exc.retry_after and saturated and self._pause_on_rate_limit:
                    limiter.penalize(exc.retry_after)
                raise
            except ProviderError:
                raise
            except Exception as exc:  # a provider bug must fail the job, not the run
                raise ProviderError(f"{provider.name}: {type(exc).__name__}: {exc}") from exc
            permit.settle(response.usage.total_tokens)
            self._rate_signal.record(False)
            if response.rate_limits is not None:
                limiter.observe(response.rate_limits, estimated)
        call.ledger.spent(response.usage, self.meter.add(request.model, response.usage))
        return response

    def on_idle(self) -> None:
        """Nothing is held back: every call was sent when it came."""

    async def aclose(self) -> None:
        """Nothing to close: the engine closes the providers."""
