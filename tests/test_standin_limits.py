"""The engine's limits against the strict OpenAI stand-in: the breaker's lanes, the larger output
budget under a tpm limit, the budget as a hard cap, timeouts, and fine-tuned model names."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections import Counter

import pytest
from endpoint_support import KEY, decoy_jobs, run_all, serve_endpoint

from lvlmva.cache import VerdictCache
from lvlmva.engine.cost import PriceTable
from lvlmva.engine.engine import Engine, EngineConfig
from lvlmva.engine.ratelimit import RateLimiter
from lvlmva.engine.types import ChatRequest, JobStatus, Usage
from lvlmva.pipeline.records import CritiqueCounts
from lvlmva.prompts import load_prompt_set
from lvlmva.simulation.answerers import Answerer, FixedAnswerer
from lvlmva.simulation.clock import FakeClock
from lvlmva.simulation.openai_chat import ChatSettings
from lvlmva.simulation.openai_faults import Faults
from lvlmva.simulation.openai_ledger import Ledger
from lvlmva.simulation.openai_ratelimit import RateLimits
from lvlmva.simulation.openai_standin import StandInConfig
from lvlmva.simulation.openai_usage import ReasoningLengths

BURST, IN_FLIGHT = 8, 4


def ledger_usd(ledger: Ledger, prices: PriceTable) -> float:
    """What the stand-in's successful answers cost at `prices` (its own token counts)."""
    return sum(
        prices.require(model).cost(
            Usage(t.prompt_tokens, t.completion_tokens, cached_tokens=t.cached_tokens)
        )
        for model, t in ledger.by_model("sync").items()
    )


# -- 1. the breaker, per lane -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "judge_param", "needles"),
    [
        (Faults(missing_models=frozenset({"gpt-5-nano"})), None, ("HTTP 404", "does not exist")),
        (Faults(), "max_tokens", ("max_tokens", f"{BURST} answers in a row")),
    ],
    ids=["judge-model-not-served", "judge-refuses-a-parameter"],
)
async def test_a_judge_that_cannot_answer_stops_the_run_while_the_critic_answers(
    faults: Faults, judge_param: str | None, needles: tuple[str, ...]
) -> None:
    """The Critic's successes between the Judge's refusals do not hide them: a 404 stops the
    run at once, the same 400 after `BURST` of them (a few jobs in flight, so the two lanes
    interleave)."""
    jobs, oracle = decoy_jobs(100)
    async with serve_endpoint(oracle, faults) as endpoint:
        judge = endpoint.provider(max_tokens_param=judge_param) if judge_param else None
        config = EngineConfig(
            critic_model="gpt-5-mini", judge_model="gpt-5-nano", max_in_flight=IN_FLIGHT,
            prompts=load_prompt_set("decoy-digits"), breaker_burst=BURST, progress=False,
        )  # fmt: skip
        engine = Engine(endpoint.provider(), judge, config)
        results = await run_all(engine, jobs)
        critics = endpoint.ledger.by_model("sync")["gpt-5-mini"].requests
    assert engine.stopped is not None and all(n in engine.stopped.line() for n in needles)
    assert engine.stopped.fatal is (judge_param is None)
    limit = IN_FLIGHT if judge_param is None else BURST + IN_FLIGHT
    assert critics <= limit and len(results) <= limit, (critics, len(results))
    assert not any(r.ok for r in results)
    assert all(needles[0] in r.error or "not sent" in r.error for r in results if r.error)


# -- 2. a larger output budget under a tpm limit ---------------------------------------------


class MinuteEachAnswer:
    """The stand-in's answerer, with a minute passing on its fake clock while each answer is
    written: its per-minute window is full again for the next request (the run goes one
    request at a time), while one request above the limit is still refused."""

    def __init__(self, inner: Answerer, clock: FakeClock) -> None:
        self.inner, self.clock = inner, clock

    def answer(self, request: ChatRequest) -> str:
        self.clock.advance(60)
        return self.inner.answer(request)


TPM, MAX_TOKENS = 3200, 600  # a cut Critic may grow to 1,600 less its prompt, not to 1,200


