"""RateLimiter: caps hold over every sliding window, the achieved rate stays near the cap,
FIFO order, concurrency, penalize and cancellation. Most tests run on a virtual clock."""

from __future__ import annotations

import asyncio
import selectors
from bisect import bisect_left

import pytest

from lvlmva.engine.ratelimit import RateLimiter
from lvlmva.errors import ConfigError


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer instead of sleeping."""

    def __init__(self) -> None:
        super().__init__(selectors.DefaultSelector())
        self._now = 0.0
        real_select = self._selector.select

        def select(timeout=None):
            if timeout is None:
                raise RuntimeError("virtual clock: nothing scheduled, the test would hang")
            self._now += max(0.0, timeout)
            return real_select(0)

        self._selector.select = select

    def time(self) -> float:
        return self._now


def run_virtual(coro):
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def max_in_window(times: list[float], window: float, weights: list[float] | None = None) -> float:
    """Largest total (count or weight) over half-open windows [t, t + window)."""
    order = sorted(range(len(times)), key=times.__getitem__)
    ts = [times[i] for i in order]
    ws = [1.0 if weights is None else weights[i] for i in order]
    prefix = [0.0]
    for w in ws:
        prefix.append(prefix[-1] + w)
    best = 0.0
    for i, t in enumerate(ts):
        j = bisect_left(ts, t + window)
        best = max(best, prefix[j] - prefix[i])
    return best


async def _stream(limiter: RateLimiter, n: int, tokens=None, hold: float = 0.0):
    async def one(i: int):
        async with limiter.acquire(tokens[i] if tokens else 0) as permit:
            if hold:
                await asyncio.sleep(hold)
            return permit.granted_at

    return await asyncio.gather(*(one(i) for i in range(n)))


@pytest.mark.parametrize("rpm", [37, 600, 6000])
def test_rpm_cap_holds_in_every_window_and_rate_is_near_cap(rpm):
    n = int(rpm * 2.5)
    limiter = RateLimiter(rpm=rpm, max_concurrency=10_000)
    times = run_virtual(_stream(limiter, n))
    assert max_in_window(times, 60.0) <= rpm
    span = max(times) - min(times)
    achieved = (n - 1) / span * 60.0
    assert achieved >= 0.95 * rpm, achieved
    assert achieved <= rpm * 1.02


def test_the_cap_holds_where_the_provider_counts_despite_transit_delays():
    """The provider counts arrivals: the first requests (new connections) may arrive up to
    0.6 s late, in the same 60-s window as later ones; the cap must hold there too."""
    rpm, n = 6000, 15_000
    limiter = RateLimiter(rpm=rpm, max_concurrency=100_000)
    times = run_virtual(_stream(limiter, n))
    assert max_in_window(times, 60.0 * 1.01) <= rpm
    arrivals = [t + (0.6 if i < 100 else 0.0) for i, t in enumerate(times)]
    assert max_in_window(arrivals, 60.0) <= rpm
    span = max(times) - min(times)
    assert (n - 1) / span * 60.0 >= 0.97 * rpm
    without = RateLimiter(rpm=rpm, max_concurrency=100_000, transit_allowance=0.0)
    times = run_virtual(_stream(without, n))
    arrivals = [t + (0.6 if i < 100 else 0.0) for i, t in enumerate(times)]
    assert max_in_window(arrivals, 60.0) > rpm  # what the allowance is for


def test_tpm_cap_holds_with_mixed_request_sizes():
    tpm = 50_000
    sizes = [300 + (i * 37) % 900 for i in range(600)]
    limiter = RateLimiter(rpm=None, tpm=tpm, max_concurrency=10_000)
    times = run_virtual(_stream(limiter, len(sizes), tokens=sizes))
    assert max_in_window(times, 60.0, sizes) <= tpm
    span = max(times) - min(times)
    achieved = (sum(sizes) - sizes[0]) / span * 60.0
    assert achieved >= 0.95 * tpm, achieved


def test_request_larger_than_burst_grows_the_burst_and_keeps_the_cap():
    tpm = 10_000
    sizes = [4_000] * 10  # burst is 100 tokens by default
    limiter = RateLimiter(rpm=None, tpm=tpm)
    times = run_virtual(_stream(limiter, len(sizes), tokens=sizes))
    assert max_in_window(times, 60.0, sizes) <= tpm


def test_request_above_tpm_is_a_config_error():
    limiter = RateLimiter(rpm=None, tpm=1_000)

    async def main():
        async with limiter.acquire(5_000):
            pass

    with pytest.raises(ConfigError, match="tpm"):
        run_virtual(main())


def test_settle_charges_actual_tokens():
    # Estimates of 10 tokens but 1000 really used: the debt must slow the stream down to tpm.
    tpm = 20_000
    limiter = RateLimiter(rpm=None, tpm=tpm, max_concurrency=1)

    async def main():
        times = []
        for _ in range(60):
            async with limiter.acquire(10) as permit:
                times.append(permit.granted_at)
                permit.settle(1_000)
        return times

    times = run_virtual(main())
    # 60 x 1000 actual tokens at 20k per minute need about two minutes after the burst.
    assert max(times) - min(times) >= 60.0 * (60_000 - 2 * 200 - 1_000) / tpm


def test_concurrency_cap_and_fifo_order():
    limiter = RateLimiter(rpm=None, max_concurrency=3)
    order: list[int] = []
    peak = 0

    async def one(i: int):
        nonlocal peak
        async with limiter.acquire():
            order.append(i)
            peak = max(peak, limiter.in_flight)
            await asyncio.sleep(1.0)

    async def main():
        tasks = []
        for i in range(12):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0)  # enqueue in a known order
        await asyncio.gather(*tasks)
        return asyncio.get_running_loop().time()

    elapsed = run_virtual(main())
    assert peak == 3
    assert order == list(range(12))
    assert elapsed == pytest.approx(4.0)


def test_penalize_pauses_new_admissions():
    limiter = RateLimiter(rpm=6000, max_concurrency=100)

    async def main():
        loop = asyncio.get_running_loop()
        async with limiter.acquire():
            pass
        limiter.penalize(5.0)
        t0 = loop.time()
        times = await _stream(limiter, 5)
        return t0, times

    t0, times = run_virtual(main())
    assert min(times) >= t0 + 5.0


def test_cancelled_waiter_leaves_the_queue():
    limiter = RateLimiter(rpm=None, max_concurrency=1)

    async def main():
        got = []

        async def one(i):
            async with limiter.acquire():
                got.append(i)
                await asyncio.sleep(1.0)

        first = asyncio.create_task(one(0))
        await asyncio.sleep(0)
        second = asyncio.create_task(one(1))
        third = asyncio.create_task(one(2))
        await asyncio.sleep(0.1)
        second.cancel()
        await asyncio.gather(first, third, return_exceptions=True)
        assert second.cancelled()
        return got

    assert run_virtual(main()) == [0, 2]
    assert limiter.in_flight == 0 and limiter.waiting == 0


async def test_real_clock_short_window():
    # 40 requests per 0.25 s window on the real event loop: the cap holds on the limiter's
    # own admission times whatever the machine load.
    limiter = RateLimiter(rpm=40, window=0.25, max_concurrency=1000)
    times = await _stream(limiter, 120)
    assert max_in_window(times, 0.25) <= 40
    assert len(times) == 120


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rpm": 0},
        {"rpm": 10, "max_concurrency": 0},
        {"rpm": 10, "tpm": 1},
        {"rpm": 10, "transit_allowance": -0.1},
    ],
)
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        RateLimiter(**kwargs)


def test_rate_limit_signal_ignores_lone_429s_and_flags_saturation():
    from lvlmva.engine.ratelimit import RateLimitSignal

    signal = RateLimitSignal(window=50, threshold=0.2)
    # 5% of answers are 429s: never saturated.
    assert not any(signal.record(i % 20 == 0) for i in range(1000))
    # Most answers become 429s: saturated within a few answers.
    flags = [signal.record(True) for _ in range(20)]
    assert flags[-1] and not flags[0]
