"""Clocks for the OpenAI stand-in: the wall clock, or a fake one a test moves by hand.

Everything time-dependent in the stand-in (rate-limit windows, batch lifecycles, `created`
timestamps, file expiry) reads one `Clock`, so a test holds a batch in `validating`, lets it run
for exactly 90 s or jumps past its 24-h window by calling `FakeClock.advance`.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Unix time in seconds (float)."""

    def now(self) -> float: ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A clock that only moves when `advance` is called (starts at `start`, Unix seconds)."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` (not negative); returns the new time."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds})")
        self._now += float(seconds)
        return self._now

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:.3f})"
