"""When the engine has nothing more to offer its dispatcher (`Dispatcher.on_idle`).

That is the case when every job the engine holds waits on a call in `send` (its own, or the
one of an identical job it shares) and no feeder is pulling a job. The watch counts those
states as they change; when they match it schedules a check with `loop.call_soon`, so that
jobs whose answers were delivered in the same callback have resumed (and offered their next
calls, or begun other work) before the check looks again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["IdleWatch"]


class IdleWatch:
    """Counts held jobs, jobs waiting on a call in `send` and pulling feeders; calls `on_idle`
    once per quiet period that followed new calls. Each `*_started` / `want` is paired with
    its `*_ended` / `unwant` in a `finally`."""

    def __init__(self, on_idle: Callable[[], None]) -> None:
        self._on_idle = on_idle
        self._held = 0  # jobs being processed
        self._parked = 0  # held jobs whose answer waits on a call in `send`
        self._pulling = 0  # feeders that may pull a job now
        self._wanting: dict[str, int] = {}  # key -> held jobs waiting for its answer
        self._sending: set[str] = set()  # keys with a call in `send`
        self._offered = False  # a call entered `send` since the last `on_idle`
        self._scheduled = False

    def job_started(self) -> None:
        self._held += 1

    def job_finished(self) -> None:
        self._held -= 1
        self._check()

    def pull_started(self) -> None:
        """A feeder waits for the next job (not for a free slot)."""
        self._pulling += 1

    def pull_ended(self) -> None:
        self._pulling -= 1
        self._check()

    def want(self, key: str) -> None:
        """A job waits for the answer of `key`, however it comes; `unwant` when it has it."""
        self._wanting[key] = self._wanting.get(key, 0) + 1
        if key in self._sending:
            self._parked += 1
            self._check()

    def unwant(self, key: str) -> None:
        left = self._wanting[key] - 1
        if left:
            self._wanting[key] = left
        else:
            del self._wanting[key]
        if key in self._sending:
            self._parked -= 1

    def send_started(self, key: str) -> None:
        """The call that answers `key` is in `send`; `send_ended` when it returns."""
        self._sending.add(key)
        self._parked += self._wanting.get(key, 0)
        self._offered = True
        self._check()

    def send_ended(self, key: str) -> None:
        self._sending.discard(key)
        self._parked -= self._wanting.get(key, 0)

    def _quiet(self) -> bool:
        return self._offered and self._pulling == 0 and 0 < self._held == self._parked

    def _check(self) -> None:
        if self._scheduled or not self._quiet():
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._confirm)

    def _confirm(self) -> None:
        self._scheduled = False
        if self._quiet():
            self._offered = False
            self._on_idle()
