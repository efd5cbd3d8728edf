"""The Engine against a scripted in-process provider (a test fake, not a simulation)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import re
from collections import Counter
from dataclasses import dataclass, field

import pytest

from lvlmva.cache import VerdictCache
from lvlmva.engine.cost import ModelPrice, PriceTable, estimate_request_tokens
from lvlmva.engine.engine import Engine, EngineConfig
from lvlmva.engine.errors import BadRequest, ProviderTimeout, RateLimited, ServerError
from lvlmva.engine.ratelimit import RateLimiter
from lvlmva.engine.retry import RetryPolicy
from lvlmva.engine.types import (
    ChatRequest,
    ChatResponse,
    CritiqueJob,
    ImagePart,
    JobStatus,
    TextPart,
    Usage,
)
from lvlmva.errors import ConfigError
from lvlmva.prompts import PromptSet

COLORS = ("red", "blue", "green")
PRICES = PriceTable({"fake-model": ModelPrice(1.0, 2.0)})


PROMPTS = PromptSet.from_texts(
    "test",
    {
        "critic_system": "You critique clusters.",
        "critic_user": (
            "job=$job class $class_name; $n_clusters clusters: $colors; images $image_names"
        ),
        "judge_system": "You turn critiques into JSON.",
        "judge_user": "colours: $colors\ncritique: $critique",
        "fused_system": "You critique and judge.",
        "fused_user": "job=$job colours: $colors",
    },
)


def make_job(i: int, *, job_id: str | None = None, colors=COLORS) -> CritiqueJob:
    images = tuple(
        ImagePart(name, f"{name}-{i}".encode(), width=336, height=336)
        for name in ("original", "clusters", "overlay")
    )
    return CritiqueJob(
        job_id=job_id or f"job{i}",
        images=images,
        colors=colors,
        variables={"job": str(i), "class_name": "seven"},
    )


def valid_json(colors) -> str:
    return json.dumps(
        {
            "output": [
                {"color": c, "verdict": "yes" if k % 2 else "no"} for k, c in enumerate(colors)
            ]
        }
    )


@dataclass
class FakeProvider:
    """Answers critic requests with a critique naming the job, judge requests with valid JSON.
    `script(kind, job, attempt)` may return an exception to raise or a text to answer."""

    name: str = "fake"
    supports_structured_output: bool = True
    latency: float = 0.0
    latency_of: dict = field(default_factory=dict)  # job -> seconds
    script: object = None
    calls: list = field(default_factory=list)  # (kind, job) per request received
    completed: list = field(default_factory=list)  # request fingerprints answered
    requests: list = field(default_factory=list)
    active: int = 0
    peak_active: int = 0
    closed: bool = False

    async def complete(self, request: ChatRequest, *, timeout: float) -> ChatResponse:
        text = "\n".join(
            p.text for m in request.messages for p in m.parts if isinstance(p, TextPart)
        )
        if "critique:" in text:
            kind = "judge"
        elif "critique and judge" in text:
            kind = "fused"
        else:
            kind = "critic"
        job = re.search(r"job=(\d+)", text).group(1)
        named = re.search(r"colours: ([^\n;]+)", text)
        colors = tuple(named.group(1).split(", ")) if named else ()
        attempt = sum(1 for c in self.calls if c == (kind, job))
        self.calls.append((kind, job))
        self.requests.append(request)
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            await asyncio.sleep(self.latency_of.get(job, self.latency))
            outcome = self.script(kind, job, attempt) if self.script else None
            if isinstance(outcome, Exception):
                raise outcome
            if outcome is None:
                outcome = f"critique of job={job}" if kind == "critic" else valid_json(colors)
            self.completed.append(fingerprint(request))
            return ChatResponse(outcome, Usage(100, 20), request.model)
        finally:
            self.active -= 1

    async def aclose(self) -> None:
        self.closed = True


def fingerprint(request: ChatRequest) -> str:
    return repr(request.messages)


def config(**overrides) -> EngineConfig:
    defaults = dict(
        critic_model="fake-model",
        prompts=PROMPTS,
        max_in_flight=8,
        retry=RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.005),
        progress=False,
    )
    return EngineConfig(**{**defaults, **overrides})


async def collect(engine: Engine, jobs) -> list:
    return [result async for result in engine.run(jobs)]


async def test_every_job_is_validated_and_messages_are_built_as_specified():
    provider = FakeProvider()
    engine = Engine(provider, None, config())
    results = await collect(engine, [make_job(i) for i in range(5)])
    assert sorted(r.job_id for r in results) == [f"job{i}" for i in range(5)]
    assert all(r.ok for r in results)
    assert results[0].verdicts == {"red": False, "blue": True, "green": False}
    assert results[0].critique.startswith("critique of job=")
    assert engine.stats.provider_calls == 10 and engine.stats.completed == 5
    assert engine.stats.usage == Usage(1000, 200)

    critic = next(r for r in provider.requests if r.response_schema is None)
    system, user = critic.messages
    assert system.role == "system" and system.parts == (TextPart("You critique clusters."),)
    assert user.parts[0].text.endswith(
        "3 clusters: red, blue, green; images original, clusters, overlay"
    )
    assert [p.name for p in user.parts[1:]] == ["original", "clusters", "overlay"]
    judge = next(r for r in provider.requests if r.response_schema is not None)
    assert all(isinstance(p, TextPart) for m in judge.messages for p in m.parts)
    assert judge.response_schema["properties"]["output"]["minItems"] == 3
    await engine.aclose()
    assert provider.closed


async def test_no_schema_is_sent_to_a_provider_without_structured_output():
    provider = FakeProvider(supports_structured_output=False)
    engine = Engine(provider, None, config())
    results = await collect(engine, [make_job(0)])
    assert results[0].ok
    assert all(r.response_schema is None for r in provider.requests)


async def test_results_stream_in_completion_order():
    provider = FakeProvider(latency=0.005, latency_of={"0": 0.3})
    engine = Engine(provider, None, config(max_in_flight=4))
    order = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    first_at = None
    async for result in engine.run(make_job(i) for i in range(6)):
        order.append(result.job_id)
        first_at = first_at if first_at is not None else loop.time() - start
    assert order[-1] == "job0" and order[0] != "job0"
    assert first_at < 0.2  # did not wait for the slow job


async def test_jobs_are_pulled_lazily_and_in_flight_stays_bounded():
    pulled = 0

    def jobs():
        nonlocal pulled
        for i in range(200):
            pulled += 1
            yield make_job(i)

    provider = FakeProvider(latency=0.001)
    engine = Engine(provider, None, config(max_in_flight=4))
    yielded = 0
    peak_held = 0
    async for _ in engine.run(jobs()):
        yielded += 1
        peak_held = max(peak_held, pulled - yielded)
        assert pulled - yielded <= 4
    assert yielded == pulled == 200
    assert peak_held >= 3  # it did run jobs concurrently
    assert provider.peak_active <= 4


async def test_async_job_iterables_and_their_errors():
    async def jobs():
        for i in range(3):
            await asyncio.sleep(0)
            yield make_job(i)
        raise RuntimeError("job source broke")

    engine = Engine(FakeProvider(), None, config())
    seen = []
    with pytest.raises(RuntimeError, match="job source broke"):
        async for result in engine.run(jobs()):
            seen.append(result)
    assert len(seen) <= 3


async def test_invalid_judge_output_is_reasked_with_the_error():
    def script(kind, job, attempt):
        if kind == "judge" and attempt == 0:
            return '{"output": [{"color": "red", "verdict": "yes"}]}'
        return None

    provider = FakeProvider(script=script)
    engine = Engine(provider, None, config())
    [result] = await collect(engine, [make_job(0)])
    assert result.ok and result.provider_calls == 3
    assert engine.stats.reasks == 1
    reask = provider.requests[-1].messages
    assert [m.role for m in reask] == ["system", "user", "assistant", "user"]
    assert "missing colours blue, green" in reask[-1].parts[0].text


async def test_judge_output_that_never_validates_fails_with_the_reason(tmp_path):
    provider = FakeProvider(script=lambda kind, job, attempt: "sure!" if kind == "judge" else None)
    cache = VerdictCache(tmp_path)
    engine = Engine(provider, None, config(max_reasks=2), cache=cache)
    [result] = await collect(engine, [make_job(0)])
    assert result.status is JobStatus.FAILED and result.verdicts is None
    assert "invalid JSON" in result.error and "after 3 answers" in result.error
    assert result.critique == "critique of job=0"
    assert Counter(kind for kind, _ in provider.calls) == {"critic": 1, "judge": 3}
    assert len(cache) == 1  # the critique; an invalid judge answer is never cached
    await engine.aclose()


async def test_retries_on_429_and_500_are_counted():
    def script(kind, job, attempt):
        if kind == "critic" and attempt == 0:
            return RateLimited("slow down", status=429, retry_after=0.01)
        if kind == "critic" and attempt == 1:
            return ServerError("oops", status=500)
        return None

    engine = Engine(FakeProvider(script=script), None, config())
    [result] = await collect(engine, [make_job(0)])
    assert result.ok and result.provider_calls == 4
    assert engine.stats.retries == 2
    assert engine.stats.retries_by_error == {"RateLimited": 1, "ServerError": 1}


async def test_exhausted_retries_and_bad_requests_fail_the_job_only():
    def script(kind, job, attempt):
        if job == "0":
            return ServerError("down", status=500)
        if job == "1":
            return BadRequest("image too large", status=400)
        return None

    provider = FakeProvider(script=script)
    engine = Engine(provider, None, config())
    results = {r.job_id: r for r in await collect(engine, [make_job(i) for i in range(3)])}
    assert results["job0"].status is JobStatus.FAILED and "critic" in results["job0"].error
    assert results["job0"].provider_calls == 4  # max_attempts
    assert results["job1"].status is JobStatus.FAILED and "image too large" in results["job1"].error
    assert results["job1"].provider_calls == 1
    assert results["job2"].ok
    assert engine.stats.failed == 2 and engine.stats.completed == 1


async def test_a_judge_that_refuses_every_request_stops_the_run_between_critic_successes():
    def script(kind, job, attempt):
        if kind == "judge":
            return BadRequest("json_schema is not supported", status=400, code="invalid_param")
        return None

    latency = {str(i): 0.001 + 0.02 * ((i * 7) % 5) / 5 for i in range(60)}  # mixed latencies
    provider = FakeProvider(script=script, latency_of=latency)
    engine = Engine(provider, None, config(max_in_flight=8))
    results = await collect(engine, [make_job(i) for i in range(60)])
    assert engine.stopped is not None and "json_schema" in engine.stopped.line()
    assert sum(kind == "critic" for kind, _ in provider.calls) < 30  # not one a job
    assert not any(r.ok for r in results)


async def test_a_cut_answer_is_asked_again_within_the_tpm_cap_and_the_run_goes_on(monkeypatch):
    monkeypatch.setattr(  # tpm counted over 0.05 s, so the test takes no minutes
        "lvlmva.engine.dispatch.RateLimiter", functools.partial(RateLimiter, window=0.05)
    )

    class Cut(FakeProvider):
        async def complete(self, request, *, timeout):
            response = await super().complete(request, timeout=timeout)
            if self.calls[-1][0] == "critic" and self.calls[-1][1] in cut:
                return dataclasses.replace(response, finish_reason="length")
            return response

    cut = {"3"}  # 3,000 tokens and the prompt: doubled, it would pass tpm=5000
    provider = Cut()
    engine = Engine(provider, None, config(max_in_flight=4, tpm=5000, max_tokens=3000))
    results = await asyncio.wait_for(collect(engine, [make_job(i) for i in range(6)]), 10)
    failed = [r for r in results if not r.ok]  # no ConfigError, and no stalled limiter
    assert [r.job_id for r in failed] == ["job3"] and "cut at the limit" in failed[0].error
    assert Counter(provider.calls)[("critic", "3")] == 1  # asked again only within tpm / 2
    cut, provider = {"0"}, Cut()
    engine = Engine(provider, None, config(max_in_flight=4, tpm=5000, max_tokens=1000))
    await asyncio.wait_for(collect(engine, [make_job(i) for i in range(3)]), 10)
    second = [r for r, c in zip(provider.requests, provider.calls, strict=True) if c[1] == "0"][1]
    assert second.max_tokens > 1000 and estimate_request_tokens(second) <= 2500


async def test_a_timed_out_request_is_retried_once_and_the_timeout_follows_the_model():
    def script(kind, job, attempt):
        return ProviderTimeout("fake: no answer in 60 s") if job == "0" else None

    class Timed(FakeProvider):
        async def complete(self, request, *, timeout):
            self.timeouts.append((request.model, timeout))
            return await super().complete(request, timeout=timeout)

    provider = Timed(script=script)
    provider.timeouts = []
    engine = Engine(provider, None, config(critic_model="gpt-5-mini", judge_model="gpt-4o"))
    results = {r.job_id: r for r in await collect(engine, [make_job(i) for i in range(2)])}
    assert not results["job0"].ok and results["job0"].provider_calls == 2  # not max_attempts 4
    assert results["job1"].ok
    assert set(provider.timeouts) == {("gpt-5-mini", 600.0), ("gpt-4o", 60.0)}
    engine = Engine(provider, None, config(request_timeout=7.0))
    await collect(engine, [make_job(1)])
    assert provider.timeouts[-1] == ("fake-model", 7.0)


async def test_a_request_with_no_answer_counts_as_possibly_billed_and_a_408_does_not():
    """A client-side timeout may still be billed: its worst case is counted apart from the
    cost; an HTTP 408 is the server's answer that it did not run the request."""
    prices = PriceTable({"fake-model": ModelPrice(1000.0, 1000.0)})

    async def run_with(error: ProviderTimeout) -> tuple[Engine, FakeProvider]:
        provider = FakeProvider(script=lambda kind, job, attempt: error)
        engine = Engine(provider, None, config(prices=prices, max_tokens=100))
        (result,) = await collect(engine, [make_job(0)])
        assert result.provider_calls == 2 and engine.stats.cost_usd == 0
        return engine, provider

    silent, provider = await run_with(ProviderTimeout("fake: no answer in 60 s"))
    worst = sum(
        silent.cost.worst_case("fake-model", estimate_request_tokens(r))
        for r in provider.requests
    )
    assert worst > 0 and silent.stats.possibly_billed_usd == pytest.approx(worst)
    assert silent.cost.committed_usd == pytest.approx(worst)
    refused, _ = await run_with(ProviderTimeout("HTTP 408", status=408))
    assert refused.stats.possibly_billed_usd == 0 and refused.cost.committed_usd == 0


