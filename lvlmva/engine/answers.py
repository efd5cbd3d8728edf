"""Where the engine's answers come from (the cache, an identical request in flight, or a call),
and whether an answer can be used at all.

The cache stores plain entries `{"text": str, "usage": [prompt, completion, cached, reasoning],
"model": str, "finish_reason": str | None}`, plus `"logprobs": [[token, logprob, [[alternative,
logprob], ...]], ...]` when the answer has them; `answer_entry` / `answer_from_entry` convert
a `ChatResponse` to and from one. An entry that does not decode (another format, a damaged file,
an answer that was cut off) is a miss: the answer is asked for again and stored over it, never
used and never an error.

`unusable(answer)` says why an answer must not be cached or judged: cut at the token limit
(`finish_reason` "length"), withheld by the content filter, or empty.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from lvlmva.cache.verdict_cache import SingleFlight, Source, VerdictCache
from lvlmva.engine.stats import Ledger
from lvlmva.engine.types import ChatRequest, ChatResponse, TokenLogprob, Usage

__all__ = ["AnswerSource", "answer_entry", "answer_from_entry", "unusable", "unusable_reason"]

T = TypeVar("T")
USABLE_FINISH = (None, "stop")  # None: servers that send no finish reason


def answer_entry(answer: ChatResponse) -> dict[str, Any]:
    """`answer` as a cache entry (JSON-able)."""
    usage = answer.usage
    return {
        "text": answer.text,
        "usage": [
            usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
            usage.reasoning_tokens,
        ],
        "model": answer.model,
        "finish_reason": answer.finish_reason,
        **({} if answer.logprobs is None else {"logprobs": [
            [t.token, t.logprob, [list(alt) for alt in t.top]] for t in answer.logprobs
        ]}),
    }  # fmt: skip


def answer_from_entry(entry: Any) -> ChatResponse:
    """The `ChatResponse` of a cache entry; `ValueError` if it is not one (or holds an answer
    that cannot be used)."""
    if type(entry) is not dict:
        raise ValueError(f"not a mapping: {type(entry).__name__}")
    text, usage, model = entry.get("text"), entry.get("usage"), entry.get("model")
    finish = entry.get("finish_reason")
    if type(text) is not str or type(model) is not str:
        raise ValueError("text and model must be strings")
    if type(usage) is not list or len(usage) != 4 or any(type(n) is not int for n in usage):
        raise ValueError("usage must be [prompt, completion, cached, reasoning tokens]")
    if finish not in USABLE_FINISH or not text.strip():
        raise ValueError(f"an unusable answer (finish_reason {finish!r})")
    logprobs = _logprobs_from_entry(entry.get("logprobs"))
    return ChatResponse(text, Usage(*usage), model, finish_reason=finish, logprobs=logprobs)


def _logprobs_from_entry(raw: Any) -> tuple[TokenLogprob, ...] | None:
    if raw is None:
        return None
    try:
        return tuple(
            TokenLogprob(str(token), float(logprob), tuple((str(a), float(b)) for a, b in top))
            for token, logprob, top in raw
        )
    except (TypeError, ValueError):
        shape = "[[token, logprob, [[token, logprob], ...]], ...]"
        raise ValueError(f"logprobs must be {shape}") from None


def unusable(answer: ChatResponse) -> str | None:
    """Why `answer` must be neither cached nor judged ("length", "content_filter", "empty"),
    or None when it can be used."""
    if answer.finish_reason == "length":
        return "length"
    if answer.finish_reason == "content_filter":
        return "content_filter"
    if answer.finish_reason not in USABLE_FINISH:
        return f"finish_reason {answer.finish_reason}"
    if answer.content_null or not answer.text.strip():
        return "empty"
    return None


def unusable_reason(problem: str, answer: ChatResponse, request: ChatRequest) -> str:
    """One line saying what was wrong with `answer` to `request` and what to do."""
    usage, budget = answer.usage, request.max_tokens
    if problem == "length" and not answer.text.strip() and usage.reasoning_tokens:
        return (
            f"{request.model} spent its whole budget of {budget} completion tokens on reasoning "
            f"({usage.reasoning_tokens} reasoning tokens) and gave no answer; raise "
            "--max-completion-tokens or lower --reasoning-effort"
        )
    if problem == "length":
        return (
            f"the answer was cut at the limit of {budget} completion tokens (finish_reason "
            "length); raise --max-completion-tokens"
        )
    if problem == "content_filter":
        return "the provider's content filter withheld the answer (finish_reason content_filter)"
    if problem == "empty":
        null = "null content" if answer.content_null else "an empty answer"
        return f"{request.model} sent {null} (finish_reason {answer.finish_reason})"
    return f"{request.model} ended its answer with {problem}"


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
        tag: str | None = None,
    ) -> T:
        """The answer of `key`; `tag` labels a stored entry (`lvlmva cache stats` counts by it)."""
        if self.cache is not None:
            found = await self.cache.get_or_compute(
                key, compute, encode=encode, decode=decode, tag=tag
            )
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
