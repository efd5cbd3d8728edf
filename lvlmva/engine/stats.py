"""The engine's counters: job outcomes and one `Tally` of calls, reused answers, tokens and cost.

Every cost is booked once, on the `Ledger` of the job it was spent for; a ledger passes each
entry on to the engine's `EngineStats`, so `stats.tally` is the sum of every job's tally
(jobs still in flight, or stopped, included) and a caller reads its totals there alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from lvlmva.engine.types import Tally, TallyView, Usage

__all__ = ["CALL", "REASKED", "EngineStats", "Ledger"]

CALL = Tally(provider_calls=1)
REASKED = Tally(reasks=1)
_RETRY = Tally(retries=1)
_CACHE_HIT = Tally(cache_hits=1)
_SHARED = Tally(deduplicated=1)


@dataclass
class EngineStats(TallyView):
    """Counters over every `run` of an engine. `completed` = validated (OK) results."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    not_run: int = 0
    tally: Tally = field(default_factory=Tally)
    retries_by_error: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0  # seconds spent inside `run`

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.not_run

    @property
    def cache_hits(self) -> int:
        """Answers read from the cache (`deduplicated`: those shared in flight)."""
        return self.tally.cache_hits


class Ledger:
    """One job's running tally; every entry also goes to the engine's `stats`."""

    __slots__ = ("_stats", "tally")

    def __init__(self, stats: EngineStats) -> None:
        self._stats = stats
        self.tally = Tally()

    def book(self, tally: Tally) -> None:
        self.tally = self.tally + tally
        self._stats.tally = self._stats.tally + tally

    def spent(self, usage: Usage, cost_usd: float) -> None:
        """A response arrived: its tokens and their price."""
        self.book(Tally(usage=usage, cost_usd=cost_usd))

    def retried(self, error: Exception) -> None:
        """An attempt failed with `error` and will be retried."""
        self.book(_RETRY)
        self._stats.retries_by_error[type(error).__name__] += 1

    def reused(self, *, shared: bool) -> None:
        """An answer came from the cache, or (`shared`) from an identical request in flight."""
        self.book(_SHARED if shared else _CACHE_HIT)
