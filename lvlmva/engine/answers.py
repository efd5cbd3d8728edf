"""Where the engine's answers come from: the cache, an identical request in flight, or a call.

The cache stores plain entries `{"text": str, "usage": [prompt, completion], "model": str}`;
`answer_entry` / `answer_from_entry` convert a `ChatResponse` to and from one. An entry that
does not decode (another format, a damaged file) is a miss: the answer is asked for again and
stored over it, never used and never an error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from lvlmva.cache.verdict_cache import SingleFlight, Source, VerdictCache
from lvlmva.engine.stats import Ledger
from lvlmva.engine.types import ChatResponse, Usage

__all__ = ["AnswerSource", "answer_entry", "answer_from_entry"]

T = TypeVar("T")


def answer_entry(answer: ChatResponse) -> dict[str, Any]:
    """`answer` as a cache entry (JSON-able)."""
    usage = answer.usage
    return {
        "text": answer.text,
        "usage": [usage.prompt_tokens, usage.completion_tokens],
        "model": answer.model,
    }


def answer_from_entry(entry: Any) -> ChatResponse:
    """The `ChatResponse` of a cache entry; `ValueError` if it is not one."""
    if type(entry) is not dict:
        raise ValueError(f"not a mapping: {type(entry).__name__}")
    text, usage, model = entry.get("text"), entry.get("usage"), entry.get("model")
    if type(text) is not str or type(model) is not str:
        raise ValueError("text and model must be strings")
    if type(usage) is not list or len(usage) != 2 or any(type(n) is not int for n in usage):
        raise ValueError("usage must be [prompt tokens, completion tokens]")
    return ChatResponse(text, Usage(usage[0], usage[1]), model)


class AnswerSource:
    """Answers by key: read from `cache` when there is one (which also shares identical keys
    in flight), else shared in flight only; `compute` runs on a miss. Reused answers are
    booked on the job's ledger."""

    def __init__(self, cache: VerdictCache | None) -> None:
        self.cache = cache
        self._flight: SingleFlight[Any] = SingleFlight()

    async def get(
        self,
        key: str,
        compute: Callable[[], Awaitable[T]],
        *,
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
        ledger: Ledger,
    ) -> T:
        if self.cache is not None:
            found = await self.cache.get_or_compute(key, compute, encode=encode, decode=decode)
            value, source = found.value, found.source
        else:
            value, shared = await self._flight.run(key, compute)
            source = Source.SHARED if shared else Source.COMPUTED
        if source is not Source.COMPUTED:
            ledger.reused(shared=source is Source.SHARED)
        return value

    async def aclose(self) -> None:
        if self.cache is not None:
            await self.cache.aclose()