async def test_budget_stops_new_requests_and_no_more_jobs_are_pulled():
    prices = PriceTable({"fake-model": ModelPrice(1000.0, 1000.0)})  # 0.001 USD per token
    provider = FakeProvider()  # 0.12 USD a call, 0.24 a job
    engine = Engine(
        provider, None, config(max_in_flight=1, prices=prices, budget_usd=3.0, max_tokens=100)
    )
    results = await collect(engine, [make_job(i) for i in range(30)])
    statuses = [r.status for r in results]
    n_ok = statuses.count(JobStatus.OK)
    assert 8 <= n_ok < 30
    assert statuses == [JobStatus.OK] * n_ok + [JobStatus.NOT_RUN]  # then nothing is pulled
    assert "budget" in results[-1].error
    assert engine.stats.not_run == 1 and engine.cost.budget_reached
    assert engine.stats.cost_usd <= 3.0
    assert engine.stats.provider_calls == sum(r.provider_calls for r in results) == 2 * n_ok


@dataclass
class Verbose(FakeProvider):
    """Critiques of `critique_tokens` output tokens, far more than the budget's prior of 500."""

    critique_tokens: int = 4000

    async def complete(self, request: ChatRequest, *, timeout: float) -> ChatResponse:
        response = await super().complete(request, timeout=timeout)
        if response.text.startswith("critique"):
            response = dataclasses.replace(response, usage=Usage(1000, self.critique_tokens))
        return response


