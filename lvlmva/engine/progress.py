"""The critique progress bar, drawn from an engine's `EngineStats`: jobs done, running cost
(against the budget), request throughput, failures and cache hits."""

from __future__ import annotations

import sys
import time

from lvlmva.engine.stats import EngineStats

__all__ = ["CritiqueProgress"]

REFRESH_S = 0.5  # the postfix is recomputed at most this often


class CritiqueProgress:
    """A tqdm bar (`lvlmva.progress.progress_bar`) advanced once per result; `enabled=None`
    draws it only when stderr is a terminal. Throughput counts the calls since the bar began."""

    def __init__(
        self,
        stats: EngineStats,
        *,
        total: int | None,
        enabled: bool | None,
        budget_usd: float | None,
    ) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._stats = stats
        self._budget = budget_usd
        self._bar = None
        self._next = 0.0
        if enabled:
            from lvlmva.progress import progress_bar

            self._bar = progress_bar(total=total, unit="job", desc="critique", dynamic_ncols=True)
            self._start = time.perf_counter()
            self._calls0 = stats.provider_calls

    def update(self) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        now = time.perf_counter()
        if now >= self._next:
            self._next = now + REFRESH_S
            s = self._stats
            rate = (s.provider_calls - self._calls0) * 60.0 / max(now - self._start, 1e-9)
            budget = self._budget
            cost = f"${s.cost_usd:.4f}" + (f"/${budget:g}" if budget is not None else "")
            self._bar.set_postfix_str(
                f"{cost} {rate:.0f} req/min fail {s.failed} cached {s.cache_hits}", refresh=False
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