async def test_a_cut_answer_grows_only_to_half_the_tpm_and_is_never_cached(
    tmp_path, monkeypatch
) -> None:
    """The stand-in enforces `TPM` (one request counted above it is a 429 "Request too
    large"); the engine paces at the same figure, over a 20 ms window so the test takes no
    minutes. Answers cut at `MAX_TOKENS` are asked once more, within half of `TPM`."""
    monkeypatch.setattr(
        "lvlmva.engine.dispatch.RateLimiter", functools.partial(RateLimiter, window=0.02)
    )
    jobs, oracle = decoy_jobs(10)
    limits = StandInConfig(api_keys=(KEY,), chat=ChatSettings(limits=RateLimits(tpm=TPM)))
    async with serve_endpoint(oracle, Faults(truncate_share=0.4), config=limits) as endpoint:
        chat = endpoint.standin.engine
        chat.answerer = MinuteEachAnswer(chat.answerer, endpoint.standin.clock)
        counted: list[int] = []  # what the stand-in counts against TPM, per request
        admit = chat.limiter.admit
        monkeypatch.setattr(
            chat.limiter,
            "admit",
            lambda model, tokens: counted.append(tokens) or admit(model, tokens),
        )
        engine = endpoint.engine(
            cache=VerdictCache(tmp_path), critic_model="gpt-4.1-mini",
            judge_model="gpt-4.1-mini", tpm=TPM, max_tokens=MAX_TOKENS, max_in_flight=1,
        )  # fmt: skip
        results = await asyncio.wait_for(run_all(engine, jobs), 5)  # not aborted, not stalled
        calls = endpoint.ledger.calls
    assert len(results) == 10 and sum(r.ok for r in results) >= 5
    assert {c.status for c in calls} == {200}  # no 429, "Request too large" least of all
    assert engine.stats.tally.budget_retries >= 3
    assert max(counted) <= TPM // 2
    cut_budgets = {c.completion_tokens for c in calls if "length" in c.finish_reasons}
    assert MAX_TOKENS in cut_budgets and max(cut_budgets) > MAX_TOKENS  # some cut twice
    failed = [r for r in results if not r.ok]
    assert failed and all("cut at the limit" in r.error for r in failed)
    with VerdictCache(tmp_path) as cache:
        entries = [cache._cache.get(k) for k in cache._cache.iterkeys()]
    assert entries and all(e["finish_reason"] == "stop" for e in entries)


# -- 3. the budget as a hard cap -------------------------------------------------------------

LONG_CRITIQUE = "The red cells at the top left carry the class, I would say. " * 100  # 1,500 tok


def long_winded(request: ChatRequest) -> str:
    """A Critic that writes more than its budget (cut, then asked with a larger one) and a
    Judge whose first answer is prose (re-asked) and whose second is valid."""
    if request.response_schema is None:  # tagged with its request, so no two Judges are alike
        return hashlib.sha256(repr(request.messages).encode()).hexdigest()[:8] + LONG_CRITIQUE
    if not any(m.role == "assistant" for m in request.messages):
        return LONG_CRITIQUE[:2000]
    items = request.response_schema["properties"]["output"]["items"]
    colors = items["properties"]["color"]["enum"]
    return json.dumps({"output": [{"color": c, "verdict": "no"} for c in colors]})


async def test_long_answers_never_take_the_stand_ins_bill_past_the_budget() -> None:
    """Every call's worst case is held before it is sent, so what the stand-in bills (its own
    token counts at our prices) stays within the budget, Critic, larger budget, Judge and
    re-ask alike, even with many jobs admitted on a prior that the long answers exceed."""
    in_flight = 16
    jobs, oracle = decoy_jobs(30)
    prices = PriceTable()
    async with serve_endpoint(oracle) as endpoint:
        endpoint.standin.answerer = FixedAnswerer(long_winded)
        endpoint.standin.reset()
        models = {"critic_model": "gpt-4.1-mini", "judge_model": "gpt-4.1-nano"}
        full = endpoint.engine(max_in_flight=in_flight, **models)
        assert sum(r.ok for r in await run_all(full, jobs)) == 30
        tally = full.stats.tally
        assert tally.budget_retries == 30 and tally.reasks == 30
        cost = ledger_usd(endpoint.ledger, prices)
        budget = cost * 0.3
        endpoint.standin.reset()
        engine = endpoint.engine(budget_usd=budget, max_in_flight=in_flight, **models)
        results = await run_all(engine, jobs)
        billed = ledger_usd(endpoint.ledger, prices)
    assert billed <= budget and engine.stats.cost_usd <= budget
    assert engine.cost.budget_reached and sum(r.ok for r in results) >= 1
    assert {r.status for r in results} <= {JobStatus.OK, JobStatus.NOT_RUN}