async def test_the_budget_is_a_hard_cap_when_answers_are_far_longer_than_expected():
    prices = PriceTable({"fake-model": ModelPrice(2.5, 10.0)})  # about 0.043 USD a job
    provider = Verbose(latency=0.005)
    cfg = config(max_in_flight=64, budget_usd=0.5, prices=prices, max_tokens=8000)
    engine = Engine(provider, None, cfg)
    results = await collect(engine, [make_job(i) for i in range(200)])
    statuses = Counter(r.status for r in results)
    assert engine.cost.spent_usd <= 0.5 and engine.cost.budget_reached  # not 4 times over
    assert statuses[JobStatus.OK] >= 5 and statuses[JobStatus.FAILED] == 0
    assert engine.stats.cost_usd == pytest.approx(engine.cost.spent_usd)


@pytest.mark.parametrize("refused", ["judge", "reask"])
async def test_a_call_whose_worst_case_the_budget_cannot_hold_is_not_sent(refused):
    prices = PriceTable({"fake-model": ModelPrice(500.0, 1000.0)})  # 0.0005 / 0.001 USD a token
    long = "x" * 4000  # about 1,000 more prompt tokens in the request that follows

    def script(kind, job, attempt):
        if kind == "critic":
            return f"critique of job={job} {long}" if refused == "judge" else None
        return long if refused == "reask" else None  # an invalid Judge answer is asked again

    provider = FakeProvider(script=script)  # every answer costs 0.07 USD
    cfg = config(max_in_flight=1, budget_usd=2.0, prices=prices, max_tokens=1000)
    engine = Engine(provider, None, cfg)  # worst cases: Critic 1.8, Judge 1.1 (2.1 with long)
    [result] = await collect(engine, [make_job(0)])
    sent = [("critic", "0")] + ([("judge", "0")] if refused == "reask" else [])
    assert provider.calls == sent  # the next call could cost more than the 1.9 or 1.8 left
    assert result.status is JobStatus.NOT_RUN and "budget" in result.error
    assert engine.cost.spent_usd <= 2.0 and engine.cost.budget_reached


