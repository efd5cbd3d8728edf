"""`BatchDispatcher` against the strict OpenAI stand-in on its fake clock: the whole lifecycle
(Critic shard, then the Judge shard), one cache for batch and synchronous answers, shard
limits, per-line errors, expiry, cancel, resume and the budget."""

from __future__ import annotations

import asyncio

import pytest
from batch_support import batch_engine, engine_config, job, run_jobs, ticking, verdicts_of
from standin_support import KEY, serve

from lvlmva.cache import VerdictCache
from lvlmva.engine.batch.options import BatchOptions
from lvlmva.engine.batch.store import BatchStore, Step
from lvlmva.engine.engine import Engine
from lvlmva.engine.providers.openai_compat import OpenAICompatibleProvider
from lvlmva.engine.types import JobStatus
from lvlmva.simulation.answerers import FixedAnswerer
from lvlmva.simulation.batch_api import BatchTiming
from lvlmva.simulation.openai_standin import StandInConfig


def timing(**values) -> StandInConfig:
    return StandInConfig(batch=BatchTiming(**values))


def verdicts(results: dict) -> dict:
    return {k: r.verdicts for k, r in results.items()}


def shards(cache_dir) -> list:
    with BatchStore(cache_dir / "batches") as store:
        return store.shards()


async def test_critic_then_judge_shards_complete_every_job(tmp_path):
    from batch_support import answer

    config = timing(validation_s=30, lines_per_s=2, finalizing_s=30)
    async with serve(FixedAnswerer(answer), config) as s, ticking(s, 15):
        engine = batch_engine(s, tmp_path)
        results = await run_jobs(engine, [job(i) for i in range(6)])
        stats, spent = engine.stats, engine.cost.spent_usd
    assert all(r.ok for r in results.values()), [r.error for r in results.values()]
    assert verdicts(results) == {f"job{i}": verdicts_of(i) for i in range(6)}
    made = shards(tmp_path)
    assert [(m.stages, m.model, m.lines, m.step, m.status) for m in made] == [
        ("critic", "gpt-4o", 6, Step.INGESTED, "completed"),
        ("judge", "gpt-4o-mini", 6, Step.INGESTED, "completed"),
    ]
    ledger = s.standin.ledger
    assert ledger.sync_calls == 0 and len(ledger.batch_lines) == 12
    assert ledger.batch_lines_submitted_more_than_once() == {}
    assert ledger.answered_more_than_once() == {}
    assert stats.provider_calls == 12 and stats.completed == 6
    tokens = ledger.by_model("batch")
    list_price = (
        tokens["gpt-4o"].prompt_tokens * 2.5
        + tokens["gpt-4o"].completion_tokens * 10
        + tokens["gpt-4o-mini"].prompt_tokens * 0.15
        + tokens["gpt-4o-mini"].completion_tokens * 0.6
    ) / 1e6
    assert spent == pytest.approx(list_price / 2) and stats.cost_usd == pytest.approx(spent)


async def _sync_engine(s, cache_dir):
    provider = OpenAICompatibleProvider(base_url=s.server.base_url, api_key=KEY)
    return Engine(provider, None, engine_config(), VerdictCache(cache_dir))


async def test_batch_and_synchronous_runs_share_answers_and_bodies(tmp_path):
    from batch_support import answer

    jobs = [job(i) for i in range(4)]
    async with serve(FixedAnswerer(answer)) as s:
        await run_jobs(batch_engine(s, tmp_path / "a"), jobs)
        batch_bodies = {line.body_sha256 for line in s.standin.ledger.batch_lines}
        sync = await _sync_engine(s, tmp_path / "a")
        again = await run_jobs(sync, jobs)  # a synchronous rerun after the batch pays nothing
        assert s.standin.ledger.sync_calls == 0 and sync.stats.cache_hits == 8
        assert all(r.ok for r in again.values())
    async with serve(FixedAnswerer(answer)) as s:
        await run_jobs(await _sync_engine(s, tmp_path / "b"), jobs)
        sync_bodies = {c.body_sha256 for c in s.standin.ledger.calls}
        engine = batch_engine(s, tmp_path / "b")
        await run_jobs(engine, jobs)  # ... and a batch rerun after a synchronous run
        assert s.standin.ledger.batch_lines == [] and engine.stats.cache_hits == 8
    assert sync_bodies == batch_bodies and len(sync_bodies) == 8  # the same request bodies


