"""The budget: jobs hold their expected cost, wait while others may give budget back, and the run
stops only when nothing is held and the next job cannot fit; and the run-level breaker."""

from __future__ import annotations

import asyncio

import pytest

from lvlmva.engine.breaker import Breaker
from lvlmva.engine.cost import CostMeter, ModelPrice, PriceTable
from lvlmva.engine.errors import (
    AuthenticationFailed,
    BadRequest,
    BudgetReached,
    QuotaExceeded,
    ServerError,
)
from lvlmva.engine.stats import Ledger
from lvlmva.engine.types import Usage


def meter(budget: float) -> CostMeter:
    return CostMeter(PriceTable({"m": ModelPrice(1e6, 1e6)}), budget)  # 1 USD per token


async def test_a_job_that_does_not_fit_waits_for_budget_held_by_others():
    m = meter(10.0)
    first, second = Ledger(), Ledger()
    held = await m.hold(6.0, first)
    waiting = asyncio.ensure_future(m.hold(6.0, second))
    await asyncio.sleep(0)
    assert not waiting.done()  # 6 + 6 > 10, and the first job may give some back
    first.spent(Usage(2, 0), m.add("m", Usage(2, 0)))  # it cost 2 of its 6
    m.release_hold(held)
    hold = await asyncio.wait_for(waiting, 1)
    assert hold.outstanding == 6.0 and m.remaining_usd == pytest.approx(2.0)
    second.spent(Usage(3, 0), m.add("m", Usage(3, 0)))
    assert hold.outstanding == pytest.approx(3.0)  # reconciled as answers arrive
    m.release_hold(hold)
    assert m.spent_usd == pytest.approx(5.0) and not m.budget_reached


async def test_the_budget_is_reached_only_when_nothing_held_can_come_back():
    m = meter(10.0)
    ledger = Ledger()
    held = await m.hold(8.0, ledger)
    queued = [asyncio.ensure_future(m.hold(4.0, Ledger())) for _ in range(3)]
    await asyncio.sleep(0)
    ledger.spent(Usage(8, 0), m.add("m", Usage(8, 0)))  # it cost all it held
    m.release_hold(held)
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(o, BudgetReached) for o in outcomes)  # 8 + 4 > 10: none fits
    assert m.budget_reached
    with pytest.raises(BudgetReached, match=r"budget of \$10 is reached"):
        await m.hold(0.5, Ledger())  # it stays reached


async def test_without_a_budget_holds_are_free():
    m = CostMeter(PriceTable({"m": ModelPrice(1, 1)}))
    hold = await m.hold(1e9, Ledger())
    assert hold.outstanding == 0 and m.remaining_usd is None


def test_fatal_errors_trip_the_breaker_at_once():
    breaker = Breaker(burst=8)
    assert breaker.failure(ServerError("down", status=500)) is None  # after retries: transient
    reason = breaker.failure(
        AuthenticationFailed("openai (gpt-4o): HTTP 401: bad key", status=401,
                             code="invalid_api_key")
    )  # fmt: skip
    assert reason is breaker.tripped and reason.fatal
    assert reason.line() == "openai (gpt-4o): HTTP 401: bad key [invalid_api_key]"
    assert Breaker().failure(QuotaExceeded("no credit", status=429)).status == 429


def test_a_burst_of_the_same_client_error_trips_it_and_a_success_resets_the_count():
    breaker = Breaker(burst=3)
    same = BadRequest("HTTP 400: Unsupported parameter", status=400, code="unsupported_parameter")
    other = BadRequest("HTTP 400: image too large", status=400, code="invalid_image")
    for error in (same, same, other, same, same):
        assert breaker.failure(error) is None
    breaker.success()
    assert breaker.failure(same) is None and breaker.failure(same) is None
    reason = breaker.failure(same)
    assert reason is not None and not reason.fatal and "3 answers in a row" in reason.line()


def test_successes_in_another_lane_do_not_reset_the_count():
    breaker = Breaker(burst=3)
    refused = BadRequest("HTTP 400: json_schema not supported", status=400, code="invalid_param")
    judge, critic = ("judge", "m"), ("critic", "m")
    assert breaker.failure(refused, judge) is None
    breaker.success(critic)  # the Critic keeps answering between the Judge's refusals ...
    assert breaker.failure(refused, judge) is None
    breaker.success(critic)
    reason = breaker.failure(refused, judge)  # ... and the Judge's burst still trips the run
    assert reason is not None and "3 answers in a row" in reason.line()


async def test_a_call_waits_for_the_worst_case_of_calls_in_flight_and_is_refused_once_none_are():
    m = meter(10.0)
    first = await m.reserve_call("m", 6)  # its worst case: 6 tokens, 6 USD
    waiting = asyncio.ensure_future(m.reserve_call("m", 6))
    await asyncio.sleep(0)
    assert not waiting.done()  # 6 + 6 > 10, and the first call may cost less
    m.add("m", Usage(2, 0))  # it cost 2 of its 6
    m.release(first)
    second = await asyncio.wait_for(waiting, 1)
    assert second.usd == 6.0 and m.remaining_usd == pytest.approx(2.0)
    m.add("m", Usage(5, 0))
    third = asyncio.ensure_future(m.reserve_call("m", 4))  # 7 + 6 + 4 > 10: it waits
    await asyncio.sleep(0)
    m.release(second)
    with pytest.raises(BudgetReached, match="may cost up to"):
        await asyncio.wait_for(third, 1)  # 7 + 4 > 10 with nothing in flight
    assert m.budget_reached
    assert (await m.reserve_call("m", 3)).usd == 3.0  # a running job's call that fits still goes
