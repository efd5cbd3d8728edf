"""The dispatcher seam: a deferred dispatcher that holds every call until the engine says it
has nothing more to offer (as a Batch API one would), then answers them all at once."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from lvlmva.cache import VerdictCache
from lvlmva.engine.cost import CostMeter, ModelPrice, PriceTable
from lvlmva.engine.dispatch import Call, Dispatcher, OnlineDispatcher
from lvlmva.engine.engine import Engine, EngineConfig
from lvlmva.engine.errors import BudgetReached, ServerError
from lvlmva.engine.types import ChatResponse, CritiqueJob, ImagePart, JobStatus, TextPart, Usage
from lvlmva.prompts import PromptSet

COLORS = ("red", "blue", "green")


PROMPTS = PromptSet.from_texts(
    "test",
    {
        "critic_system": "You critique clusters.",
        "critic_user": "job=$job colours: $colors",
        "judge_system": "You turn critiques into JSON.",
        "judge_user": "colours: $colors\ncritique: $critique",
        "fused_system": "You critique and judge.",
        "fused_user": "job=$job colours: $colors",
    },
)


class NeverCalled:
    """The providers: the dispatcher answers, so no request may reach them directly."""

    name = "batch-fake"
    supports_structured_output = True

    async def complete(self, request, *, timeout):
        raise AssertionError("the engine called a provider behind its dispatcher's back")

    async def aclose(self) -> None:
        pass


def job(i: int, *, job_id: str | None = None) -> CritiqueJob:
    images = tuple(ImagePart(n, f"{n}-{i}".encode()) for n in ("original", "clusters", "overlay"))
    return CritiqueJob(job_id or f"job{i}", images, COLORS, {"job": str(i)})


def verdicts_of(i: int) -> dict[str, bool]:
    return {c: (i + k) % 2 == 0 for k, c in enumerate(COLORS)}


def text_of(call: Call) -> str:
    return "\n".join(
        p.text for m in call.request.messages for p in m.parts if isinstance(p, TextPart)
    )


class DeferredDispatcher:
    """Holds every call; answers them all when `on_idle` comes. `script(call)` may return an
    exception to raise or a text to answer instead of the default answer."""

    def __init__(self, *, max_in_flight: int = 10_000, script=None) -> None:
        self.max_in_flight = max_in_flight
        self.meter = CostMeter(PriceTable({"m": ModelPrice(1.0, 2.0)}))
        self.batch_priced = True
        self.held: list[tuple[Call, asyncio.Future[ChatResponse]]] = []
        self.batches: list[list[Call]] = []
        self.script = script
        self.closed = False

    async def send(self, call: Call) -> ChatResponse:
        future = asyncio.get_running_loop().create_future()
        self.held.append((call, future))
        return await future

    def on_idle(self) -> None:
        batch, self.held = self.held, []
        assert batch, "on_idle without a call offered"
        self.batches.append([call for call, _ in batch])
        for call, future in batch:
            if future.done():  # cancelled by the engine
                continue
            call.ledger.called()
            outcome = self.script(call) if self.script else None
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
                continue
            usage = Usage(100, 10)
            call.ledger.spent(usage, self.meter.add(call.request.model, usage))
            future.set_result(ChatResponse(outcome or self.answer(call), usage, "m"))

    @staticmethod
    def answer(call: Call) -> str:
        text = text_of(call)
        if call.step == "critic":
            return "critique of job " + re.search(r"job=(\d+)", text).group(1)
        i = int(re.search(r"critique of job (\d+)", text).group(1))
        output = [{"color": c, "verdict": "yes" if v else "no"} for c, v in verdicts_of(i).items()]
        return json.dumps({"output": output})

    async def aclose(self) -> None:
        self.closed = True


def config(**overrides) -> EngineConfig:
    defaults = {"critic_model": "m", "prompts": PROMPTS, "progress": False}
    return EngineConfig(**{**defaults, **overrides})


async def run(engine: Engine, jobs) -> dict:
    async def collect() -> dict:
        return {r.job_id: r async for r in engine.run(jobs)}

    try:  # a stalled hand-over (no on_idle when one is due) fails instead of hanging
        return await asyncio.wait_for(collect(), timeout=10)
    finally:
        await engine.aclose()


def test_the_deferred_dispatcher_fits_the_protocol():
    assert isinstance(DeferredDispatcher(), Dispatcher)
    assert isinstance(OnlineDispatcher(), Dispatcher)


@pytest.mark.parametrize("with_cache", [False, True])
async def test_every_job_completes_when_answers_come_in_batches(tmp_path, with_cache):
    n = 30
    dispatcher = DeferredDispatcher()
    cache = VerdictCache(tmp_path) if with_cache else None
    engine = Engine(NeverCalled(), None, config(), cache, dispatcher=dispatcher)
    results = await run(engine, [job(i) for i in range(n)])
    assert dispatcher.closed
    assert [[c.step for c in batch] for batch in dispatcher.batches] == [
        ["critic"] * n,
        ["judge"] * n,
    ]  # all Critic calls were offered before the first on_idle, then all Judge calls
    for i in range(n):
        result = results[f"job{i}"]
        assert result.ok, result.error
        assert result.critique == f"critique of job {i}"
        assert result.verdicts == verdicts_of(i)
        assert result.provider_calls == 2 and result.usage == Usage(200, 20)
    ids = [c.custom_id for batch in dispatcher.batches for c in batch]
    assert len(set(ids)) == 2 * n
    assert engine.stats.provider_calls == 2 * n and engine.stats.completed == n
    assert engine.stats.cost_usd == pytest.approx(engine.cost.spent_usd)

    if with_cache:  # a rerun is answered from the cache: nothing is offered
        again = DeferredDispatcher()
        engine = Engine(NeverCalled(), None, config(), VerdictCache(tmp_path), dispatcher=again)
        warm = await run(engine, [job(i) for i in range(n)])
        assert again.batches == [] and engine.stats.cache_hits == 2 * n
        assert {k: r.verdicts for k, r in warm.items()} == {
            k: r.verdicts for k, r in results.items()
        }


async def test_reasks_go_out_in_the_next_batch_under_a_new_custom_id():
    def script(call):
        if call.step == "judge" and call.attempt == 0 and "critique of job 1" in text_of(call):
            return '{"output": []}'
        return None

    dispatcher = DeferredDispatcher(script=script)
    engine = Engine(NeverCalled(), None, config(), dispatcher=dispatcher)
    results = await run(engine, [job(i) for i in range(4)])
    assert all(r.ok for r in results.values())
    steps = [[(c.step, c.attempt) for c in batch] for batch in dispatcher.batches]
    assert steps == [[("critic", 0)] * 4, [("judge", 0)] * 4, [("judge", 1)]]
    [reask] = dispatcher.batches[2]
    [first] = [c for c in dispatcher.batches[1] if c.key == reask.key]
    assert reask.custom_id != first.custom_id
    assert "missing colours red, blue, green" in text_of(reask)
    assert engine.stats.reasks == 1 and results["job1"].provider_calls == 3


async def test_identical_jobs_wait_on_one_call_without_stalling_the_batch():
    dispatcher = DeferredDispatcher()
    engine = Engine(NeverCalled(), None, config(), dispatcher=dispatcher)
    jobs = [job(7, job_id=f"copy{k}") for k in range(5)] + [job(8)]
    results = await run(engine, jobs)
    assert all(r.ok and r.verdicts == verdicts_of(7) for k, r in results.items() if k != "job8")
    assert [len(batch) for batch in dispatcher.batches] == [2, 2]
    assert engine.stats.deduplicated == 8 and engine.stats.provider_calls == 4


async def test_the_dispatcher_sets_how_many_jobs_are_held():
    dispatcher = DeferredDispatcher(max_in_flight=4)
    engine = Engine(NeverCalled(), None, config(max_in_flight=1), dispatcher=dispatcher)
    results = await run(engine, [job(i) for i in range(10)])
    assert len(results) == 10 and all(r.ok for r in results.values())
    assert max(len(batch) for batch in dispatcher.batches) == 4


async def test_no_idle_while_an_async_job_source_is_still_producing():
    async def jobs():
        for i in range(6):
            await asyncio.sleep(0.002)
            yield job(i)

    dispatcher = DeferredDispatcher()
    engine = Engine(NeverCalled(), None, config(), dispatcher=dispatcher)
    results = await run(engine, jobs())
    assert len(results) == 6 and all(r.ok for r in results.values())
    assert [len(batch) for batch in dispatcher.batches] == [6, 6]


async def test_failed_and_unsent_calls_end_their_jobs_only():
    def script(call):
        if "job=1 " in text_of(call):
            return ServerError("the batch line failed", status=500)
        if "job=2 " in text_of(call):
            return BudgetReached("not sent, the budget of $1 is reached")
        return None

    dispatcher = DeferredDispatcher(script=script)
    engine = Engine(NeverCalled(), None, config(), dispatcher=dispatcher)
    results = await run(engine, [job(i) for i in range(4)])
    assert results["job1"].status is JobStatus.FAILED
    assert results["job1"].error == "critic: the batch line failed"
    assert results["job2"].status is JobStatus.NOT_RUN and "budget" in results["job2"].error
    assert results["job0"].ok and results["job3"].ok
    assert (engine.stats.failed, engine.stats.not_run, engine.stats.completed) == (1, 1, 2)


async def test_a_stopped_run_leaves_the_engine_ready_for_the_next():
    def script(call):
        if "job=0 " in text_of(call):
            return ServerError("down", status=500)
        return None

    dispatcher = DeferredDispatcher(script=script)
    engine = Engine(NeverCalled(), None, config(), dispatcher=dispatcher)
    jobs = [job(i) for i in range(5)] + [job(3, job_id=f"copy{k}") for k in range(3)]
    async for first in engine.run(jobs):
        assert first.job_id == "job0"  # the others wait on Judge calls (some on another's) ...
        break  # ... and are cancelled there
    results = await run(engine, [job(i) for i in range(5, 9)])
    assert sorted(results) == [f"job{i}" for i in range(5, 9)]
    assert all(r.ok for r in results.values())
    assert engine.stats.submitted == 12 and engine.stats.failed == 1


async def test_the_idle_watch_forgets_a_waiter_that_leaves_while_the_call_is_out():
    from lvlmva.engine.idle import IdleWatch

    idle = []
    watch = IdleWatch(lambda: idle.append(True))
    watch.job_started()
    watch.job_started()
    watch.want("k")
    watch.send_started("k")  # the leader's call is out
    watch.want("k")  # an identical job waits on it ...
    watch.unwant("k")  # ... and is cancelled
    watch.job_finished()
    await asyncio.sleep(0)
    assert idle == [True]  # the leader alone is left, waiting on its call
    watch.send_ended("k")
    watch.unwant("k")
    watch.job_finished()
    await asyncio.sleep(0)
    assert idle == [True]  # nothing new was offered: no second on_idle
