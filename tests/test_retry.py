"""call_with_retries: what is retried, how long it waits, what is re-raised."""

from __future__ import annotations

import pytest

from lvlmva.engine.errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectionFailed,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from lvlmva.engine.retry import RetryPolicy, call_with_retries
from lvlmva.errors import ConfigError


class Script:
    """An async callable that raises the scripted errors in order, then returns "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class FakeSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


async def test_transient_errors_are_retried_until_success():
    fn = Script(ServerError("boom", status=500), ProviderTimeout("slow"), ConnectionFailed("x"))
    sleep = FakeSleep()
    assert await call_with_retries(fn, RetryPolicy(), sleep=sleep) == "ok"
    assert fn.calls == 4
    assert len(sleep.waits) == 3


@pytest.mark.parametrize("error", [BadRequest("bad", status=400), AuthenticationFailed("key")])
async def test_non_retryable_errors_raise_at_once(error):
    fn = Script(error)
    sleep = FakeSleep()
    with pytest.raises(type(error)) as info:
        await call_with_retries(fn, RetryPolicy(), sleep=sleep)
    assert info.value is error
    assert fn.calls == 1 and sleep.waits == []


async def test_other_exceptions_are_not_retried():
    fn = Script(KeyError("bug"))
    with pytest.raises(KeyError):
        await call_with_retries(fn, RetryPolicy(), sleep=FakeSleep())
    assert fn.calls == 1


async def test_last_error_is_reraised_when_attempts_run_out():
    errors = [ServerError(f"fail {i}", status=502) for i in range(3)]
    fn = Script(*errors, ServerError("never reached", status=500))
    with pytest.raises(ServerError) as info:
        await call_with_retries(fn, RetryPolicy(max_attempts=3), sleep=FakeSleep())
    assert info.value is errors[2]
    assert fn.calls == 3


async def test_retry_after_is_a_lower_bound_on_the_wait():
    fn = Script(RateLimited("slow down", status=429, retry_after=7.5), ServerError("x", status=503))
    sleep = FakeSleep()
    seen = []
    policy = RetryPolicy(initial_backoff=0.01, max_backoff=0.02)
    result = await call_with_retries(
        fn, policy, sleep=sleep, on_retry=lambda n, e, w: seen.append((n, type(e), w))
    )
    assert result == "ok"
    assert sleep.waits[0] >= 7.5
    assert sleep.waits[1] <= 0.02
    assert seen == [(1, RateLimited, sleep.waits[0]), (2, ServerError, sleep.waits[1])]


async def test_retry_after_beyond_the_limit_is_not_waited_for():
    fn = Script(RateLimited("come back tomorrow", status=429, retry_after=86_400))
    with pytest.raises(RateLimited):
        await call_with_retries(fn, RetryPolicy(max_retry_after=60), sleep=FakeSleep())
    assert fn.calls == 1


async def test_backoff_is_exponential_with_full_jitter_and_capped():
    policy = RetryPolicy(max_attempts=8, initial_backoff=1.0, max_backoff=10.0)
    uppers = [min(10.0, 2.0**k) for k in range(7)]
    draws: list[list[float]] = [[] for _ in uppers]
    for _ in range(40):
        sleep = FakeSleep()
        fn = Script(*[ServerError("x", status=500) for _ in range(7)])
        await call_with_retries(fn, policy, sleep=sleep)
        for k, w in enumerate(sleep.waits):
            assert 0.0 <= w <= uppers[k]
            draws[k].append(w)
    # Full jitter: waits spread over the range rather than sitting at the bound.
    assert min(draws[6]) < 5.0 < max(draws[6])


async def test_without_jitter_waits_are_deterministic():
    sleep = FakeSleep()
    fn = Script(*[ServerError("x", status=500) for _ in range(4)])
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=3.0, jitter=False)
    await call_with_retries(fn, policy, sleep=sleep)
    assert sleep.waits == [0.5, 1.0, 2.0, 3.0]


async def test_async_on_retry_is_awaited_before_sleeping():
    events = []

    async def on_retry(attempt, error, wait):
        events.append(("callback", attempt))

    async def sleep(seconds):
        events.append(("sleep", seconds))

    fn = Script(RateLimited("x", status=429, retry_after=0.25))
    await call_with_retries(fn, RetryPolicy(), on_retry=on_retry, sleep=sleep)
    assert events[0] == ("callback", 1)
    assert events[1][0] == "sleep" and events[1][1] >= 0.25


async def test_real_sleep_honours_retry_after():
    import time

    fn = Script(RateLimited("x", status=429, retry_after=0.05))
    t0 = time.monotonic()
    await call_with_retries(fn, RetryPolicy(initial_backoff=0.0, max_backoff=0.0))
    assert time.monotonic() - t0 >= 0.05


def test_bad_policy_is_a_config_error():
    with pytest.raises(ConfigError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(initial_backoff=5, max_backoff=1)
