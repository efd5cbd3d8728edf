"""The synchronous path against the strict OpenAI stand-in: modern models reachable, bad answers
never cached, a run that cannot succeed stopped fast, a budget that bounds without trapping."""

from __future__ import annotations

import asyncio
import time

import pytest
from endpoint_support import KEY, decoy_jobs, run_all, serve_endpoint

from lvlmva.cache import VerdictCache
from lvlmva.engine.types import JobStatus
from lvlmva.simulation.clock import SystemClock
from lvlmva.simulation.openai_chat import ChatSettings
from lvlmva.simulation.openai_faults import Faults
from lvlmva.simulation.openai_ratelimit import RateLimits
from lvlmva.simulation.openai_standin import StandInConfig
from lvlmva.simulation.openai_usage import ReasoningLengths


def masks(results) -> int:
    return sum(r.ok for r in results)


async def test_gpt5_and_o_series_requests_are_accepted_and_counted_from_their_usage():
    jobs, oracle = decoy_jobs(6)
    async with serve_endpoint(oracle) as endpoint:
        for critic, judge, effort, judge_effort in (
            ("gpt-5-mini", "gpt-5-nano", None, "minimal"),
            ("o4-mini", "gpt-4.1-nano", "low", None),
            ("gpt-5.1", "gpt-4o-mini", "low", None),
            ("gpt-5.2", "gpt-5.2", None, None),  # effort none: a temperature may be sent
        ):
            engine = endpoint.engine(
                critic_model=critic, judge_model=judge, reasoning_effort=effort,
                judge_reasoning_effort=judge_effort,
            )  # fmt: skip
            results = await run_all(engine, jobs)
            assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        assert {c.status for c in endpoint.ledger.calls} == {200}
        totals = endpoint.ledger.by_model("sync")
    # the usage we book is the server's, reasoning tokens inside the completion tokens
    assert totals["gpt-5-nano"].reasoning_tokens == 6 * ReasoningLengths().tokens("minimal")
    assert engine.stats.usage.prompt_tokens == totals["gpt-5.2"].prompt_tokens
    assert engine.stats.usage.completion_tokens == totals["gpt-5.2"].completion_tokens


async def test_reasoning_effort_reaches_the_reasoning_models_only():
    jobs, oracle = decoy_jobs(3)
    async with serve_endpoint(oracle) as endpoint:
        engine = endpoint.engine(
            critic_model="o4-mini", judge_model="gpt-5-nano", reasoning_effort="low"
        )
        assert all(r.ok for r in await run_all(engine, jobs))
        totals = endpoint.ledger.by_model("sync")
    low = ReasoningLengths().tokens("low")
    assert totals["o4-mini"].reasoning_tokens == totals["gpt-5-nano"].reasoning_tokens == 3 * low


def test_an_effort_no_model_takes_is_refused_before_anything_is_sent():
    from lvlmva.engine.config import EngineConfig
    from lvlmva.errors import ConfigError
    from lvlmva.prompts import load_prompt_set

    prompts = load_prompt_set("decoy-digits")
    with pytest.raises(ConfigError, match="neither gpt-4o nor gpt-4o-mini is a reasoning"):
        EngineConfig(critic_model="gpt-4o", judge_model="gpt-4o-mini", prompts=prompts,
                     reasoning_effort="low")  # fmt: skip
    with pytest.raises(ConfigError, match="gpt-5-mini takes --reasoning-effort minimal"):
        EngineConfig(critic_model="gpt-5-mini", prompts=prompts, reasoning_effort="none")
    with pytest.raises(ConfigError, match="gpt-4o-mini is not a reasoning model"):
        EngineConfig(critic_model="gpt-5-mini", judge_model="gpt-4o-mini", prompts=prompts,
                     judge_reasoning_effort="low")  # fmt: skip


async def test_a_reasoning_model_that_spends_its_budget_is_asked_once_more_then_told_why():
    jobs, oracle = decoy_jobs(4)
    async with serve_endpoint(oracle) as endpoint:
        # medium effort thinks 1,024 tokens: a 1,024 budget leaves nothing, 2,048 is enough
        engine = endpoint.engine(max_tokens=1024)
        results = await run_all(engine, jobs)
        assert all(r.ok for r in results)
        assert engine.stats.tally.budget_retries == 8  # every Critic and Judge once
        # high effort thinks 4,096 tokens: 1,024 and 2,048 are both spent on reasoning
        engine = endpoint.engine(max_tokens=1024, reasoning_effort="high")
        results = await run_all(engine, jobs)
    assert all(r.status is JobStatus.FAILED for r in results)
    assert all("spent its whole budget of 2048 completion tokens on reasoning" in r.error
               for r in results)  # fmt: skip
    assert all(r.provider_calls == 2 for r in results)  # no loop: one larger budget, then stop