# -- 4. timeouts -----------------------------------------------------------------------------


async def test_a_request_that_hangs_reaches_the_stand_in_at_most_twice() -> None:
    """A timed-out request may still be billed: it is sent once more, never a third time."""
    jobs, oracle = decoy_jobs(6)
    faults = Faults(rate_timeout=1.0, hang_s=1.0)  # the timeout leaves slack on a busy machine
    async with serve_endpoint(oracle, faults) as endpoint:
        engine = endpoint.engine(request_timeout=0.25, max_in_flight=6)
        results = await asyncio.wait_for(run_all(engine, jobs), 5)
        sent = Counter(c.body_sha256 for c in endpoint.ledger.calls)
    assert len(sent) == 6 and set(sent.values()) == {2}  # each Critic twice, no Judge
    assert all(r.status is JobStatus.FAILED for r in results)
    assert all(r.error.startswith("critic: ") and "no answer in 0.25 s" in r.error
               for r in results)  # fmt: skip
    assert engine.stopped is None  # a timeout says nothing about the next request


async def test_timed_out_requests_count_against_the_budget() -> None:
    """A request with no answer may still have been billed: its worst case is counted apart
    (`possibly_billed_usd`, not in the cost) and against the budget, so hanging requests
    cannot be sent again and again under a budget that believes nothing was spent."""
    jobs, oracle = decoy_jobs(6)
    faults = Faults(rate_timeout=1.0, hang_s=1.0)  # the timeout leaves slack on a busy machine
    async with serve_endpoint(oracle, faults) as endpoint:
        free = endpoint.engine(request_timeout=0.25, max_in_flight=6)
        await asyncio.wait_for(run_all(free, jobs), 5)
        assert len(endpoint.ledger.calls) == 12 and free.stats.cost_usd == 0
        per_send = free.stats.possibly_billed_usd / 12
        assert per_send > 0 and free.cost.possibly_billed_usd == free.stats.possibly_billed_usd
        endpoint.standin.reset()
        budget = 3.5 * per_send
        capped = endpoint.engine(request_timeout=0.25, max_in_flight=6, budget_usd=budget)
        results = await asyncio.wait_for(run_all(capped, jobs), 5)
        sent = len(endpoint.ledger.calls)
    assert sent == 3  # three worst cases fit; uncounted, all 12 would go out
    assert capped.cost.committed_usd <= budget and capped.cost.budget_reached
    assert JobStatus.NOT_RUN in {r.status for r in results}
    (note,) = CritiqueCounts.from_engine(capped.stats).notes()  # the run summary's line
    billed = capped.stats.possibly_billed_usd
    assert billed > 2.5 * per_send  # the three sends' worst cases
    assert note.startswith(f"timed-out requests may have been billed up to ${billed:.4f} ")


# -- 5. fine-tuned model names ---------------------------------------------------------------


async def test_fine_tuned_critic_and_judge_are_sent_as_their_bases_take_them() -> None:
    """A fine-tuned o4-mini gets no temperature and `max_completion_tokens` (the o-series
    refuses both others with a 400); a fine-tuned gpt-4.1-nano Judge is a chat model."""
    critic = "ft:o4-mini-2025-04-16:my-org:critic:abc123"
    judge = "ft:gpt-4.1-nano-2025-04-14:my-org::j9"
    jobs, oracle = decoy_jobs(4)
    async with serve_endpoint(oracle) as endpoint:
        engine = endpoint.engine(critic_model=critic, judge_model=judge)
        results = await run_all(engine, jobs)
        statuses = {c.status for c in endpoint.ledger.calls}
        totals = endpoint.ledger.by_model("sync")
    assert all(r.ok for r in results), [r.error for r in results]
    assert statuses == {200}
    assert totals[critic].requests == 4 and totals[judge].requests == 4
    assert totals[critic].reasoning_tokens == 4 * ReasoningLengths().tokens("medium")
    assert totals[judge].reasoning_tokens == 0
