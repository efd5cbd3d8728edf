"""The Critic & Judge orchestrator: pulls jobs lazily, runs a bounded number at once and
yields validated results as they complete.

Per job: Critic call (rendered text + the job's images) -> Judge call (text only, structured
output with the verdict schema when the provider supports it) -> `parse_verdicts`. Invalid Judge
output is re-asked with the validation error, at most `max_reasks` times, then the job is
FAILED with the reason; a verdict is never guessed. `fused=True` makes one structured-output call
with the images instead. Both answers are cached (the Judge's only once it validated), and
identical requests in flight are sent once. Requests are built by `lvlmva.engine.requests`,
keyed by `lvlmva.engine.keys` and sent by a `Dispatcher` (`lvlmva.engine.dispatch`; by default
`OnlineDispatcher`: rate limits, retries, timeout, budget and cost).

    engine = Engine(critic, judge, EngineConfig(critic_model="gpt-4o", prompts=prompt_set))
    async for result in engine.run(jobs):
        ...
    await engine.aclose()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lvlmva.cache.verdict_cache import VerdictCache
from lvlmva.engine.answers import AnswerSource, answer_entry, answer_from_entry
from lvlmva.engine.cost import CostMeter, PriceTable
from lvlmva.engine.dispatch import Call, Dispatcher, OnlineDispatcher
from lvlmva.engine.errors import BudgetReached, ProviderError
from lvlmva.engine.idle import IdleWatch
from lvlmva.engine.keys import ProviderIdentity, request_key, schema_sha256
from lvlmva.engine.progress import CritiqueProgress
from lvlmva.engine.requests import (
    STEPS,
    PromptTemplates,
    Sampling,
    critic_request,
    fused_request,
    judge_request,
    reask_request,
    step_template_sha256,
)
from lvlmva.engine.retry import RetryPolicy
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


@dataclass(kw_only=True)
class EngineConfig:
    """Models, prompts and limits of a run. `rpm` / `tpm` cap each distinct provider object
    (critic and judge share one limiter when they are the same provider); `max_in_flight`
    bounds the jobs held at once (pulled and not yet yielded) and the concurrent requests.
    The limits, timeout, retries, prices and budget configure the default `OnlineDispatcher`."""

    critic_model: str
    judge_model: str | None = None  # default: the critic model
    prompts: PromptTemplates
    fused: bool = False
    max_in_flight: int = 64
    rpm: float | None = None
    tpm: float | None = None
    temperature: float = 0.0
    seed: int | None = 0
    max_tokens: int = 1024
    request_timeout: float = 60.0
    max_reasks: int = 2
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    prices: PriceTable = field(default_factory=PriceTable)
    budget_usd: float | None = None
    # When many recent answers are 429s, a Retry-After pauses all new requests; a lone 429
    # only delays its own retry.
    pause_on_rate_limit: bool = True
    progress: bool | None = None  # tqdm bar; None = only when stderr is a terminal

    def __post_init__(self) -> None:
        if self.judge_model is None:
            self.judge_model = self.critic_model
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1 (got {self.max_in_flight})")
        if self.max_reasks < 0:
            raise ConfigError(f"max_reasks must be 0 or more (got {self.max_reasks})")
        if not self.request_timeout > 0:
            raise ConfigError(f"request_timeout must be positive (got {self.request_timeout})")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1 (got {self.max_tokens})")

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.max_tokens, self.seed)

    def online_dispatcher(self) -> OnlineDispatcher:
        """The dispatcher these settings describe."""
        return OnlineDispatcher(
            max_in_flight=self.max_in_flight,
            rpm=self.rpm,
            tpm=self.tpm,
            request_timeout=self.request_timeout,
            retry=self.retry,
            meter=CostMeter(self.prices, self.budget_usd),
            pause_on_rate_limit=self.pause_on_rate_limit,
        )


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
        self._sampling = config.sampling
        self._identity = {id(p): ProviderIdentity.of(p) for p in (self.critic, self.judge)}
        self._template = {step: step_template_sha256(config.prompts, step) for step in STEPS}
        self._answers = AnswerSource(cache)
        self._idle = IdleWatch(self.dispatcher.on_idle)
        self._tasks: set[asyncio.Future[Any]] = set()
        self._queues: set[asyncio.Queue[Any]] = set()
        self._closed = False

    @property
    def cost(self) -> CostMeter:
        """The dispatcher's cost meter: spend so far, budget, prices."""
        return self.dispatcher.meter

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
        ledger = Ledger(self.stats.ledger)
        critique: str | None = None
        status, verdicts, error = JobStatus.OK, None, None
        try:
            if not job.colors or len(set(job.colors)) != len(job.colors):
                raise _Failed(f"job has no or repeated colours: {list(job.colors)}")
            if self.config.fused:
                verdicts = await self._fused(job, ledger)
            else:
                critique = await self._critique(job, ledger)
                verdicts = await self._judge(job, critique, ledger)
        except _Failed as exc:
            status, error = JobStatus.FAILED, str(exc)
        except _NotRun as exc:
            status, error = JobStatus.NOT_RUN, str(exc)
        return JobResult(
            job_id=job.job_id,
            status=status,
            verdicts=verdicts,
            critique=critique,
            error=error,
            tally=ledger.tally,
        )

    async def _critique(self, job: CritiqueJob, ledger: Ledger) -> str:
        c = self.config
        request = critic_request(c.prompts, job, model=c.critic_model, sampling=self._sampling)
        key = self._key("critic", self.critic, request)
        call = Call("critic", self.critic, request, key, ledger)
        answer = await self._answer(
            key, lambda: self._send(call), ledger, encode=answer_entry, decode=answer_from_entry
        )
        return answer.text

    async def _judge(self, job: CritiqueJob, critique: str, ledger: Ledger) -> dict[str, bool]:
        c, provider = self.config, self.judge
        request = judge_request(
            c.prompts,
            job,
            critique,
            model=c.judge_model or c.critic_model,
            sampling=self._sampling,
            structured=provider.supports_structured_output,
        )
        return await self._validated("judge", provider, request, job, ledger)

    async def _fused(self, job: CritiqueJob, ledger: Ledger) -> dict[str, bool]:
        c, provider = self.config, self.critic
        request = fused_request(
            c.prompts,
            job,
            model=c.critic_model,
            sampling=self._sampling,
            structured=provider.supports_structured_output,
        )
        return await self._validated("fused", provider, request, job, ledger)

    async def _validated(
        self,
        step: str,
        provider: Provider,
        request: ChatRequest,
        job: CritiqueJob,
        ledger: Ledger,
    ) -> dict[str, bool]:
        """Ask until the answer validates (re-asking with the error), then cache the valid
        answer under the first request's key; invalid answers are never cached, and a cached
        answer that does not validate is a miss."""
        colors = job.colors
        key = self._key(step, provider, request, schema_sha256(colors))

        async def ask() -> _Verdicts:
            current, total = request, Usage()
            for attempt in range(self.config.max_reasks + 1):
                response = await self._send(Call(step, provider, current, key, ledger, attempt))
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
                return ChatResponse(response.text, total, response.model), verdicts
            raise AssertionError("unreachable")

        def decode(entry: Any) -> _Verdicts:
            answer = answer_from_entry(entry)
            return answer, parse_verdicts(answer.text, colors)

        _, verdicts = await self._answer(
            key, ask, ledger, encode=lambda found: answer_entry(found[0]), decode=decode
        )
        return dict(verdicts)  # a copy: identical jobs in flight share the parsed answer

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

    async def _answer(
        self,
        key: str,
        compute: Callable[[], Awaitable[T]],
        ledger: Ledger,
        *,
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
    ) -> T:
        self._idle.want(key)
        try:
            return await self._answers.get(
                key, compute, encode=encode, decode=decode, ledger=ledger
            )
        finally:
            self._idle.unwant(key)

    async def _send(self, call: Call) -> ChatResponse:
        self._idle.send_started(call.key)
        try:
            return await self.dispatcher.send(call)
        except ProviderError as exc:
            raise _Failed(f"{call.step}: {exc}") from None
        except BudgetReached as exc:
            raise _NotRun(f"{call.step}: {exc}") from None
        finally:
            self._idle.send_ended(call.key)

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