def test_a_budget_needs_a_price_for_every_model():
    with pytest.raises(ConfigError, match="no price for model 'fake-model'"):
        Engine(FakeProvider(), None, config(budget_usd=1.0, prices=PriceTable({})))


@pytest.mark.parametrize("with_cache", [True, False])
async def test_identical_jobs_in_flight_are_sent_once(tmp_path, with_cache):
    provider = FakeProvider(latency=0.02)
    cache = VerdictCache(tmp_path) if with_cache else None
    engine = Engine(provider, None, config(max_in_flight=16), cache=cache)
    jobs = [make_job(7, job_id=f"copy{i}") for i in range(10)]
    results = await collect(engine, jobs)
    assert all(r.ok for r in results) and len(results) == 10
    assert len(provider.calls) == 2
    assert engine.stats.provider_calls == 2 and engine.stats.deduplicated == 18
    assert sum(r.cache_hits for r in results) == 18
    await engine.aclose()


async def test_fused_mode_makes_one_structured_call_with_images():
    provider = FakeProvider()
    engine = Engine(provider, None, config(fused=True))
    results = await collect(engine, [make_job(i) for i in range(3)])
    assert all(r.ok for r in results) and all(r.critique is None for r in results)
    assert len(provider.requests) == 3
    for request in provider.requests:
        assert request.response_schema is not None
        assert sum(isinstance(p, ImagePart) for p in request.messages[1].parts) == 3