async def test_a_revoked_key_stops_the_run_within_max_in_flight_and_says_401(tmp_path):
    jobs, oracle = decoy_jobs(200)
    async with serve_endpoint(oracle, Faults(revoke_key_after=10)) as endpoint:
        engine = endpoint.engine(cache=VerdictCache(tmp_path), max_in_flight=32)
        started = time.perf_counter()
        results = await run_all(engine, jobs)
        elapsed = time.perf_counter() - started
        sent = endpoint.ledger.sync_calls
    assert engine.stopped is not None and engine.stopped.status == 401
    assert "HTTP 401" in engine.stopped.line() and "Incorrect API key" in engine.stopped.line()
    assert sent <= 10 + 32 + 2, sent  # the answers, then at most one round in flight
    assert len(results) <= 32 + 10  # no job pulled once stopped
    assert elapsed < 10
    assert {r.status for r in results} <= {JobStatus.OK, JobStatus.FAILED, JobStatus.NOT_RUN}


@pytest.mark.parametrize(
    ("faults", "status", "needle"),
    [
        (Faults(quota_after=4), 429, "insufficient_quota"),
        (Faults(missing_models=frozenset({"gpt-5-nano"})), 404, "does not exist"),
    ],
)
async def test_quota_and_missing_models_stop_the_run_without_retries(faults, status, needle):
    jobs, oracle = decoy_jobs(100)
    async with serve_endpoint(oracle, faults) as endpoint:
        engine = endpoint.engine(max_in_flight=16)
        results = await run_all(engine, jobs)
        sent = endpoint.ledger.sync_calls
    assert engine.stopped is not None and engine.stopped.status == status
    assert needle in engine.stopped.line()
    assert engine.stats.retries == 0  # insufficient_quota is not a rate limit
    assert sent <= 4 + 16 + 16 + 2
    assert len(results) < 100


async def test_a_burst_of_the_same_400_stops_the_run():
    jobs, oracle = decoy_jobs(100)
    async with serve_endpoint(oracle) as endpoint:  # gpt-5 refuses max_tokens: every request
        engine = endpoint.engine(provider_options={"max_tokens_param": "max_tokens"})
        results = await run_all(engine, jobs)
        sent = endpoint.ledger.sync_calls
    assert engine.stopped is not None and not engine.stopped.fatal
    assert "max_tokens" in engine.stopped.line() and "8 answers in a row" in engine.stopped.line()
    assert sent <= 32 + 8 and len(results) <= 32 + 8  # one round, and the burst itself


async def test_truncated_answers_are_never_cached_and_a_healthy_rerun_completes(tmp_path):
    jobs, oracle = decoy_jobs(60)
    async with serve_endpoint(oracle, Faults(truncate_share=0.3)) as endpoint:
        results = await run_all(endpoint.engine(cache=VerdictCache(tmp_path)), jobs)
        failed = [r for r in results if not r.ok]
        assert failed and all("cut at the limit" in r.error for r in failed)
        first_calls = endpoint.ledger.sync_calls
        with VerdictCache(tmp_path) as cache:
            entries = [cache._cache.get(k) for k in cache._cache.iterkeys()]
        assert entries and all(e["finish_reason"] == "stop" for e in entries)
        endpoint.standin.faults = Faults()  # the server is healthy again
        rerun = await run_all(endpoint.engine(cache=VerdictCache(tmp_path)), jobs)
        rerun_calls = endpoint.ledger.sync_calls - first_calls
    assert masks(rerun) == 60
    ok_first = {r.job_id for r in results if r.ok}
    paid = {r.job_id for r in rerun if r.provider_calls}
    assert paid and not paid & ok_first  # only what was cut is asked again
    assert 0 < rerun_calls <= 2 * len(failed)


async def test_filtered_and_empty_answers_fail_with_the_reason_and_are_not_retried(tmp_path):
    jobs, oracle = decoy_jobs(20)
    async with serve_endpoint(oracle, Faults(content_filter_share=1.0)) as endpoint:
        results = await run_all(endpoint.engine(cache=VerdictCache(tmp_path)), jobs)
        sent = endpoint.ledger.sync_calls
    assert all("content filter" in r.error for r in results)
    assert sent == 20  # one Critic call each, no retry, no Judge
    with VerdictCache(tmp_path) as cache:
        assert len(cache) == 0


