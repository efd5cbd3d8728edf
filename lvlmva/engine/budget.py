"""A budget that caps a run without trapping it: each job holds what it is expected to cost,
and each call what it may cost at most.

Before a job starts, the engine holds on the dispatcher's `CostMeter` the expected cost of the
whole job: its Critic and its Judge together (or its fused call), so that jobs are admitted only
as far as the budget should carry them through. The cap itself is per call (`reserve`): every
call, re-asks and retries with a larger budget included, is sent only when its worst case (its
prompt estimate and `max_tokens`, at the model's higher per-token price) fits the budget less
what was spent and what the calls in flight may still cost; it waits while they may give some
back, and once none can, the call is not sent and the budget is reached. The
expectation of a step is the mean cost of that step over the jobs that paid for it so far;
until one has, a prior from the request itself (its estimated prompt tokens and a typical
answer length, at the model's price). The hold is reconciled with what the job really spends
as its answers arrive and released when the job ends (`lvlmva.engine.cost.CostMeter` for the
admission rule): a job answered from the cache gives it back unspent. Holding before the
lookups (not at the first paid call) keeps a job that waits for budget out of the answers other
jobs share, so no holder can wait on a job that waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lvlmva.engine.cost import (
    CostMeter,
    Hold,
    Reservation,
    estimate_prompt_tokens,
    estimate_request_tokens,
)
from lvlmva.engine.model_params import rules_for
from lvlmva.engine.stats import Ledger
from lvlmva.engine.types import ChatRequest, Usage

__all__ = ["JobBudget", "JobHold"]

# Answer lengths assumed until a step has been paid for once (tokens; reasoning models think
# first, and the Judge reads the critique, so its prompt grows by about the Critic's answer).
PRIOR_ANSWER = {"critic": 500, "judge": 120, "fused": 150}
PRIOR_REASONING = 1000
JUDGE_PROMPT_OVERHEAD = 600


@dataclass
class _Mean:
    total: float = 0.0
    count: int = 0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1

    @property
    def value(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass
class JobHold:
    """One job's standing with the budget: its ledger and its hold once taken."""

    ledger: Ledger
    hold: Hold | None = None
    steps: dict[str, tuple[float, int]] = field(default_factory=dict)  # at each step's start


class JobBudget:
    """Holds the expected cost of each job on `meter` (a no-op without a budget).
    `judge_model` prices the Judge before the first one was paid for; `share` is the share of
    the list price the dispatcher's calls pay (the batch share for batch lines)."""

    def __init__(self, meter: CostMeter, *, judge_model: str, share: float = 1.0) -> None:
        self.meter = meter
        self.judge_model = judge_model
        self.share = share
        self._means: dict[str, _Mean] = {}
        self._completion: dict[str, _Mean] = {}

    @property
    def active(self) -> bool:
        return self.meter.budget_usd is not None

    async def hold(self, job: JobHold, step: str, request: ChatRequest) -> None:
        """Hold the expected cost of a job starting with `step` (a Critic: its Judge too;
        waits, or raises `BudgetReached`)."""
        if not self.active or job.hold is not None:
            return

        def expected() -> float:
            usd = self.expected(step, request)
            return usd + self.expected("judge", None) if step == "critic" else usd

        job.hold = await self.meter.hold(expected, job.ledger)

    async def reserve(self, request: ChatRequest, *, list_price: bool = False) -> Reservation:
        """Hold the worst case of sending `request` (at the dispatcher's share of the list price,
        or at the list price: a re-ask may go out synchronously); waits, or raises
        `BudgetReached` (`CostMeter.reserve_call`). Release it once the call returned."""
        share = 1.0 if list_price else self.share
        tokens = estimate_request_tokens(request)
        return await self.meter.reserve_call(request.model, tokens, share=share)

    def step_started(self, job: JobHold, step: str) -> None:
        if self.active:
            job.steps[step] = (job.ledger.cost_usd, job.ledger.completion_tokens)

    def step_ended(self, job: JobHold, step: str) -> None:
        """A step of `job` ended: when it paid for calls, learn what such a step costs."""
        if not self.active or step not in job.steps:
            return
        cost0, completion0 = job.steps.pop(step)
        cost = job.ledger.cost_usd - cost0
        if cost > 0:
            self._means.setdefault(step, _Mean()).add(cost)
            tokens = job.ledger.completion_tokens - completion0
            self._completion.setdefault(step, _Mean()).add(tokens)

    def finished(self, job: JobHold) -> None:
        self.meter.release_hold(job.hold)
        job.hold = None

    def expected(self, step: str, request: ChatRequest | None) -> float:
        """The expected cost of `step` (USD): the mean of the paid ones, else the prior."""
        mean = self._means.get(step)
        if mean is not None and mean.value is not None:
            return mean.value
        return self._prior(step, request)

    def _prior(self, step: str, request: ChatRequest | None) -> float:
        if step == "judge" and request is None:
            critique = self._completion.get("critic")
            critique_tokens = (critique.value if critique and critique.value else None) or (
                PRIOR_ANSWER["critic"]
            )
            model = self.judge_model
            prompt, budget = JUDGE_PROMPT_OVERHEAD + int(critique_tokens), None
        else:
            assert request is not None
            model = request.model
            prompt, budget = estimate_prompt_tokens(request), request.max_tokens
        answer = PRIOR_ANSWER.get(step, PRIOR_ANSWER["critic"])
        if rules_for(model).reasoning:
            answer += PRIOR_REASONING
        if budget is not None:
            answer = min(answer, budget)
        return self.meter.prices.require(model).cost(Usage(prompt, answer)) * self.share
