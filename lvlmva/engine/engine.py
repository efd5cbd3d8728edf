"""The Critic & Judge orchestrator: pulls jobs lazily, runs a bounded number at once and
yields validated results as they complete.

Per job: Critic call (rendered text + the job's images) -> Judge call (text only, structured
output with the verdict schema when the provider supports it) -> `parse_verdicts`. Invalid Judge
output is re-asked with the validation error, at most `max_reasks` times, then the job is
FAILED with the reason; a verdict is never guessed. `fused=True` makes one structured-output call
with the images instead. Every request goes through one rate limiter per provider, one retry
loop and the cost meter; both answers are cached (the Judge's only once it validated), and
identical requests in flight are sent once.

    engine = Engine(critic, judge, EngineConfig(critic_model="gpt-4o", prompts=prompt_set))
    async for result in engine.run(jobs):
        ...
    await engine.aclose()
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from lvlmva.cache.verdict_cache import (
    CachedResponse,
    SingleFlight,
    Source,
    VerdictCache,
    cache_key,
    canonical_sha256,
)
from lvlmva.engine.cost import CostMeter, PriceTable, estimate_request_tokens
from lvlmva.engine.errors import ProviderError, ProviderTimeout, RateLimited
from lvlmva.engine.ratelimit import RateLimiter, RateLimitSignal
from lvlmva.engine.retry import RetryPolicy, call_with_retries
from lvlmva.engine.types import (
    ChatRequest,
    ChatResponse,
    CritiqueJob,
    ImagePart,
    JobResult,
    JobStatus,
    Message,
    Provider,
    TextPart,
    Usage,
)
from lvlmva.engine.validation import VerdictValidationError, parse_verdicts, verdict_schema
from lvlmva.errors import ConfigError

__all__ = ["Engine", "EngineConfig", "EngineStats"]

log = logging.getLogger(__name__)

REASK = (
    "That answer could not be used: {error}. Answer again with only the JSON object, one entry "
    'for each of these colours: {colors}; every verdict must be "yes" or "no".'
)
_RENDER_MEMO = 512  # rendered prompts remembered
_TIMEOUT_GRACE_S = 5.0  # the provider enforces request_timeout; this guards one that does not


class _Template(Protocol):
    sha256: str

    def render(self, variables: Mapping[str, str]) -> str: ...


class _Prompts(Protocol):
    """What the engine needs of `lvlmva.prompts.PromptSet`."""

    critic_system: _Template
    critic_user: _Template
    judge_system: _Template
    judge_user: _Template
    fused_system: _Template
    fused_user: _Template


@dataclass(kw_only=True)
class EngineConfig:
    """Models, prompts and limits of a run. `rpm` / `tpm` cap each distinct provider object
    (critic and judge share one limiter when they are the same provider); `max_in_flight`
    bounds the jobs held at once (pulled and not yet yielded) and the concurrent requests."""

    critic_model: str
    judge_model: str | None = None  # default: the critic model
    prompts: _Prompts
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


@dataclass
class EngineStats:
    """Counters over every `run` of an engine. `completed` = validated (OK) results."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    not_run: int = 0
    provider_calls: int = 0  # requests that reached a provider, retries and re-asks included
    cache_hits: int = 0  # answers read from the cache
    deduplicated: int = 0  # answers shared with an identical request in flight
    retries: int = 0
    retries_by_error: Counter[str] = field(default_factory=Counter)
    reasks: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    elapsed: float = 0.0  # seconds spent inside `run`

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.not_run

    @property
    def requests_per_minute(self) -> float:
        return 60.0 * self.provider_calls / self.elapsed if self.elapsed > 0 else 0.0


class _Failed(Exception):
    """The job ends FAILED with this reason."""


class _NotRun(Exception):
    """The job ends NOT_RUN (the budget was reached before it could be sent)."""


@dataclass
class _JobTally:
    provider_calls: int = 0
    cache_hits: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0


