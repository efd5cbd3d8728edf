"""Client-side rate limiting: requests per minute, tokens per minute and a concurrency cap, and
the endpoint's own count as its `x-ratelimit-*` headers report it (`observe`).

Each limit is a token bucket (GCRA-style pacing with a small burst) whose capacity and refill
rate are chosen so that no sliding window of `window` seconds ever holds more than the cap,
even as counted by the provider when requests take up to `transit_allowance` x `window` longer
to reach it than others (1 %, 0.6 s for a minute), while a steady stream still reaches about
98 % of the cap. Waiters are served first in, first out
by one timer: nothing polls, and a release wakes only the task it admits.

    limiter = RateLimiter(rpm=6000, tpm=2_000_000, max_concurrency=64)
    async with limiter.acquire(estimated_tokens) as permit:
        response = await provider.complete(request, timeout=60)
        permit.settle(response.usage.total_tokens)
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from lvlmva.engine.types import RateLimitInfo
from lvlmva.errors import ConfigError

__all__ = ["Permit", "RateLimiter"]

_EPS = 1e-9
_MARGIN = 1e-3


class _Bucket:
    """A token bucket with lazy refill; `level` may go negative (debt after a settle)."""

    __slots__ = ("capacity", "last", "level", "rate")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.level = capacity
        self.last = now

    def refill(self, now: float) -> None:
        if now > self.last:
            self.level = min(self.capacity, self.level + (now - self.last) * self.rate)
            self.last = now

    def ready_at(self, amount: float, now: float) -> float:
        """Earliest time at which `amount` can be taken (after `refill(now)`)."""
        missing = amount - self.level
        if missing <= _EPS:
            return now
        if self.rate <= 0:
            return math.inf
        return now + missing / self.rate


@dataclass
class Permit:
    """Admission for one request. `granted_at` is the event-loop time it was admitted."""

    tokens: float
    granted_at: float
    _limiter: RateLimiter | None = None
    _settled: bool = False

    def settle(self, actual_tokens: float) -> None:
        """Report the tokens the request really used; the difference is refunded or owed."""
        if self._settled or self._limiter is None:
            return
        self._settled = True
        self._limiter._settle(self.tokens, actual_tokens)


class _Waiter:
    __slots__ = ("future", "tokens")

    def __init__(self, future: asyncio.Future[float], tokens: float) -> None:
        self.future = future
        self.tokens = tokens


class RateLimiter:
    """Requests-per-window, tokens-per-window and concurrency limits for one endpoint.

    `rpm` / `tpm` are the caps per `window` seconds (60 by default; tests use short windows).
    `None` disables a cap. `burst_fraction` is the share of the cap that may go out at once to
    absorb scheduling jitter; the refill rate is lowered by the same amount so that no window
    can exceed the cap. `transit_allowance` lowers the refill rate further, so that no window
    of `window * (1 + transit_allowance)` seconds exceeds the cap either: the provider counts
    arrivals, and a request delayed on its way (a new connection, a busy client) can land in
    the same provider-side window as later ones. A request estimated above the token burst raises
    the burst to its size (and lowers the refill rate to match); one estimated at or above `tpm`
    can never be sent and raises `ConfigError`.
    """

    def __init__(
        self,
        *,
        rpm: float | None,
        tpm: float | None = None,
        max_concurrency: int = 64,
        window: float = 60.0,
        burst_fraction: float = 0.01,
        transit_allowance: float = 0.01,
    ) -> None:
        if rpm is not None and rpm < 1:
            raise ConfigError(f"rpm must be at least 1 (got {rpm}); use None for no limit")
        if tpm is not None and tpm <= 1:
            raise ConfigError(f"tpm must be above 1 (got {tpm}); use None for no limit")
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be at least 1 (got {max_concurrency})")
        if window <= 0:
            raise ConfigError(f"window must be positive (got {window})")
        if not 0 <= burst_fraction < 0.5:
            raise ConfigError(f"burst_fraction must be in [0, 0.5) (got {burst_fraction})")
        if not 0 <= transit_allowance <= 1:
            raise ConfigError(f"transit_allowance must be in [0, 1] (got {transit_allowance})")
        self.rpm = rpm
        self.tpm = tpm
        self.max_concurrency = max_concurrency
        self.window = window
        self.burst_fraction = burst_fraction
        self.transit_allowance = transit_allowance
        self._requests: _Bucket | None = None
        self._tokens: _Bucket | None = None
        self._seen_requests: _Bucket | None = None  # the endpoint's count, from its headers
        self._seen_tokens: _Bucket | None = None
        self._in_flight = 0
        self._paused_until = -math.inf
        self._waiters: deque[_Waiter] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self.granted = 0

    # -- public API -------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def acquire(self, estimated_tokens: float = 0) -> AsyncIterator[Permit]:
        """Wait for admission (FIFO), hold a concurrency slot for the body, release on exit."""
        granted_at = await self._admit(float(max(0.0, estimated_tokens)))
        permit = Permit(tokens=float(max(0.0, estimated_tokens)), granted_at=granted_at)
        permit._limiter = self
        try:
            yield permit
        finally:
            self._release()

    def observe(self, info: RateLimitInfo, tokens_each: float = 0.0) -> None:
        """Follow the endpoint's own count, from the `x-ratelimit-*` headers of an answer: it
        had `remaining` of `limit` left and is full again in `reset` seconds, so it refills at
        (limit - remaining) / reset. The other requests in flight may not be counted in it
        yet, so they are taken off (`tokens_each` tokens apiece); new requests wait while the
        rest would not cover them, instead of meeting a 429."""
        loop = self._get_loop()
        now, others = loop.time(), max(self._in_flight - 1, 0)
        self._seen_requests = _seen_bucket(
            info.limit_requests, info.remaining_requests, info.reset_requests_s, others, now,
            self.window,
        )  # fmt: skip
        self._seen_tokens = _seen_bucket(
            info.limit_tokens, info.remaining_tokens, info.reset_tokens_s, others * tokens_each,
            now, self.window,
        )  # fmt: skip
        self._pump()

    def penalize(self, seconds: float) -> None:
        """Admit no new request for `seconds` (e.g. after a 429 with Retry-After)."""
        if seconds <= 0:
            return
        loop = self._get_loop()
        self._paused_until = max(self._paused_until, loop.time() + seconds)
        self._pump()

    # -- internals --------------------------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # First use (or a new loop, e.g. a second asyncio.run): start with full buckets.
            self._loop = loop
            self._timer = None
            self._timer_at = math.inf
            now = loop.time()
            if self.rpm is not None:
                # n grants in a half-open window of length L satisfy n < capacity + rate * L,
                # so capacity + rate * L = floor(rpm) + 1 caps every such window at floor(rpm)
                # (less a sliver, so float rounding can never admit one more); L is the window
                # stretched by the transit allowance.
                cap = 1.0 + math.floor(self.rpm * self.burst_fraction)
                rate = (math.floor(self.rpm) + 1.0 - _MARGIN - cap) / self._span
                self._requests = _Bucket(cap, rate, now)
            if self.tpm is not None:
                cap = max(1.0, self.tpm * self.burst_fraction)
                self._tokens = _Bucket(cap, self._token_rate(cap), now)
        return loop

    def _check_tokens(self, tokens: float) -> None:
        bucket = self._tokens
        if bucket is None or tokens <= bucket.capacity or self.tpm is None:
            return
        if tokens >= self.tpm:
            raise ConfigError(
                f"a request estimated at {tokens:.0f} tokens can never fit under tpm={self.tpm:g}; "
                "raise --tpm or send smaller requests"
            )
        # Grow the burst to the largest request; the rate drops so capacity + rate*window = tpm.
        bucket.level += tokens - bucket.capacity
        bucket.capacity = tokens
        bucket.rate = self._token_rate(tokens)

    def _token_rate(self, capacity: float) -> float:
        assert self.tpm is not None
        return (self.tpm * (1.0 - 1e-6) - capacity) / self._span

    @property
    def _span(self) -> float:
        """The window every cap holds over: `window`, stretched by the transit allowance."""
        return self.window * (1.0 + self.transit_allowance)

    def _can_admit_now(self, tokens: float, now: float) -> bool:
        if self._in_flight >= self.max_concurrency or now < self._paused_until:
            return False
        if self._requests is not None:
            self._requests.refill(now)
            if self._requests.level < 1.0 - _EPS:
                return False
        if self._tokens is not None:
            self._tokens.refill(now)
            if self._tokens.level < tokens - _EPS:
                return False
        for bucket, amount in ((self._seen_requests, 1.0), (self._seen_tokens, tokens)):
            if bucket is not None:
                bucket.refill(now)
                if bucket.level < min(amount, bucket.capacity) - _EPS:
                    return False
        return True

    def _take(self, tokens: float) -> None:
        self._in_flight += 1
        self.granted += 1
        if self._requests is not None:
            self._requests.level -= 1.0
        if self._tokens is not None:
            self._tokens.level -= tokens
        if self._seen_requests is not None:
            self._seen_requests.level -= 1.0
        if self._seen_tokens is not None:
            self._seen_tokens.level -= tokens

    async def _admit(self, tokens: float) -> float:
        loop = self._get_loop()
        self._check_tokens(tokens)
        now = loop.time()
        if not self._waiters and self._can_admit_now(tokens, now):
            self._take(tokens)
            return now
        waiter = _Waiter(loop.create_future(), tokens)
        self._waiters.append(waiter)
        self._pump()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                # Admitted, then cancelled before running: hand everything back.
                self._refund(tokens)
                self._release()
            else:
                with suppress(ValueError):
                    self._waiters.remove(waiter)
                self._pump()
            raise

    def _refund(self, tokens: float) -> None:
        if self._requests is not None:
            self._requests.level = min(self._requests.capacity, self._requests.level + 1.0)
        if self._tokens is not None:
            self._tokens.level = min(self._tokens.capacity, self._tokens.level + tokens)

    def _release(self) -> None:
        self._in_flight -= 1
        if self._waiters:
            self._pump()

    def _settle(self, estimated: float, actual: float) -> None:
        if self._tokens is None or self._loop is None:
            return
        self._tokens.refill(self._loop.time())
        self._tokens.level = min(self._tokens.capacity, self._tokens.level + estimated - actual)
        if actual < estimated and self._waiters:
            self._pump()

    def _pump(self) -> None:
        """Admit waiters from the head while possible, then arm one timer for the next."""
        loop = self._get_loop()
        now = loop.time()
        while self._waiters:
            head = self._waiters[0]
            if head.future.done():  # cancelled while queued
                self._waiters.popleft()
                continue
            if not self._can_admit_now(head.tokens, now):
                break
            self._waiters.popleft()
            self._take(head.tokens)
            head.future.set_result(now)
        if not self._waiters or self._in_flight >= self.max_concurrency:
            self._cancel_timer()  # a release will pump again
            return
        head = self._waiters[0]
        wake = max(now, self._paused_until)
        if self._requests is not None:
            wake = max(wake, self._requests.ready_at(1.0, now))
        if self._tokens is not None:
            wake = max(wake, self._tokens.ready_at(head.tokens, now))
        for bucket, amount in ((self._seen_requests, 1.0), (self._seen_tokens, head.tokens)):
            if bucket is not None:
                wake = max(wake, bucket.ready_at(min(amount, bucket.capacity), now))
        if self._timer is not None and abs(self._timer_at - wake) < 1e-6:
            return
        self._cancel_timer()
        if math.isfinite(wake):
            self._timer_at = wake
            self._timer = loop.call_at(wake, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._pump()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf


class RateLimitSignal:
    """Tells a lone 429 from a saturated endpoint.

    A single 429 only delays its own retry (by its Retry-After). When more than `threshold` of
    the last `window` answers were 429s, the endpoint's real limit is below our pacing and every
    new request should pause: `record` then returns True.
    """

    def __init__(self, window: int = 50, threshold: float = 0.2) -> None:
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._limited = 0
        self._threshold = threshold

    def record(self, limited: bool) -> bool:
        if len(self._outcomes) == self._outcomes.maxlen:
            self._limited -= self._outcomes[0]
        self._outcomes.append(limited)
        self._limited += limited
        return limited and self._limited > self._threshold * self._outcomes.maxlen



def _seen_bucket(
    limit: int | None,
    remaining: int | None,
    reset_s: float | None,
    taken: float,
    now: float,
    window: float,
) -> _Bucket | None:
    """The endpoint's bucket as its headers describe it (None when they do not)."""
    if remaining is None or not limit or limit <= 0:
        return None
    if reset_s and reset_s > 0 and remaining < limit:
        rate = (limit - remaining) / reset_s
    else:
        rate = limit / window
    bucket = _Bucket(float(limit), rate, now)
    bucket.level = float(remaining) - taken
    return bucket