async def test_shards_keep_to_the_line_limit_and_refuse_a_line_too_large(tmp_path):
    from batch_support import answer

    async with serve(FixedAnswerer(answer)) as s:
        engine = batch_engine(s, tmp_path, BatchOptions(poll_s=0.01, max_lines=4))
        results = await run_jobs(engine, [job(i) for i in range(10)])
        assert all(r.ok for r in results.values())
        made = shards(tmp_path)
        assert [m.lines for m in made if m.stages == "critic"] == [4, 4, 2]
        judges = [m.lines for m in made if m.stages == "judge"]  # as the Critic shards end
        assert sum(judges) == 10 and max(judges) <= 4
        assert s.standin.ledger.batch_lines_submitted_more_than_once() == {}
        small = batch_engine(s, tmp_path / "small", BatchOptions(poll_s=0.01, max_bytes=500))
        [result] = (await run_jobs(small, [job(0)])).values()
    assert result.status is JobStatus.FAILED and "more than a batch input file" in result.error


async def test_a_refused_line_fails_its_job_only(tmp_path):
    from batch_support import answer

    jobs = [job(i) for i in range(3)]
    huge = job(1)
    jobs[1] = type(huge)(huge.job_id, huge.images, huge.colors, {"job": "1 " + "x" * 600_000})
    async with serve(FixedAnswerer(answer)) as s:
        results = await run_jobs(batch_engine(s, tmp_path), jobs)
    assert results["job0"].ok and results["job2"].ok
    failed = results["job1"]
    assert failed.status is JobStatus.FAILED and "HTTP 400" in failed.error
    assert "context" in failed.error  # the API's reason, as a synchronous call would get it


async def test_expired_lines_go_out_again_in_a_new_shard(tmp_path):
    from batch_support import answer

    async with serve(FixedAnswerer(answer), timing(lines_per_s=1 / 3600)) as s, ticking(s, 1800):
        results = await run_jobs(batch_engine(s, tmp_path), [job(i) for i in range(26)])
    assert all(r.ok for r in results.values())
    made = shards(tmp_path)
    assert [(m.stages, m.lines, m.status) for m in made[:2]] == [
        ("critic", 26, "expired"),  # 24 answered in the 24-h window, 2 expired ...
        ("critic", 2, "completed"),  # ... and were sent again
    ]
    ledger = s.standin.ledger
    assert ledger.answered_more_than_once() == {}
    assert sorted(ledger.batch_lines_submitted_more_than_once().values()) == [2, 2]


async def test_a_cancelled_batch_keeps_its_answers_and_resends_nothing(tmp_path):
    from batch_support import answer

    async with serve(FixedAnswerer(answer), timing(lines_per_s=1)) as s:
        engine = batch_engine(s, tmp_path)
        running = engine.run([job(i) for i in range(5)])
        first = asyncio.ensure_future(anext(running))
        while not s.standin.batches._batches:
            await asyncio.sleep(0.01)
        [batch_id] = s.standin.batches._batches
        s.standin.advance(2.5)  # two lines done
        await s.client.batches.cancel(batch_id)
        async with ticking(s, 5):  # the Judge's batch of the two answers runs on
            results = [await first] + [r async for r in running]
        await engine.aclose()
    assert sorted(r.ok for r in results) == [False, False, False, True, True]
    assert all("cancelled" in r.error for r in results if not r.ok)
    assert len(s.standin.ledger.batch_lines) == 5 + 2  # two Judge lines, nothing resent
    with BatchStore(tmp_path / "batches") as store:
        critic = store.shards()[0]
        outcomes = sorted(line.outcome for line in store.lines_of(critic.id))
    assert outcomes == ["answered", "answered", "retry", "retry", "retry"]


async def test_a_new_run_resumes_the_batches_of_one_that_stopped(tmp_path):
    from batch_support import answer

    jobs = [job(i) for i in range(4)]
    async with serve(FixedAnswerer(answer), timing(validation_s=60)) as s:
        engine = batch_engine(s, tmp_path)
        run = asyncio.ensure_future(run_jobs(engine, jobs))
        while not (made := shards(tmp_path)) or made[0].step is not Step.POLLED:
            await asyncio.sleep(0.01)
        run.cancel()  # the process stops while its batch validates
        await asyncio.gather(run, return_exceptions=True)
        async with ticking(s, 30):
            results = await run_jobs(batch_engine(s, tmp_path), jobs)
    assert all(r.ok for r in results.values())
    assert [m.stages for m in shards(tmp_path)] == ["critic", "judge"]
    assert s.standin.ledger.batch_lines_submitted_more_than_once() == {}
    assert s.standin.ledger.answered_more_than_once() == {}


