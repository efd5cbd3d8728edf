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
    """A provider-neutral chat completion request."""

    model: str
    messages: tuple[Message, ...]
    temperature: float = 0.0
    max_tokens: int = 1024
    seed: int | None = None
    response_schema: Mapping[str, Any] | None = None  # JSON schema for structured output
    schema_name: str = "verdicts"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ChatResponse:
    text: str
    usage: Usage
    model: str


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
class JobResult:
    job_id: str
    status: JobStatus
    verdicts: Mapping[str, bool] | None = None  # colour -> True for "yes" (relevant)
    critique: str | None = None
    error: str | None = None
    provider_calls: int = 0  # requests that reached the provider (retries included)
    cache_hits: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.OK
