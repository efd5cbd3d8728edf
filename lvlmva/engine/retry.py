"""The engine's one retry loop (tenacity): only retryable `ProviderError`s are retried,
Retry-After is honoured, otherwise exponential backoff with full jitter."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random_exponential,
)

from lvlmva.engine.errors import ProviderError
from lvlmva.errors import ConfigError

__all__ = ["RetryPolicy", "call_with_retries", "is_retryable"]

T = TypeVar("T")

OnRetry = Callable[[int, ProviderError, float], Any]
"""Called before each wait with (attempt that failed, its error, seconds to wait); may be async."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    `max_attempts` counts the first call. Without a Retry-After, attempt k waits a random time
    in [0, min(max_backoff, initial_backoff * 2**(k-1))] ("full jitter"; `jitter=False` waits
    the upper bound). With a Retry-After the wait is at least that long; a server asking for more
    than `max_retry_after` seconds is not waited for: the error is raised.
    """

    max_attempts: int = 6
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    jitter: bool = True
    max_retry_after: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1 (got {self.max_attempts})")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ConfigError(
                f"need 0 <= initial_backoff <= max_backoff "
                f"(got {self.initial_backoff}, {self.max_backoff})"
            )


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, ProviderError) and error.retryable


class _Wait:
    """tenacity wait strategy: backoff with jitter, raised to the error's Retry-After."""

    def __init__(self, policy: RetryPolicy) -> None:
        backoff = wait_random_exponential if policy.jitter else wait_exponential
        self._backoff = backoff(multiplier=policy.initial_backoff, max=policy.max_backoff)

    def __call__(self, state: RetryCallState) -> float:
        seconds = float(self._backoff(state))
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            seconds = max(seconds, float(retry_after))
        return seconds


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy | None = None,
    *,
    on_retry: OnRetry | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Await `fn()` until it succeeds, a non-retryable error occurs or attempts run out;
    the last error is re-raised unchanged.

    The first attempt runs outside tenacity, whose bookkeeping costs more than the rest of a
    request: only when it fails with a retryable error does the loop start, with that failure
    replayed into it, so waits, callbacks and attempt counts are those of the plain loop."""
    policy = policy or RetryPolicy()
    try:
        return await fn()
    except ProviderError as exc:
        if not exc.retryable or policy.max_attempts == 1:
            raise
        first: ProviderError | None = exc

    async def replay() -> T:
        nonlocal first
        if first is not None:
            error, first = first, None
            raise error
        return await fn()

    return await _retrying(replay, policy, on_retry, sleep)


async def _retrying(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    on_retry: OnRetry | None,
    sleep: Callable[[float], Awaitable[None]],
) -> T:
    pending: list[Awaitable[Any]] = []

    def retry_predicate(error: BaseException) -> bool:
        if not is_retryable(error):
            return False
        retry_after = getattr(error, "retry_after", None)
        return retry_after is None or retry_after <= policy.max_retry_after

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is None or state.outcome is None or state.next_action is None:
            return
        error = state.outcome.exception()
        assert isinstance(error, ProviderError)
        result = on_retry(state.attempt_number, error, state.next_action.sleep)
        if inspect.isawaitable(result):
            pending.append(result)

    async def sleep_after_callbacks(seconds: float) -> None:
        # Async on_retry callbacks are awaited here, which works on every tenacity version.
        while pending:
            await pending.pop(0)
        await sleep(seconds)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=_Wait(policy),
        retry=retry_if_exception(retry_predicate),
        before_sleep=before_sleep,
        sleep=sleep_after_callbacks,
        reraise=True,
    )
    return await retrying(fn)