async def test_a_create_whose_answer_was_lost_is_found_not_repeated(tmp_path, monkeypatch):
    from batch_support import answer

    from lvlmva.engine.batch.client import BatchClient
    from lvlmva.engine.errors import ConnectionFailed

    create = BatchClient.create
    lost = []

    async def create_and_lose_the_answer(self, file_id, shard_id):
        info = await create(self, file_id, shard_id)
        if not lost:
            lost.append(info.id)
            raise ConnectionFailed("connection reset while reading the answer")
        return info

    monkeypatch.setattr(BatchClient, "create", create_and_lose_the_answer)
    async with serve(FixedAnswerer(answer)) as s:
        results = await run_jobs(batch_engine(s, tmp_path), [job(i) for i in range(3)])
    assert all(r.ok for r in results.values())
    assert shards(tmp_path)[0].batch_id == lost[0]
    assert len(s.standin.batches._batches) == 2  # the Critic's (found again) and the Judge's


async def test_the_budget_holds_and_books_batch_lines_at_the_batch_price(tmp_path):
    from batch_support import answer

    from lvlmva.engine.cost import PriceTable
    from lvlmva.engine.types import Usage

    async with serve(FixedAnswerer(answer)) as s:
        engine = batch_engine(s, tmp_path / "a", budget_usd=1e9, max_tokens=64)
        results = await run_jobs(engine, [job(i) for i in range(40)])
        assert all(r.ok for r in results.values())
        spent = engine.cost.spent_usd
        # every line is booked at half the list price of its model, for the tokens it used
        listed = sum(
            PriceTable().cost(model, Usage(t.prompt_tokens, t.completion_tokens, t.cached_tokens))
            for model, t in s.standin.ledger.by_model("batch").items()
        )
        assert spent == pytest.approx(listed / 2, rel=1e-6)
        budget = spent / 4  # 10 of the next 40 jobs; each call's worst case is held too
        engine = batch_engine(s, tmp_path / "b", budget_usd=budget, max_tokens=64)
        results = await run_jobs(engine, [job(i) for i in range(40, 80)])
    statuses = [r.status for r in results.values()]
    assert set(statuses) <= {JobStatus.OK, JobStatus.NOT_RUN}
    assert 4 <= statuses.count(JobStatus.OK) <= 10  # at the list price, 1 or 2
    assert engine.cost.spent_usd <= budget


@pytest.mark.parametrize("reasks", ["sync", "batch"])
async def test_invalid_judge_answers_are_asked_again(tmp_path, reasks):
    from batch_support import answer

    def flaky(request):
        text = answer(request)
        first_judge = text.startswith("{") and len(request.messages) == 2
        return '{"output": []}' if first_judge and "job 1" in str(request.messages) else text

    async with serve(FixedAnswerer(flaky)) as s:
        engine = batch_engine(s, tmp_path, BatchOptions(poll_s=0.01, reasks=reasks))
        results = await run_jobs(engine, [job(i) for i in range(4)])
        assert all(r.ok for r in results.values())
        ledger = s.standin.ledger
        stages = [m.stages for m in shards(tmp_path)]
        if reasks == "sync":
            assert ledger.sync_calls == 1 and stages == ["critic", "judge"]
        else:
            assert ledger.sync_calls == 0 and stages == ["critic", "judge", "judge"]
        assert engine.stats.reasks == 1


async def test_fused_mode_is_one_stage(tmp_path):
    from batch_support import answer

    async with serve(FixedAnswerer(answer)) as s:
        engine = batch_engine(s, tmp_path, fused=True)
        results = await run_jobs(engine, [job(i) for i in range(5)])
    assert verdicts(results) == {f"job{i}": verdicts_of(i) for i in range(5)}
    assert [m.stages for m in shards(tmp_path)] == ["fused"]


