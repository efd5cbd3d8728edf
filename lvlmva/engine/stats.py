"""The engine's counters: job outcomes and one `Tally` of calls, reused answers, tokens and cost.

Every event is booked once, on the `Ledger` of the job it happened for; a job's ledger passes
each entry on to the engine's, so `EngineStats.tally` is the sum of every job's tally (jobs in
flight, or stopped, included) and a caller reads its totals there alone. A ledger counts in
place (booking allocates nothing: it happens several times per request); `tally` is its
frozen snapshot.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from lvlmva.engine.types import Tally, TallyView, Usage

__all__ = ["EngineStats", "Ledger"]


class Ledger:
    """Running counts; every entry also goes to `parent` (a job's ledger: the engine's)."""

    __slots__ = (
        "_chain",
        "budget_retries",
        "cache_hits",
        "cached_tokens",
        "completion_tokens",
        "cost_usd",
        "deduplicated",
        "possibly_billed_usd",
        "prompt_tokens",
        "provider_calls",
        "reasks",
        "reasoning_tokens",
        "retries",
        "retries_by_error",
    )

    def __init__(self, parent: Ledger | None = None) -> None:
        self._chain: tuple[Ledger, ...] = (self,) if parent is None else (self, *parent._chain)
        self.provider_calls = self.retries = self.reasks = self.budget_retries = 0
        self.cache_hits = self.deduplicated = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.cached_tokens = self.reasoning_tokens = 0
        self.cost_usd = self.possibly_billed_usd = 0.0
        self.retries_by_error: Counter[str] = Counter()

    @property
    def tally(self) -> Tally:
        return Tally(
            self.provider_calls,
            self.retries,
            self.reasks,
            self.cache_hits,
            self.deduplicated,
            Usage(
                self.prompt_tokens,
                self.completion_tokens,
                self.cached_tokens,
                self.reasoning_tokens,
            ),
            self.cost_usd,
            self.budget_retries,
        )

    def called(self) -> None:
        """A request reached the provider (each attempt counts)."""
        for ledger in self._chain:
            ledger.provider_calls += 1

    def spent(self, usage: Usage, cost_usd: float) -> None:
        """A response arrived: its tokens and their price."""
        for ledger in self._chain:
            ledger.prompt_tokens += usage.prompt_tokens
            ledger.completion_tokens += usage.completion_tokens
            ledger.cached_tokens += usage.cached_tokens
            ledger.reasoning_tokens += usage.reasoning_tokens
            ledger.cost_usd += cost_usd

    def timed_out(self, possible_usd: float) -> None:
        """A request timed out; the endpoint may have billed it up to `possible_usd`."""
        for ledger in self._chain:
            ledger.possibly_billed_usd += possible_usd

    def retried(self, error: Exception) -> None:
        """An attempt failed with `error` and will be retried."""
        name = type(error).__name__
        for ledger in self._chain:
            ledger.retries += 1
            ledger.retries_by_error[name] += 1

    def budget_retried(self) -> None:
        """An answer cut at the token limit is asked again with a larger budget."""
        for ledger in self._chain:
            ledger.budget_retries += 1

    def reasked(self) -> None:
        """A Judge answer did not validate and is asked again."""
        for ledger in self._chain:
            ledger.reasks += 1

    def reused(self, *, shared: bool) -> None:
        """An answer came from the cache, or (`shared`) from an identical request in flight."""
        for ledger in self._chain:
            if shared:
                ledger.deduplicated += 1
            else:
                ledger.cache_hits += 1


@dataclass
class EngineStats(TallyView):
    """Counters over every `run` of an engine. `completed` = validated (OK) results; the
    calls, reused answers, tokens and cost of all jobs are `tally` (also read one by one:
    `provider_calls`, `cache_hits`, `deduplicated`, `retries`, `reasks`, `usage`,
    `cost_usd`)."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    not_run: int = 0
    elapsed: float = 0.0  # seconds spent inside `run`
    ledger: Ledger = field(default_factory=Ledger, repr=False)  # where jobs book
    # (model asked for, model the answer names) -> answers used, cached or new
    served: Counter[tuple[str, str]] = field(default_factory=Counter, repr=False)

    def answered(self, requested: str, served: str) -> None:
        """An answer to a request for `requested` was used; `served` is the model it names
        (an alias answers as its dated snapshot: gpt-4o as gpt-4o-2024-08-06)."""
        self.served[(requested, served or requested)] += 1

    def snapshots(self) -> dict[str, dict[str, int]]:
        """The models that answered, per model asked for (answers used, cached or new)."""
        found: dict[str, dict[str, int]] = {}
        for (requested, served), n in sorted(self.served.items()):
            found.setdefault(requested, {})[served] = n
        return found

    @property
    def tally(self) -> Tally:
        return self.ledger.tally

    @property
    def retries_by_error(self) -> Counter[str]:
        return self.ledger.retries_by_error

    @property
    def possibly_billed_usd(self) -> float:
        """Worst cases of the requests that timed out (not in `cost_usd`: maybe never billed)."""
        return self.ledger.possibly_billed_usd

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.not_run

    @property
    def cache_hits(self) -> int:
        """Answers read from the cache (`deduplicated`: those shared in flight)."""
        return self.ledger.cache_hits
