"""Alias drift: a model name (`gpt-4o`) answers as a dated snapshot, and OpenAI moves the alias
to newer ones. The cache key holds the name asked for (the answer's snapshot is known only
after it comes), so a cache filled before the move serves the old snapshot's answers beside the
new one's. The engine counts which model answered each name and the run warns when one name
was answered by several."""

from __future__ import annotations

import dataclasses

from endpoint_support import decoy_jobs, run_all, serve_endpoint

from lvlmva.cache import VerdictCache
from lvlmva.pipeline.records import CritiqueCounts, critique_metrics

OLD, NEW = "gpt-4o-2024-08-06", "gpt-4o-2024-11-20"


async def test_answers_of_a_moved_alias_are_counted_per_snapshot_and_warned_about(tmp_path):
    jobs, oracle = decoy_jobs(8)
    async with serve_endpoint(oracle) as endpoint:
        config = {"critic_model": "gpt-4o", "judge_model": "gpt-4o-mini"}
        first = endpoint.engine(VerdictCache(tmp_path), **config)
        assert all(r.ok for r in await run_all(first, jobs[:4]))
        counts = CritiqueCounts.from_engine(first.stats)
        assert counts.served == {"gpt-4o": {OLD: 4}, "gpt-4o-mini": {"gpt-4o-mini-2024-07-18": 4}}
        assert counts.snapshot_warning is None

        endpoint.standin.faults = dataclasses.replace(
            endpoint.standin.faults, moved_aliases={"gpt-4o": NEW}
        )
        second = endpoint.engine(VerdictCache(tmp_path), **config)
        assert all(r.ok for r in await run_all(second, jobs))  # 4 cached, 4 new
        assert second.stats.cache_hits == 8  # the Critic's and the Judge's of the first four
    counts = CritiqueCounts.from_engine(second.stats)
    assert counts.served["gpt-4o"] == {OLD: 4, NEW: 4}
    warning = counts.snapshot_warning
    assert warning is not None
    assert f"gpt-4o by 2 models ({OLD}: 4, {NEW}: 4)" in warning
    assert f"--critic-model {NEW}" in warning and "--cache-dir" in warning
    metrics = critique_metrics([], counts)
    assert metrics["served_models"]["gpt-4o"] == {OLD: 4, NEW: 4}
    assert metrics["snapshot_warning"] == warning


def test_a_dated_snapshot_answers_as_itself_and_needs_no_warning():
    counts = CritiqueCounts(served={NEW: {NEW: 10}, "simulated": {"simulated": 3}})
    assert counts.snapshot_warning is None