async def test_a_warm_rerun_sends_nothing_and_changed_settings_miss(tmp_path):
    first = FakeProvider()
    engine = Engine(first, None, config(), cache=VerdictCache(tmp_path))
    cold = await collect(engine, [make_job(i) for i in range(4)])
    await engine.aclose()
    second = FakeProvider()
    engine = Engine(second, None, config(), cache=VerdictCache(tmp_path))
    warm = await collect(engine, [make_job(i) for i in range(4)])
    assert second.calls == [] and engine.stats.cache_hits == 8
    assert {r.job_id: r.verdicts for r in warm} == {r.job_id: r.verdicts for r in cold}
    assert all(r.usage == Usage() and r.cost_usd == 0 for r in warm)
    await engine.aclose()
    third = FakeProvider()
    engine = Engine(third, None, config(temperature=0.5), cache=VerdictCache(tmp_path))
    await collect(engine, [make_job(0)])
    assert len(third.calls) == 2
    await engine.aclose()


async def test_cached_entries_that_do_not_decode_or_validate_are_misses(tmp_path):
    jobs = [make_job(i) for i in range(6)]
    engine = Engine(FakeProvider(), None, config(fused=True), cache=VerdictCache(tmp_path))
    cold = {r.job_id: r.verdicts for r in await collect(engine, jobs)}
    await engine.aclose()
    invalid = {"text": "sure!", "usage": [1, 2], "model": "m"}  # decodes, does not validate
    with VerdictCache(tmp_path) as cache:
        for k, key in enumerate(sorted(cache._cache.iterkeys())):
            cache._cache.set(key, ["not", "an", "entry"] if k % 2 else invalid)
    provider = FakeProvider()
    engine = Engine(provider, None, config(fused=True), cache=VerdictCache(tmp_path))
    warm = await collect(engine, jobs)
    assert {r.job_id: r.verdicts for r in warm} == cold and all(r.ok for r in warm)
    assert len(provider.calls) == 6 and engine.stats.cache_hits == 0
    await engine.aclose()
    engine = Engine(FakeProvider(), None, config(fused=True), cache=VerdictCache(tmp_path))
    await collect(engine, jobs)
    assert engine.stats.cache_hits == 6 and engine.stats.provider_calls == 0  # stored again
    await engine.aclose()


