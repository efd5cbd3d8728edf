"""The Critic & Judge orchestrator: pulls jobs lazily, runs a bounded number at once and
yields validated results as they complete.

Per job: Critic call (rendered text + the job's images) -> Judge call (text only, structured
output with the verdict schema when the provider supports it) -> `parse_verdicts`. An answer cut
at the token limit is asked once more with twice the budget; one withheld by the content filter,
empty, or cut again fails the job with the reason; such answers are never cached nor judged.
Invalid Judge output is re-asked with the validation error, at most `max_reasks` times, then the
job is FAILED with the reason; a verdict is never guessed. `fused=True` makes one
structured-output call with the images instead. Both answers are cached (the Judge's only once
it validated), and identical requests in flight are sent once. Requests are built by
`lvlmva.engine.requests`, keyed by `lvlmva.engine.keys` and sent by a `Dispatcher`
(`lvlmva.engine.dispatch`; by default `OnlineDispatcher`: rate limits, retries, timeout, cost).

With a budget, each job holds its expected cost before it starts and each call its worst case
before it is sent, so spend never passes the budget (`lvlmva.engine.budget`). A
run the endpoint refuses (a rejected key, an unknown model, no quota, a burst of the same client
error) trips the `Breaker`: nothing more is sent, no job is pulled, and `stopped` says why; the
run also stops pulling jobs once the budget is reached.

    engine = Engine(critic, judge, EngineConfig(critic_model="gpt-4o", prompts=prompt_set))
    async for result in engine.run(jobs):
        ...
    await engine.aclose()
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from lvlmva.cache.verdict_cache import VerdictCache
from lvlmva.engine.answers import (
    AnswerSource,
    answer_entry,
    answer_from_entry,
    unusable,
    unusable_reason,
)
from lvlmva.engine.breaker import Breaker, StopReason
from lvlmva.engine.budget import JobBudget, JobHold
from lvlmva.engine.confidence import no_probabilities, preferred, stated_no_probabilities
from lvlmva.engine.config import EngineConfig
from lvlmva.engine.cost import CostMeter
from lvlmva.engine.dispatch import Call, Dispatcher
from lvlmva.engine.errors import NotSent, ProviderError
from lvlmva.engine.idle import IdleWatch
from lvlmva.engine.keys import ProviderIdentity, request_key, schema_sha256
from lvlmva.engine.progress import CritiqueProgress
from lvlmva.engine.requests import (
    STEPS,
    critic_request,
    fused_request,
    judge_request,
    larger_budget,
    reask_request,
    step_template_sha256,
    with_budget,
)
from lvlmva.engine.stats import EngineStats, Ledger
from lvlmva.engine.types import (
    ChatRequest,
    ChatResponse,
    CritiqueJob,
    JobResult,
    JobStatus,
    Provider,
    Usage,
)
from lvlmva.engine.validation import VerdictValidationError, parse_verdicts
from lvlmva.errors import ConfigError

__all__ = ["Engine", "EngineConfig", "EngineStats"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_Verdicts = tuple[ChatResponse, dict[str, bool]]  # a validated answer and its verdicts
_Checked = tuple[dict[str, bool], dict[str, float] | None]  # verdicts and their P("no")


class _Failed(Exception):
    """The job ends FAILED with this reason."""


class _NotRun(Exception):
    """The job ends NOT_RUN (the budget was reached before it could be sent)."""


class Engine:
    """Runs Critic & Judge jobs against `critic` (and `judge`, default: the critic provider),
    through `dispatcher` (default: `config.online_dispatcher()`).

    `aclose()` closes the dispatcher, the providers and the cache: the engine owns them once
    given."""

    def __init__(
        self,
        critic: Provider,
        judge: Provider | None,
        config: EngineConfig,
        cache: VerdictCache | None = None,
        *,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.critic = critic
        self.judge = judge if judge is not None else critic
        self.config = config
        self.cache = cache
        self.dispatcher = dispatcher if dispatcher is not None else config.online_dispatcher()
        if self.dispatcher.max_in_flight < 1:
            raise ConfigError(
                f"the dispatcher's max_in_flight must be at least 1 "
                f"(got {self.dispatcher.max_in_flight})"
            )
        meter = self.dispatcher.meter
        if meter.budget_usd is not None:
            for model in {config.critic_model, config.judge_model or config.critic_model}:
                meter.prices.require(model)  # ConfigError now, not mid-run
        self.stats = EngineStats()
        self.breaker = Breaker(config.breaker_burst)
        self._sampling = config.sampling
        self._judge_sampling = config.judge_sampling
        self._identity = {id(p): ProviderIdentity.of(p) for p in (self.critic, self.judge)}
        self._template = {step: step_template_sha256(config.prompts, step) for step in STEPS}
        self._answers = AnswerSource(cache)
        self._budget = JobBudget(
            meter,
            judge_model=config.judge_model or config.critic_model,
            share=meter.prices.share(self.dispatcher.batch_priced),
        )
        self._idle = IdleWatch(self.dispatcher.on_idle)
        self._tasks: set[asyncio.Future[Any]] = set()
        self._queues: set[asyncio.Queue[Any]] = set()
        self._closed = False

    @property
    def cost(self) -> CostMeter:
        """The dispatcher's cost meter: spend so far, budget, prices."""
        return self.dispatcher.meter

    @property
    def stopped(self) -> StopReason | None:
        """Why the breaker stopped the run (None while it runs)."""
        return self.breaker.tripped

    # -- the run loop ---------------------------------------------------------------------------

    async def run(
        self,
        jobs: Iterable[CritiqueJob] | AsyncIterable[CritiqueJob],
        *,
        total: int | None = None,
    ) -> AsyncIterator[JobResult]:
        """Yield one `JobResult` per job, in completion order. Jobs are pulled only when one of
        the dispatcher's `max_in_flight` slots is free (a slot frees when its result is
        yielded), so an endless or huge job stream is never materialised. Stopping the
        iteration (break, cancel) cancels the jobs in flight; answers already received stay
        cached. `total` (the number of jobs, for the progress bar) defaults to `len(jobs)`
        where it has one."""
        if self._closed:
            raise RuntimeError("this Engine is closed")
        loop = asyncio.get_running_loop()
        started = loop.time()
        queue: asyncio.Queue[asyncio.Future[Any] | None] = asyncio.Queue()  # None: closed
        slots = asyncio.Semaphore(self.dispatcher.max_in_flight)
        tasks: set[asyncio.Future[Any]] = set()
        pulled = 0

        def finished(task: asyncio.Future[Any]) -> None:
            tasks.discard(task)
            self._tasks.discard(task)
            if not task.cancelled():
                queue.put_nowait(task)

        def job_finished(task: asyncio.Future[Any]) -> None:
            self._idle.job_finished()  # here, not in the job: it may be cancelled unstarted
            finished(task)

        def start(job: CritiqueJob) -> None:
            nonlocal pulled
            pulled += 1
            self.stats.submitted += 1
            self._idle.job_started()
            task = loop.create_task(self._process(job))
            tasks.add(task)
            self._tasks.add(task)
            task.add_done_callback(job_finished)

        feeder = loop.create_task(self._feed(jobs, slots, start))
        self._tasks.add(feeder)
        feeder.add_done_callback(finished)
        bar = CritiqueProgress(
            self.stats,
            total=_length(jobs) if total is None else total,
            enabled=self.config.progress,
            budget_usd=self.cost.budget_usd,
        )
        yielded = 0
        feeding = True
        self._queues.add(queue)
        try:
            while feeding or yielded < pulled:
                done = await queue.get()
                if done is None:
                    raise RuntimeError("the Engine was closed while this run was in progress")
                if done is feeder:
                    done.result()  # re-raise an error of the job iterator
                    feeding = False
                    continue
                result: JobResult = done.result()
                yielded += 1
                self._count(result)
                bar.update()
                slots.release()
                yield result
        finally:
            self._queues.discard(queue)
            pending = [feeder, *tasks]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self.stats.elapsed += loop.time() - started
            bar.close()

    async def _feed(
        self,
        jobs: Iterable[CritiqueJob] | AsyncIterable[CritiqueJob],
        slots: asyncio.Semaphore,
        start: Callable[[CritiqueJob], None],
    ) -> None:
        """Pull a job whenever a slot is free and `start` it."""
        plain = None if isinstance(jobs, AsyncIterable) else iter(jobs)
        iterator = aiter(jobs) if isinstance(jobs, AsyncIterable) else None
        while True:
            await slots.acquire()
            if self.breaker.tripped is not None or self.cost.budget_reached:
                return  # nothing more will be sent: pull no more jobs
            self._idle.pull_started()
            try:
                job = next(plain) if plain is not None else await anext(iterator)
            except (StopIteration, StopAsyncIteration):
                return
            finally:
                self._idle.pull_ended()
            start(job)

    def _count(self, result: JobResult) -> None:
        s = self.stats
        if result.status is JobStatus.OK:
            s.completed += 1
        elif result.status is JobStatus.FAILED:
            s.failed += 1
        else:
            s.not_run += 1

    # -- one job ----------------------------------------------------------------------------------

    async def _process(self, job: CritiqueJob) -> JobResult:
        """critic -> judge -> validate (-> re-ask), or fused -> validate (-> re-ask)."""
        held = JobHold(Ledger(self.stats.ledger))
        critique: str | None = None
        status, verdicts, error, p_no = JobStatus.OK, None, None, None
        try:
            if not job.colors or len(set(job.colors)) != len(job.colors):
                raise _Failed(f"job has no or repeated colours: {list(job.colors)}")
            c = self.config
            if c.fused:
                request = fused_request(
                    c.prompts, job, model=c.critic_model, sampling=self._sampling,
                    structured=self.critic.supports_structured_output,
                )  # fmt: skip
                await self._hold(job, held, "fused", request)
                verdicts, p_no = await self._validated("fused", self.critic, request, job, held)
            else:
                sampling = self._sampling
                request = critic_request(c.prompts, job, model=c.critic_model, sampling=sampling)
                await self._hold(job, held, "critic", request)
                answer = await self._critique(held, request)
                critique = answer.text
                verdicts, p_no = await self._judge(job, critique, held)
                stated = stated_no_probabilities(critique, answer.logprobs, job.colors)
                p_no = preferred(verdicts, p_no, stated)
        except _Failed as exc:
            status, error = JobStatus.FAILED, str(exc)
        except _NotRun as exc:
            status, error = JobStatus.NOT_RUN, str(exc)
        finally:
            self._budget.finished(held)
        return JobResult(
            job_id=job.job_id,
            status=status,
            verdicts=verdicts,
            no_probability=p_no,
            critique=critique,
            error=error,
            tally=held.ledger.tally,
        )

    async def _hold(self, job: CritiqueJob, held: JobHold, step: str, request: ChatRequest) -> None:
        """Hold the job's expected cost before anything else (`lvlmva.engine.budget`)."""
        if self._budget.active:
            key = f"budget\x00{job.job_id}\x00{id(held)}"
            await self._for_budget(step, key, self._budget.hold(held, step, request))

    async def _for_budget(self, step: str, key: str, wait: Awaitable[T]) -> T:
        """Wait for budget; the wait counts as waiting to send (a batching dispatcher may hold
        what would free it)."""
        self._idle.want(key)
        self._idle.send_started(key)
        try:
            return await wait
        except NotSent as exc:
            raise _NotRun(f"{step}: {exc}") from None
        finally:
            self._idle.send_ended(key)
            self._idle.unwant(key)

    async def _critique(self, held: JobHold, request: ChatRequest) -> ChatResponse:
        key = self._key("critic", self.critic, request)
        call = Call("critic", self.critic, request, key, held.ledger)
        self._budget.step_started(held, "critic")
        try:
            answer = await self._answer(
                key, lambda: self._complete(call, held), held.ledger,
                encode=answer_entry, decode=answer_from_entry, tag=self._tag(self.critic, request),
            )  # fmt: skip
        finally:
            self._budget.step_ended(held, "critic")
        self.stats.answered(request.model, answer.model)
        return answer

    async def _judge(self, job: CritiqueJob, critique: str, held: JobHold) -> _Checked:
        c, provider = self.config, self.judge
        request = judge_request(
            c.prompts,
            job,
            critique,
            model=c.judge_model or c.critic_model,
            sampling=self._judge_sampling,
            structured=provider.supports_structured_output,
        )
        return await self._validated("judge", provider, request, job, held)

    async def _validated(
        self,
        step: str,
        provider: Provider,
        request: ChatRequest,
        job: CritiqueJob,
        held: JobHold,
    ) -> _Checked:
        """Ask until the answer validates (re-asking with the error), then cache the valid
        answer under the first request's key; invalid answers are never cached, and a cached
        answer that does not validate is a miss. Gives the verdicts and, where the answer has
        token log-probabilities, P("no") per colour (`lvlmva.engine.confidence`)."""
        colors, ledger = job.colors, held.ledger
        key = self._key(step, provider, request, schema_sha256(colors))

        async def ask() -> _Verdicts:
            current, total = request, Usage()
            for attempt in range(self.config.max_reasks + 1):
                response = await self._complete(
                    Call(step, provider, current, key, ledger, attempt), held
                )
                total = total + response.usage
                try:
                    verdicts = parse_verdicts(response.text, colors)
                except VerdictValidationError as exc:
                    if attempt == self.config.max_reasks:
                        raise _Failed(
                            f"{step}: output still invalid after {attempt + 1} answers: {exc}"
                        ) from None
                    ledger.reasked()
                    current = reask_request(request, response.text, exc, colors)
                    continue
                return dataclasses.replace(response, usage=total), verdicts
            raise AssertionError("unreachable")

        def decode(entry: Any) -> _Verdicts:
            answer = answer_from_entry(entry)
            return answer, parse_verdicts(answer.text, colors)

        self._budget.step_started(held, step)
        try:
            answer, verdicts = await self._answer(
                key, ask, ledger, encode=lambda found: answer_entry(found[0]), decode=decode,
                tag=self._tag(provider, request),
            )  # fmt: skip
        finally:
            self._budget.step_ended(held, step)
        self.stats.answered(request.model, answer.model)
        p_no = no_probabilities(answer.text, answer.logprobs, verdicts)
        return dict(verdicts), p_no  # a copy: identical jobs in flight share the parsed answer

    async def _complete(self, call: Call, held: JobHold) -> ChatResponse:
        """The usable answer to `call`: one cut at the token limit is asked once more with a
        larger budget; a cut, filtered or empty answer fails the job (and is never cached)."""
        response = await self._send(call, held)
        problem = unusable(response)
        if problem is None:
            return response
        larger = larger_budget(call.request, self.config.tpm) if problem == "length" else None
        if larger is None:
            raise _Failed(f"{call.step}: {unusable_reason(problem, response, call.request)}")
        held.ledger.budget_retried()
        retry = dataclasses.replace(
            call, request=with_budget(call.request, larger), larger_budget=True
        )
        second = await self._send(retry, held)
        problem = unusable(second)
        if problem is not None:
            raise _Failed(f"{call.step}: {unusable_reason(problem, second, retry.request)}")
        return dataclasses.replace(second, usage=response.usage + second.usage)

    # -- plumbing -------------------------------------------------------------------------------

    def _key(
        self,
        step: str,
        provider: Provider,
        request: ChatRequest,
        schema_sha: str | None = None,
    ) -> str:
        identity = self._identity[id(provider)]
        return request_key(step, identity, request, self._template[step], schema_sha)

    def _tag(self, provider: Provider, request: ChatRequest) -> str:
        """The label of a cached answer: the model, marked when a simulation gave it."""
        simulated = self._identity[id(provider)].simulated
        return f"simulated:{request.model}" if simulated else request.model

    async def _answer(
        self,
        key: str,
        compute: Callable[[], Awaitable[T]],
        ledger: Ledger,
        *,
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
        tag: str | None = None,
    ) -> T:
        self._idle.want(key)
        try:
            return await self._answers.get(
                key, compute, encode=encode, decode=decode, ledger=ledger, tag=tag
            )
        finally:
            self._idle.unwant(key)

    async def _send(self, call: Call, held: JobHold) -> ChatResponse:
        """Send `call`; a tripped breaker sends nothing."""
        if self.breaker.tripped is not None:
            raise _NotRun(f"{call.step}: not sent, the run was stopped")
        reservation = None  # its worst case, held on the budget while it is out
        if self._budget.active:
            wait = self._budget.reserve(call.request, list_price=call.attempt > 0)
            reservation = await self._for_budget(call.step, f"cap\x00{id(call)}", wait)
        self._idle.send_started(call.key)
        try:
            response = await self.dispatcher.send(call)
        except ProviderError as exc:
            self._failed(exc, (call.step, call.request.model))
            raise _Failed(f"{call.step}: {exc}") from None
        except NotSent as exc:
            raise _NotRun(f"{call.step}: {exc}") from None
        finally:
            self._idle.send_ended(call.key)
            self.cost.release(reservation)
        self.breaker.success((call.step, call.request.model))
        return response

    def _failed(self, error: ProviderError, lane: tuple[str, str]) -> None:
        reason = self.breaker.failure(error, lane)
        if reason is None:
            return
        log.info("stopping the run: %s", reason.line())
        halt = getattr(self.dispatcher, "halt", None)
        if halt is not None:
            halt()  # calls waiting in the dispatcher are not sent either

    async def aclose(self) -> None:
        """Cancel what is still running, then close the dispatcher, providers and cache."""
        if self._closed:
            return
        self._closed = True
        for queue in self._queues:
            queue.put_nowait(None)
        pending = list(self._tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.dispatcher.aclose()
        closed: set[int] = set()
        for provider in (self.critic, self.judge):
            if id(provider) not in closed:
                closed.add(id(provider))
                await provider.aclose()
        await self._answers.aclose()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _length(jobs: object) -> int | None:
    try:
        return len(jobs)  # type: ignore[arg-type]
    except TypeError:
        return None