async def test_a_batch_that_fails_validation_fails_its_jobs_with_the_reason(tmp_path):
    from batch_support import answer

    async with serve(FixedAnswerer(answer)) as s:
        engine = batch_engine(s, tmp_path, critic_model="gpt-7")
        results = await run_jobs(engine, [job(i) for i in range(2)])
    assert all(r.status is JobStatus.FAILED for r in results.values())
    assert all("model_not_found" in r.error and "gpt-7" in r.error for r in results.values())


async def test_a_rejected_key_fails_the_jobs_and_leaves_the_shard_to_resume(tmp_path):
    from batch_support import answer

    from lvlmva.simulation.openai_faults import Faults

    async with serve(FixedAnswerer(answer), faults=Faults(revoke_key_after=0)) as s:
        results = await run_jobs(batch_engine(s, tmp_path), [job(i) for i in range(2)])
    assert all(r.status is JobStatus.FAILED and "HTTP 401" in r.error for r in results.values())
    assert [m.step for m in shards(tmp_path)] == [Step.WRITTEN]


async def test_a_second_run_on_the_same_manifest_is_refused(tmp_path):
    from lvlmva.errors import ConfigError

    async with serve() as s:
        first = batch_engine(s, tmp_path)
        with pytest.raises(ConfigError, match="another lvlmva batch run"):
            batch_engine(s, tmp_path)
        await first.aclose()
        await batch_engine(s, tmp_path).aclose()  # free again once the first closed


async def test_a_run_that_stopped_after_the_download_ingests_without_downloading_again(
    tmp_path, monkeypatch
):
    from batch_support import answer

    from lvlmva.engine.batch import dispatcher as module
    from lvlmva.engine.batch.client import BatchClient

    downloads = []
    download = BatchClient.download

    async def counted(self, file_id):
        downloads.append(file_id)
        return await download(self, file_id)

    async def crash(*args):
        raise asyncio.CancelledError  # the process dies between download and ingest

    monkeypatch.setattr(BatchClient, "download", counted)
    jobs = [job(i) for i in range(3)]
    async with serve(FixedAnswerer(answer)) as s:
        with monkeypatch.context() as patch:
            patch.setattr(module, "ingest_shard", crash)
            run = asyncio.ensure_future(run_jobs(batch_engine(s, tmp_path), jobs))
            while not (made := shards(tmp_path)) or made[0].step is not Step.DOWNLOADED:
                await asyncio.sleep(0.01)
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        assert len(downloads) == 1
        results = await run_jobs(batch_engine(s, tmp_path), jobs)
    assert all(r.ok for r in results.values())
    assert len(downloads) == 2  # the Judge's output only: the Critic's was read from disk
    assert s.standin.ledger.batch_lines_submitted_more_than_once() == {}
    with BatchStore(tmp_path / "batches") as store:
        assert not store.path(store.shards()[0].id, "input").exists()  # answered: removed


def test_the_batch_api_mode_without_the_sdk_says_how_to_install_it(monkeypatch):
    import sys

    from lvlmva.engine.batch.client import BatchClient
    from lvlmva.errors import ConfigError

    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ConfigError, match=r"pip install 'lvlm-va\[batch\]'"):
        BatchClient("http://127.0.0.1:1/v1", "sk-x")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch"], "--batch needs --critic openai"),
        (["--critic", "openai", "--base-url", "http://127.0.0.1:1/v1", "--critic-model",
          "gpt-4o", "--batch", "--no-cache"], "drop --no-cache"),
        (["--critic", "openai", "--base-url", "http://127.0.0.1:1/v1", "--critic-model",
          "gpt-4o", "--batch", "--batch-jobs", "0"], "--batch-jobs must be at least 1"),
        (["--critic", "openai", "--base-url", "http://127.0.0.1:1/v1", "--critic-model",
          "gpt-4o", "--batch", "--batch-queue-tokens", "0"],
         "--batch-queue-tokens must be at least 1"),
    ],
)  # fmt: skip
def test_batch_flags_are_checked_first(tmp_path, capsys, flags, message):
    from lvlmva.cli import main

    code = main(["align", "--dataset", "decoy-digits", "--out", str(tmp_path), *flags])
    assert code == 2 and message in capsys.readouterr().err


async def test_a_critic_without_request_bodies_cannot_batch(tmp_path):
    from lvlmva.critics import CriticSettings, get_critic, open_session
    from lvlmva.errors import ConfigError

    settings = CriticSettings("simulated", batch=True, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="batch mode needs an OpenAI-compatible critic"):
        await open_session(get_critic("simulated"), settings, "decoy-digits")
