"""Typed values that cross the engine's boundary. The engine knows nothing about vision:
a job is images as bytes plus template variables, a result is validated per-colour verdicts."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable


class _computed_once:
    """`functools.cached_property` without its lock (Python 3.11 takes one on every first
    access, a visible cost when three images per job are hashed)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self._fn = fn
        self._name = fn.__name__
        self.__doc__ = fn.__doc__

    def __get__(self, obj: object | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self._name] = self._fn(obj)  # later reads find it there
        return value


@dataclass(frozen=True)
class ImagePart:
    """One image of a request, e.g. name "original", "clusters" or "overlay"."""

    name: str
    data: bytes
    mime: str = "image/png"
    width: int = 0
    height: int = 0

    @_computed_once
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @_computed_once
    def data_url(self) -> str:
        """The image as a base64 `data:` URL (computed once per part)."""
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass(frozen=True)
class TextPart:
    text: str


Part = TextPart | ImagePart


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    parts: tuple[Part, ...]

    @classmethod
    def text(cls, role: Literal["system", "user", "assistant"], text: str) -> Message:
        return cls(role, (TextPart(text),))


@dataclass(frozen=True)
class ChatRequest:
    """A provider-neutral chat completion request. `temperature=None` leaves it out (models
    that allow only their default); `max_tokens` is the output budget, reasoning included,
    whatever the wire calls it; `reasoning_effort` is sent when set; `image_detail` is the
    detail policy of the images (`lvlmva.engine.model_params.DETAILS`; None: none sent);
    `top_logprobs` asks for the answer tokens' log-probabilities with that many alternatives
    (sent only to models that give them: `ModelRules.top_logprobs`)."""

    model: str
    messages: tuple[Message, ...]
    temperature: float | None = 0.0
    max_tokens: int = 1024
    seed: int | None = None
    response_schema: Mapping[str, Any] | None = None  # JSON schema for structured output
    schema_name: str = "verdicts"
    reasoning_effort: str | None = None
    image_detail: str | None = None
    top_logprobs: int | None = None  # ask for token log-probabilities, this many alternatives


@dataclass(frozen=True)
class TokenLogprob:
    """One answer token with its log-probability and the most likely alternatives at its
    position (`top`: (token, logprob) pairs, the API's `top_logprobs`). `token` is the text the
    token adds to the answer (`lvlmva.engine.providers.wire.parse_logprobs`), so the tokens
    spell the answer."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Usage:
    """Tokens of a response. `cached_tokens` (prompt tokens served from the provider's prompt
    cache, billed at the cached rate) are part of `prompt_tokens`; `reasoning_tokens` (hidden
    reasoning, billed as output) are part of `completion_tokens`."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Tally:
    """What calls cost and saved: one type for a job's counts (`JobResult.tally`) and a run's
    (`EngineStats.tally`); tallies add up with `+`."""

    provider_calls: int = 0  # requests that reached a provider, retries and re-asks included
    retries: int = 0
    reasks: int = 0  # Judge answers that did not validate and were asked again
    cache_hits: int = 0  # answers read from the cache
    deduplicated: int = 0  # answers shared with an identical request in flight
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    budget_retries: int = 0  # answers cut at the token limit, asked again with a larger budget

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.provider_calls + other.provider_calls,
            self.retries + other.retries,
            self.reasks + other.reasks,
            self.cache_hits + other.cache_hits,
            self.deduplicated + other.deduplicated,
            self.usage + other.usage,
            self.cost_usd + other.cost_usd,
            self.budget_retries + other.budget_retries,
        )

    @property
    def reused(self) -> int:
        """Answers not paid for: read from the cache or shared with an identical request."""
        return self.cache_hits + self.deduplicated


class TallyView:
    """The counts of `self.tally` as attributes of a result or of an engine's stats."""

    tally: Tally

    @property
    def provider_calls(self) -> int:
        return self.tally.provider_calls

    @property
    def retries(self) -> int:
        return self.tally.retries

    @property
    def reasks(self) -> int:
        return self.tally.reasks

    @property
    def deduplicated(self) -> int:
        return self.tally.deduplicated

    @property
    def usage(self) -> Usage:
        return self.tally.usage

    @property
    def cost_usd(self) -> float:
        return self.tally.cost_usd


@dataclass(frozen=True)
class RateLimitInfo:
    """A response's `x-ratelimit-*` headers: per dimension (requests, tokens) the limit, what
    remains and the seconds until the window is full again (None: not sent)."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None


@dataclass(frozen=True)
class ChatResponse:
    """An answer: its text (`""` for null content), usage, the answering model, and
    `finish_reason` ("stop", "length", "content_filter" ...; None when the server sent none);
    `logprobs` the content's tokens with their log-probabilities when they were asked for and
    given."""

    text: str
    usage: Usage
    model: str
    finish_reason: str | None = "stop"
    rate_limits: RateLimitInfo | None = field(default=None, compare=False)
    content_null: bool = False  # the server sent `content: null`
    logprobs: tuple[TokenLogprob, ...] | None = None


@runtime_checkable
class Provider(Protocol):
    """A chat backend. `complete` raises `ProviderError` subclasses on failure and never
    retries by itself: the engine owns the one retry loop."""

    name: str
    supports_structured_output: bool

    async def complete(self, request: ChatRequest, *, timeout: float) -> ChatResponse: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class CritiqueJob:
    """One Critic & Judge job: images (original, clusters, overlay), the cluster colour names
    and the variables the prompt templates are rendered with (class name, description ...)."""

    job_id: str
    images: tuple[ImagePart, ...]
    colors: tuple[str, ...]
    variables: Mapping[str, str] = field(default_factory=dict)


class JobStatus(StrEnum):
    OK = "ok"  # validated verdicts
    FAILED = "failed"  # gave up, with a reason: never a guessed verdict
    NOT_RUN = "not_run"  # not issued, e.g. the budget was reached


@dataclass(frozen=True)
class JobResult(TallyView):
    job_id: str
    status: JobStatus
    verdicts: Mapping[str, bool] | None = None  # colour -> True for "yes" (relevant)
    # colour -> P("no") from the verdict tokens' log-probabilities (None: none were given)
    no_probability: Mapping[str, float] | None = None
    critique: str | None = None
    error: str | None = None
    tally: Tally = field(default_factory=Tally)  # this job's calls, reused answers, tokens and cost

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.OK

    @property
    def cache_hits(self) -> int:
        """Answers this job did not pay for (from the cache or an identical job in flight)."""
        return self.tally.reused