async def test_a_budget_at_half_the_cost_completes_about_half_and_never_passes_it(tmp_path):
    jobs, oracle = decoy_jobs(100)
    async with serve_endpoint(oracle) as endpoint:
        full = endpoint.engine(max_in_flight=32)
        assert masks(await run_all(full, jobs)) == 100
        cap = full.stats.cost_usd / 2
        for in_flight in (32, 8):
            engine = endpoint.engine(budget_usd=cap, max_in_flight=in_flight)
            results = await run_all(engine, jobs)
            assert masks(results) >= 40, (in_flight, masks(results))
            assert engine.stats.cost_usd <= 1.05 * cap
            paid_no_verdict = [r for r in results if not r.ok and r.cost_usd > 0]
            assert paid_no_verdict == []  # every paid Critic got its Judge
            assert engine.cost.budget_reached


async def test_oversized_bodies_are_refused_without_holding_them():
    jobs, oracle = decoy_jobs(4)
    faults = Faults(oversize_share=1.0, oversize_bytes=2 * 2**20)
    async with serve_endpoint(oracle, faults) as endpoint:
        engine = endpoint.engine(provider_options={"max_response_bytes": 2**20})
        results = await run_all(engine, jobs)
    assert all("over the 1 MiB cap" in r.error for r in results)


async def test_rate_limit_headers_slow_the_client_before_the_endpoint_says_429():
    jobs, oracle = decoy_jobs(12)
    limits = ChatSettings(limits=RateLimits(rpm=600))  # 600 at once, then 10 a second
    config = StandInConfig(api_keys=(KEY,), chat=limits)
    async with serve_endpoint(oracle, config=config, clock=SystemClock()) as endpoint:
        for _ in range(591):  # someone else used the window: 9 requests are left
            endpoint.standin.engine.limiter.admit("gpt-4.1-mini", 0)
        engine = endpoint.engine(critic_model="gpt-4.1-mini", judge_model="gpt-4.1-mini",
                                 max_in_flight=4)  # fmt: skip
        results = await asyncio.wait_for(run_all(engine, jobs), 30)
        statuses = [c.status for c in endpoint.ledger.calls]
    assert masks(results) == 12
    assert statuses == [200] * 24  # paced by the headers: no 429, no retry


@pytest.mark.parametrize(
    ("faults", "error", "needle"),
    [
        (Faults(missing_models=frozenset({"gpt-5-nano"})), "RunStopped", "HTTP 404"),
        (Faults(content_filter_share=1.0), "DataError", "(1) critic: the provider's content"),
    ],
)
async def test_python_align_says_why_when_no_job_gave_a_mask(faults, error, needle):
    from lvlmva.critics import CriticSettings
    from lvlmva.pipeline import align
    from lvlmva.vision.datasets import load_dataset
    from lvlmva.vision.models import build_model

    splits = load_dataset("decoy-digits", seed=0)
    _, oracle = decoy_jobs(0)
    async with serve_endpoint(oracle, faults) as endpoint:
        critic = CriticSettings("openai", "gpt-5-mini", "gpt-5-nano", api_key=KEY,
                                base_url=endpoint.server.base_url, cache_dir=None)  # fmt: skip
        with pytest.raises(Exception) as info:
            await align(build_model("mlp", splits.info), splits, critic=critic, n_align=6,
                        epochs=1, progress=False)  # fmt: skip
    assert type(info.value).__name__ == error and needle in str(info.value)
    assert "\n" not in str(info.value)
    if error == "RunStopped":
        assert info.value.result is None
        assert info.value.metrics["failure_reasons"] and info.value.metrics["n_masks"] == 0


async def test_a_tight_budget_with_identical_jobs_in_flight_never_deadlocks():
    import dataclasses

    base, oracle = decoy_jobs(10)
    jobs = [dataclasses.replace(j, job_id=f"{j.job_id}/{k}") for k in range(4) for j in base]
    async with serve_endpoint(oracle) as endpoint:
        full = endpoint.engine()
        await run_all(full, base)
        engine = endpoint.engine(budget_usd=full.stats.cost_usd * 0.3, max_in_flight=40)
        results = await asyncio.wait_for(run_all(engine, jobs), 20)
    assert masks(results) >= 1 and engine.cost.budget_reached  # it ends, within the cap
    assert engine.stats.cost_usd <= 1.05 * full.stats.cost_usd * 0.3