async def test_an_interrupted_run_resumes_paying_only_for_uncached_answers(tmp_path):
    n, k = 40, 12
    first = FakeProvider(latency=0.01, latency_of={str(i): 0.002 * (i % 7) for i in range(n)})
    engine = Engine(first, None, config(max_in_flight=8), cache=VerdictCache(tmp_path))
    got, enough = [], asyncio.Event()

    async def consume():
        async for result in engine.run(make_job(i) for i in range(n)):
            got.append(result)
            if len(got) == k:
                enough.set()

    consumer = asyncio.create_task(consume())
    await enough.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await engine.aclose()
    assert k <= len(got) < n and len(first.calls) < 2 * n

    cache = VerdictCache(tmp_path)
    cached = len(cache)
    assert cached == len(first.completed)  # every answer received was stored
    second = FakeProvider()
    engine = Engine(second, None, config(max_in_flight=8), cache=cache)
    results = await collect(engine, [make_job(i) for i in range(n)])
    assert len(results) == n and all(r.ok for r in results)
    assert len(second.calls) == 2 * n - cached  # exactly the uncached requests
    assert not set(second.completed) & set(first.completed)
    assert engine.stats.cache_hits == cached
    await engine.aclose()


async def test_aclose_cancels_a_run_in_progress():
    provider = FakeProvider(latency=10.0)
    engine = Engine(provider, None, config())
    consumer = asyncio.create_task(collect(engine, [make_job(i) for i in range(3)]))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(engine.aclose(), 2.0)
    with pytest.raises(RuntimeError, match="closed"):
        await asyncio.wait_for(consumer, 2.0)
    assert provider.closed