class Engine:
    """Runs Critic & Judge jobs against `critic` (and `judge`, default: the critic provider).

    `aclose()` closes the providers and the cache: the engine owns them once given."""

    def __init__(
        self,
        critic: Provider,
        judge: Provider | None,
        config: EngineConfig,
        cache: VerdictCache | None = None,
    ) -> None:
        self.critic = critic
        self.judge = judge if judge is not None else critic
        self.config = config
        self.cache = cache
        self.stats = EngineStats()
        if config.budget_usd is not None:
            for model in {config.critic_model, config.judge_model or config.critic_model}:
                config.prices.require(model)  # ConfigError now, not mid-run
        self._meter = CostMeter(config.prices, config.budget_usd)
        self._limiters: dict[int, RateLimiter] = {}
        self._rate_signal = RateLimitSignal()
        self._flight: SingleFlight[CachedResponse] = SingleFlight()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._queues: set[asyncio.Queue[Any]] = set()
        self._closed = False
        p = config.prompts
        self._critic_template = _pair_sha(p.critic_system, p.critic_user)
        self._judge_template = _pair_sha(p.judge_system, p.judge_user)
        self._fused_template = _pair_sha(p.fused_system, p.fused_user)
        self._rendered: dict[tuple[Any, ...], str] = {}

    @property
    def cost(self) -> CostMeter:
        return self._meter

    def _limiter(self, provider: Provider) -> RateLimiter:
        limiter = self._limiters.get(id(provider))
        if limiter is None:
            limiter = RateLimiter(
                rpm=self.config.rpm, tpm=self.config.tpm, max_concurrency=self.config.max_in_flight
            )
            self._limiters[id(provider)] = limiter
        return limiter

    # -- the run loop ---------------------------------------------------------------------------

    async def run(
        self,
        jobs: Iterable[CritiqueJob] | AsyncIterable[CritiqueJob],
        *,
        total: int | None = None,
    ) -> AsyncIterator[JobResult]:
        """Yield one `JobResult` per job, in completion order. Jobs are pulled only when one of
        the `max_in_flight` slots is free (a slot frees when its result is yielded), so an
        endless or huge job stream is never materialised. Stopping the iteration (break,
        cancel) cancels the jobs in flight; answers already received stay cached. `total`
        (the number of jobs, for the progress bar) defaults to `len(jobs)` where it has one."""
        if self._closed:
            raise RuntimeError("this Engine is closed")
        loop = asyncio.get_running_loop()
        started = loop.time()
        queue: asyncio.Queue[asyncio.Future[Any] | None] = asyncio.Queue()  # None: closed
        slots = asyncio.Semaphore(self.config.max_in_flight)
        tasks: set[asyncio.Future[Any]] = set()
        pulled = 0

        def finished(task: asyncio.Future[Any]) -> None:
            tasks.discard(task)
            self._tasks.discard(task)
            if not task.cancelled():
                queue.put_nowait(task)

        async def feed() -> None:
            nonlocal pulled
            plain = None if isinstance(jobs, AsyncIterable) else iter(jobs)
            iterator = _job_iterator(jobs) if plain is None else None
            while True:
                await slots.acquire()
                try:
                    job = next(plain) if plain is not None else await anext(iterator)
                except (StopIteration, StopAsyncIteration):
                    return
                pulled += 1
                self.stats.submitted += 1
                task = loop.create_task(self._process(job))
                tasks.add(task)
                self._tasks.add(task)
                task.add_done_callback(finished)

        feeder = loop.create_task(feed())
        self._tasks.add(feeder)
        feeder.add_done_callback(finished)
        bar = _Progress(self, _length(jobs) if total is None else total, self.config.progress)
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

    def _count(self, result: JobResult) -> None:
        s = self.stats
        if result.status is JobStatus.OK:
            s.completed += 1
        elif result.status is JobStatus.FAILED:
            s.failed += 1
        else:
            s.not_run += 1

    async def _process(self, job: CritiqueJob) -> JobResult:
        tally = _JobTally()
        critique: str | None = None
        try:
            if not job.colors or len(set(job.colors)) != len(job.colors):
                raise _Failed(f"job has no or repeated colours: {list(job.colors)}")
            if self.config.fused:
                verdicts = await self._fused(job, tally)
            else:
                variables = self._variables(job)
                critique = await self._critique(job, variables, tally)
                verdicts = await self._judge(job, variables, critique, tally)
        except _Failed as exc:
            return self._result(job, JobStatus.FAILED, tally, critique=critique, error=str(exc))
        except _NotRun as exc:
            return self._result(job, JobStatus.NOT_RUN, tally, critique=critique, error=str(exc))
        return self._result(job, JobStatus.OK, tally, critique=critique, verdicts=verdicts)

    @staticmethod
    def _result(job: CritiqueJob, status: JobStatus, tally: _JobTally, **fields: Any) -> JobResult:
        return JobResult(
            job_id=job.job_id,
            status=status,
            provider_calls=tally.provider_calls,
            cache_hits=tally.cache_hits,
            usage=tally.usage,
            cost_usd=tally.cost_usd,
            **fields,
        )

    # -- the three kinds of call ----------------------------------------------------------------

    def _render(self, template: _Template, variables: Mapping[str, str]) -> str:
        """`template.render(variables)`, remembered for the variables the template uses: the
        system prompts (and any text that depends only on the class) repeat across jobs."""
        names = getattr(template, "variables", None)
        if names is None:
            return template.render(variables)
        try:
            key = (id(template), *(variables[name] for name in sorted(names)))
            text = self._rendered.get(key)
        except (KeyError, TypeError):  # a missing variable: render explains it
            return template.render(variables)
        if text is None:
            text = template.render(variables)
            if len(self._rendered) >= _RENDER_MEMO:
                self._rendered.clear()
            self._rendered[key] = text
        return text

    def _variables(self, job: CritiqueJob) -> dict[str, str]:
        return {
            **job.variables,
            "n_clusters": str(len(job.colors)),
            "colors": ", ".join(job.colors),
            "image_names": ", ".join(image.name for image in job.images),
        }

    async def _critique(self, job: CritiqueJob, variables: dict[str, str], tally: _JobTally) -> str:
        p = self.config.prompts
        request = self._request(
            self.config.critic_model,
            self._render(p.critic_system, variables),
            self._render(p.critic_user, variables),
            job.images,
            schema=None,
        )
        key = self._key("critic", self.critic, request, self._critic_template)
        answer = await self._cached(
            key, tally, lambda: self._send(self.critic, request, tally, "critic")
        )
        return answer.text

    async def _judge(
        self, job: CritiqueJob, variables: dict[str, str], critique: str, tally: _JobTally
    ) -> dict[str, bool]:
        p = self.config.prompts
        variables = {**variables, "critique": critique}
        schema = _verdict_schema(job.colors)
        request = self._request(
            self.config.judge_model or self.config.critic_model,
            self._render(p.judge_system, variables),
            self._render(p.judge_user, variables),
            (),
            schema=schema if self.judge.supports_structured_output else None,
        )
        return await self._validated("judge", self.judge, request, self._judge_template, job, tally)

    async def _fused(self, job: CritiqueJob, tally: _JobTally) -> dict[str, bool]:
        p, variables = self.config.prompts, self._variables(job)
        schema = _verdict_schema(job.colors)
        request = self._request(
            self.config.critic_model,
            self._render(p.fused_system, variables),
            self._render(p.fused_user, variables),
            job.images,
            schema=schema if self.critic.supports_structured_output else None,
        )
        return await self._validated(
            "fused", self.critic, request, self._fused_template, job, tally
        )

    async def _validated(
        self,
        step: str,
        provider: Provider,
        request: ChatRequest,
        template_sha256: str,
        job: CritiqueJob,
        tally: _JobTally,
    ) -> dict[str, bool]:
        """Ask until the answer validates (re-asking with the error), then cache the valid
        answer under the first request's key; invalid answers are never cached."""
        colors = job.colors
        parsed: dict[str, bool] = {}

        async def ask() -> CachedResponse:
            current, total = request, Usage()
            for attempt in range(self.config.max_reasks + 1):
                response = await self._send(provider, current, tally, step)
                total = total + response.usage
                try:
                    parsed.update(_verdicts(response.text, colors))
                except VerdictValidationError as exc:
                    if attempt == self.config.max_reasks:
                        raise _Failed(
                            f"{step}: output still invalid after {attempt + 1} answers: {exc}"
                        ) from None
                    self.stats.reasks += 1
                    reask = REASK.format(error=exc, colors=", ".join(colors))
                    current = replace(
                        request,
                        messages=(
                            *request.messages,
                            Message.text("assistant", response.text),
                            Message.text("user", reask),
                        ),
                    )
                    continue
                return CachedResponse(response.text, total, response.model)
            raise AssertionError("unreachable")

        key = self._key(
            step, provider, request, template_sha256, schema_sha256=_schema_sha256(colors)
        )
        answer = await self._cached(key, tally, ask)
        return parsed if parsed else _verdicts(answer.text, colors)

    # -- plumbing -------------------------------------------------------------------------------

    def _request(
        self,
        model: str,
        system: str,
        user: str,
        images: tuple[ImagePart, ...],
        *,
        schema: Mapping[str, Any] | None,
    ) -> ChatRequest:
        return ChatRequest(
            model=model,
            messages=(Message.text("system", system), Message("user", (TextPart(user), *images))),
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            seed=self.config.seed,
            response_schema=schema,
        )

    def _key(
        self,
        step: str,
        provider: Provider,
        request: ChatRequest,
        template_sha256: str,
        *,
        schema_sha256: str | None = None,
    ) -> str:
        texts: list[str] = []
        images: list[str] = []
        for message in request.messages:
            for part in message.parts:
                if isinstance(part, TextPart):
                    texts.append(f"{message.role}:{part.text}")
                else:
                    images.append(part.sha256)
        return cache_key(
            provider=provider.name,
            model=request.model,
            template_sha256=template_sha256,
            text=texts,
            image_sha256s=images,
            params={
                "step": step,
                "temperature": request.temperature,
                "max_tokens": request.max_tokens,
                "seed": request.seed,
                "structured_output": request.response_schema is not None,
            },
            schema_sha256=schema_sha256,
        )

    async def _cached(
        self, key: str, tally: _JobTally, factory: Callable[[], Awaitable[CachedResponse]]
    ) -> CachedResponse:
        if self.cache is not None:
            found = await self.cache.get_or_compute(key, factory)
            value, source = found.value, found.source
        else:
            value, shared = await self._flight.run(key, factory)
            source = Source.SHARED if shared else Source.COMPUTED
        if source is Source.CACHE:
            self.stats.cache_hits += 1
            tally.cache_hits += 1
        elif source is Source.SHARED:
            self.stats.deduplicated += 1
            tally.cache_hits += 1
        return value

    async def _send(
        self, provider: Provider, request: ChatRequest, tally: _JobTally, step: str
    ) -> CachedResponse:
        """One logical request: budget reservation, then rate-limited attempts with retries."""
        estimated = estimate_request_tokens(request)
        reservation = self._meter.reserve(request.model, estimated)
        if reservation is None:
            raise _NotRun(f"{step}: not sent, the budget of ${self.config.budget_usd:g} is reached")
        limiter = self._limiter(provider)
        timeout = self.config.request_timeout

        async def attempt() -> ChatResponse:
            async with limiter.acquire(estimated) as permit:
                tally.provider_calls += 1
                self.stats.provider_calls += 1
                try:
                    async with asyncio.timeout(timeout + _TIMEOUT_GRACE_S):
                        response = await provider.complete(request, timeout=timeout)
                except TimeoutError:
                    raise ProviderTimeout(f"{provider.name}: no answer in {timeout:g} s") from None
                except RateLimited as exc:
                    saturated = self._rate_signal.record(True)
                    if exc.retry_after and saturated and self.config.pause_on_rate_limit:
                        limiter.penalize(exc.retry_after)
                    raise
                except ProviderError:
                    raise
                except Exception as exc:  # a provider bug must fail the job, not the run
                    raise ProviderError(f"{provider.name}: {type(exc).__name__}: {exc}") from exc
                permit.settle(response.usage.total_tokens)
                self._rate_signal.record(False)
            cost = self._meter.add(request.model, response.usage)
            tally.usage = tally.usage + response.usage
            tally.cost_usd += cost
            self.stats.usage = self.stats.usage + response.usage
            self.stats.cost_usd += cost
            return response

        def on_retry(attempt_number: int, error: ProviderError, wait: float) -> None:
            self.stats.retries += 1
            self.stats.retries_by_error[type(error).__name__] += 1
            log.debug(
                "%s attempt %d failed (%s); retrying in %.2f s", step, attempt_number, error, wait
            )

        try:
            response = await _with_retries(attempt, self.config.retry, on_retry)
        except ProviderError as exc:
            raise _Failed(f"{step}: {exc}") from None
        finally:
            self._meter.release(reservation)
        return CachedResponse(response.text, response.usage, response.model)

    async def aclose(self) -> None:
        """Cancel what is still running, then close the providers and the cache."""
        if self._closed:
            return
        self._closed = True
        for queue in self._queues:
            queue.put_nowait(None)
        pending = list(self._tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        closed: set[int] = set()
        for provider in (self.critic, self.judge):
            if id(provider) not in closed:
                closed.add(id(provider))
                await provider.aclose()
        if self.cache is not None:
            await self.cache.aclose()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _with_retries(
    attempt: Callable[[], Awaitable[ChatResponse]],
    policy: RetryPolicy,
    on_retry: Callable[[int, ProviderError, float], None],
) -> ChatResponse:
    """`call_with_retries`, entered only after a first attempt failed with a retryable error
    (that attempt is replayed into it, so waits and attempt counts are the same): tenacity's
    bookkeeping costs more than the rest of a request, and most requests succeed at once."""
    try:
        return await attempt()
    except ProviderError as exc:
        if not exc.retryable or policy.max_attempts == 1:
            raise
        first: ProviderError | None = exc

    async def replay() -> ChatResponse:
        nonlocal first
        if first is not None:
            error, first = first, None
            raise error
        return await attempt()

    return await call_with_retries(replay, policy, on_retry=on_retry)


@functools.lru_cache(maxsize=1024)
def _verdict_schema(colors: tuple[str, ...]) -> dict[str, Any]:
    """`verdict_schema`, built once per colour set (shared: never modified)."""
    return verdict_schema(colors)


@functools.lru_cache(maxsize=1024)
def _schema_sha256(colors: tuple[str, ...]) -> str:
    return canonical_sha256(_verdict_schema(colors))


def _verdicts(text: str, colors: tuple[str, ...]) -> dict[str, bool]:
    """`parse_verdicts`, with a fast path for the common case: a bare JSON object that is
    exactly right. It accepts only what `parse_verdicts` accepts; anything else (a code fence,
    any defect) goes to `parse_verdicts`, which validates it fully and explains what is wrong."""
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        data = None
    if type(data) is dict and len(data) == 1:
        entries = data.get("output")
        if type(entries) is list and len(entries) == len(colors):
            out: dict[str, bool] = {}
            for entry in entries:
                if type(entry) is not dict or len(entry) != 2:
                    break
                color, verdict = entry.get("color"), entry.get("verdict")
                if type(color) is not str or color in out or verdict not in _YES_NO:
                    break
                out[color] = verdict == "yes"
            else:
                if out.keys() == set(colors):
                    return out
    return parse_verdicts(text, colors)


_YES_NO = ("yes", "no")


def _pair_sha(system: _Template, user: _Template) -> str:
    return canonical_sha256([system.sha256, user.sha256])


def _length(jobs: object) -> int | None:
    try:
        return len(jobs)  # type: ignore[arg-type]
    except TypeError:
        return None


async def _job_iterator(
    jobs: Iterable[CritiqueJob] | AsyncIterable[CritiqueJob],
) -> AsyncIterator[CritiqueJob]:
    if isinstance(jobs, AsyncIterable):
        async for job in jobs:
            yield job
    else:
        for job in jobs:
            yield job


class _Progress:
    """tqdm bar with running cost and request throughput, refreshed at most twice a second."""

    def __init__(self, engine: Engine, total: int | None, enabled: bool | None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._engine = engine
        self._bar = None
        self._next = 0.0
        if enabled:
            from lvlmva.progress import progress_bar

            self._bar = progress_bar(total=total, unit="job", desc="critique", dynamic_ncols=True)
            self._start = time.perf_counter()
            self._calls0 = engine.stats.provider_calls

    def update(self) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        now = time.perf_counter()
        if now >= self._next:
            self._next = now + 0.5
            s = self._engine.stats
            rate = (s.provider_calls - self._calls0) * 60.0 / max(now - self._start, 1e-9)
            budget = self._engine.config.budget_usd
            cost = f"${s.cost_usd:.4f}" + (f"/${budget:g}" if budget is not None else "")
            self._bar.set_postfix_str(
                f"{cost} {rate:.0f} req/min fail {s.failed} cached {s.cache_hits}", refresh=False
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
