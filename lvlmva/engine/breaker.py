"""The run-level breaker: stop a run that cannot succeed instead of failing every job alone.

It trips on the first error that no request of the run can get past (`ProviderError.fatal`: a
rejected key, 401 / 403; an unknown model or URL, 404; `insufficient_quota`), and on a burst of
the same client error: `burst` answers in a row refused with the same status and code (a 400 for
a parameter the model does not take, say) with no success between them in the same lane (a step
and model: the Critic's successes do not hide a Judge that every answer refuses). Once tripped,
the engine sends nothing more and pulls no new job; calls already on the wire finish. The
`StopReason` names the status, the code and the server's message in one line.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from lvlmva.engine.errors import BadRequest, ProviderError

__all__ = ["DEFAULT_BURST", "Breaker", "StopReason"]

DEFAULT_BURST = 8


@dataclass(frozen=True)
class StopReason:
    """Why a run was stopped: the HTTP status, the API's error code, the error's message, and
    whether one error sufficed (`fatal`) or a burst of `count` identical ones did."""

    status: int | None
    code: str | None
    message: str
    fatal: bool
    count: int = 1

    def line(self) -> str:
        """The error's message (it names the endpoint, model, status and the server's words),
        with the code and the burst length when they add something."""
        text = self.message
        if self.status is not None and f"HTTP {self.status}" not in text:
            text = f"HTTP {self.status}: {text}"
        if self.code and self.code not in text:
            text += f" [{self.code}]"
        if not self.fatal:
            text += f" ({self.count} answers in a row)"
        return text


class Breaker:
    """Records the final outcome of each call (`success`, `failure`); `tripped` is the
    `StopReason` once the run must stop (it never closes again)."""

    def __init__(self, burst: int = DEFAULT_BURST) -> None:
        if burst < 1:
            raise ValueError(f"burst must be at least 1 (got {burst})")
        self.burst = burst
        self.tripped: StopReason | None = None
        self._last: dict[Hashable, tuple[int | None, str]] = {}
        self._run: dict[Hashable, int] = {}

    def success(self, lane: Hashable = None) -> None:
        """Record a usable answer in `lane` (the step and model of the call)."""
        self._last.pop(lane, None)
        self._run.pop(lane, None)

    def failure(self, error: ProviderError, lane: Hashable = None) -> StopReason | None:
        """Record a failed call in `lane`; returns the `StopReason` when this one trips the
        breaker."""
        if self.tripped is not None:
            return None
        if error.fatal:
            self.tripped = StopReason(error.status, error.code, str(error), fatal=True)
            return self.tripped
        if not isinstance(error, BadRequest):
            return None  # transient failures (after retries) neither count nor reset
        signature = (error.status, error.code or str(error))
        run = self._run.get(lane, 0) + 1 if signature == self._last.get(lane) else 1
        self._run[lane], self._last[lane] = run, signature
        if run >= self.burst:
            self.tripped = StopReason(error.status, error.code, str(error), fatal=False, count=run)
            return self.tripped
        return None