async def test_the_progress_bar_shows_cost_throughput_failures_and_cache_hits(capsys):
    engine = Engine(FakeProvider(), None, config(progress=True, budget_usd=5.0, prices=PRICES))
    await collect(engine, [make_job(i) for i in range(3)])
    lines = capsys.readouterr().err.splitlines()  # not a terminal: plain lines
    assert lines[-1].startswith("critique: 100%") and "3/3" in lines[-1]
    assert re.search(r"\$0\.\d{4}/\$5 \d+ req/min fail 0 cached 0", lines[-1]), lines[-1]
    await engine.aclose()


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="max_in_flight"):
        config(max_in_flight=0)
    with pytest.raises(ConfigError, match="max_reasks"):
        config(max_reasks=-1)


def test_estimate_is_a_dry_run_that_scales_with_jobs(tmp_path, capsys):
    from lvlmva.cli import main

    def estimate(*extra):
        args = ["estimate", "--critic-model", "gpt-4o", "--judge-model", "gpt-4o-mini", "--json",
                "--val-jobs", "0"]  # alignment jobs only (align's model check adds its own)
        assert main([*args, *extra]) == 0
        return json.loads(capsys.readouterr().out)

    ten, hundred = estimate("--jobs", "10"), estimate("--jobs", "100")
    assert hundred["prompt_tokens"] == 10 * ten["prompt_tokens"]
    assert hundred["usd"] == pytest.approx(10 * ten["usd"]) and ten["usd"] > 0
    critic, judge = ten["per_job"]
    assert judge["model"] == "gpt-4o-mini" and judge["prompt_tokens"] < critic["prompt_tokens"]
    high = estimate("--jobs", "10", "--detail", "high")["per_job"][0]
    assert high["prompt_tokens"] - critic["prompt_tokens"] == 3 * (255 - 85)  # fit: low at 336
    assert estimate("--jobs", "10", "--image-size", "1024")["usd"] > ten["usd"]
    fused = estimate("--jobs", "10", "--fused")
    assert len(fused["per_job"]) == 1 and fused["usd"] < ten["usd"]

    assert main(["estimate", "--jobs", "5", "--critic-model", "my-vllm", "--json"]) == 0
    unknown = json.loads(capsys.readouterr().out)
    assert unknown["usd"] is None and unknown["unpriced_models"] == ["my-vllm"]
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"my-vllm": {"input": 1.0, "output": 2.0}}))
    assert (
        main(["estimate", "--jobs", "5", "--critic-model", "my-vllm", "--prices", str(prices)]) == 0
    )
    assert "total cost: $" in capsys.readouterr().out
    assert main(["estimate", "--jobs", "0", "--critic-model", "gpt-4o"]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err


# -- with the real prompt templates and the simulated LVLM (in-process and over HTTP) ---------


def sim_jobs(n: int, oracle) -> list[CritiqueJob]:
    """Jobs whose cluster 0 (left half) lies on the spurious region, cluster 1 does not."""
    import numpy as np

    from lvlmva.prompts import load_spec
    from lvlmva.vision.render import render_critic_images

    spec = load_spec("decoy-digits")
    jobs = []
    for i in range(n):
        image = np.full((1, 8, 8), i / (n + 1), dtype=np.float32)
        labels = np.zeros((8, 8), dtype=np.int64)
        labels[:, 4:] = 1
        labels[0, 0] = -1
        rendered = render_critic_images(image, labels, size=32)
        mask = np.zeros((8, 8), dtype=bool)
        mask[:, :4] = True
        oracle.add(rendered.original, mask)
        jobs.append(
            CritiqueJob(
                job_id=f"sim{i}",
                images=tuple(
                    ImagePart(name, getattr(rendered, name), width=32, height=32)
                    for name in ("original", "clusters", "overlay")
                ),
                colors=rendered.colors,
                variables=spec.variables(spec.class_names[i % len(spec.class_names)]),
            )
        )
    return jobs


def sim_config(**overrides) -> EngineConfig:
    from lvlmva.prompts import load_prompt_set

    return config(prompts=load_prompt_set("decoy-digits"), **overrides)


@pytest.mark.parametrize("fused", [False, True])
async def test_real_prompts_with_the_simulated_lvlm(fused):
    from lvlmva.simulation import DictOracle, SimulatedLVLM
    from lvlmva.vision.render import PALETTE

    oracle = DictOracle()
    jobs = sim_jobs(4, oracle)
    sim = SimulatedLVLM(oracle=oracle, palette=PALETTE, verdict_accuracy=1.0, seed=1)
    engine = Engine(sim, None, sim_config(fused=fused))
    results = await collect(engine, jobs)
    first, second = jobs[0].colors
    for result in results:
        assert result.ok, result.error
        assert result.verdicts == {first: False, second: True}
    assert engine.stats.provider_calls == (4 if fused else 8)
    await engine.aclose()


async def test_simulated_bad_json_is_reasked_and_never_guessed():
    from lvlmva.simulation import DictOracle, SimulatedLVLM
    from lvlmva.vision.render import PALETTE

    oracle = DictOracle()
    jobs = sim_jobs(12, oracle)
    sim = SimulatedLVLM(
        oracle=oracle,
        palette=PALETTE,
        verdict_accuracy=1.0,
        rate_malformed_json=0.3,
        rate_wrong_colors=0.3,
        seed=3,
    )
    engine = Engine(sim, None, sim_config(max_reasks=1))
    results = await collect(engine, jobs)
    assert engine.stats.reasks > 0
    assert {r.status for r in results} <= {JobStatus.OK, JobStatus.FAILED}
    for result in results:
        if result.ok:
            assert result.verdicts == {jobs[0].colors[0]: False, jobs[0].colors[1]: True}
        else:
            assert result.verdicts is None and "still invalid" in result.error
    assert engine.stats.provider_calls == 12 + 12 + engine.stats.reasks


async def test_the_http_path_with_retries_and_no_double_billing(tmp_path):
    from lvlmva.engine.providers.openai_compat import OpenAICompatibleProvider
    from lvlmva.simulation import DictOracle, SimulatedLVLM, start_sim_server
    from lvlmva.vision.render import PALETTE

    oracle = DictOracle()
    jobs = sim_jobs(10, oracle)
    sim = SimulatedLVLM(
        oracle=oracle,
        palette=PALETTE,
        verdict_accuracy=1.0,
        rate_429=0.15,
        rate_500=0.15,
        retry_after_s=0.01,
        seed=5,
    )
    server = await start_sim_server(sim, host="127.0.0.1", port=0)
    provider = OpenAICompatibleProvider(base_url=server.base_url, api_key="sim")
    # 30 % of answers fail, in an order that depends on arrival: with 4 attempts some request
    # failed for good in about 1 run of 15; with 8 the chance is 0.3**8 per request.
    retry = RetryPolicy(max_attempts=8, initial_backoff=0.001, max_backoff=0.005)
    engine = Engine(provider, None, sim_config(retry=retry), cache=VerdictCache(tmp_path))
    try:
        results = await collect(engine, jobs)
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        assert engine.stats.retries > 0
        s = engine.stats  # identical critiques give identical judge requests: sent once
        sent_once = 20 - s.cache_hits - s.deduplicated
        assert s.provider_calls == sim.stats.requests == sent_once + s.retries
        assert sim.stats.by_status["200"] == sent_once
        assert sim.stats.duplicate_answers == 0
    finally:
        await engine.aclose()
        await server.close()
