"""Ingest: the lines of a batch's output and error files as outcomes, read the way a
synchronous answer is read, and the answers stored in the answer cache.

Line formats (`BatchRequestOutput`: `id`, `custom_id`, `response` {`status_code`,
`request_id`, `body`} or null, `error` or null):

- OpenAI (openai/openai-openapi, 2025-03-21 branch): answers in the output file; a request the
  endpoint refused in the error file with its 4xx status and the error body a synchronous call
  gets; lines that never ran have `response: null` and `error: {code, message}`
  (`batch_expired` when the 24-h window closed).
- `vllm run-batch` (vllm/entrypoints/openai/run_batch.py): one file; an answer as above; a
  refused request has `response: {status_code, request_id, body: null}` and `error` either a
  string or vLLM's `ErrorResponse` (`{"error": {message, type, param, code}}`, or
  `{"message", "type", "code"}` in older releases).

An answer (status 200) is read by `parse_chat_completion`, as the synchronous provider reads
one; a line the endpoint refused becomes the error a synchronous call would raise
(`error_for_status`). Transient failures (429, 5xx, timeouts, expired or cancelled lines) are
`retry`: they may go into a later shard. Answers are stored under the cache key of their
request, which is the `custom_id` without its `-<attempt>` suffix.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lvlmva.engine.answers import answer_entry, unusable
from lvlmva.engine.errors import ProviderError, ServerError
from lvlmva.engine.providers.openai_compat import parse_chat_response
from lvlmva.engine.providers.wire import error_for_status, scrub
from lvlmva.engine.types import ChatResponse

__all__ = ["LineOutcome", "cache_key_of", "read_outcomes", "store_answers"]

Outcome = Literal["answered", "failed", "retry"]
TRANSIENT_CODES = frozenset(
    {"batch_expired", "batch_cancelled", "server_error", "rate_limit_exceeded", "timeout"}
)


@dataclass(frozen=True)
class LineOutcome:
    """One line's outcome. `answered` lines carry the `response`, or the `error` reading it
    raised (a refusal: paid for, never sent again); `failed` and `retry` lines the error."""

    custom_id: str
    outcome: Outcome
    response: ChatResponse | None = None
    error: ProviderError | None = None

    @property
    def detail(self) -> str | None:
        return None if self.error is None else str(self.error)


def cache_key_of(custom_id: str) -> str:
    """The cache key of a line: its `custom_id` is `<key>-<attempt>` (`Call.custom_id`)."""
    return custom_id.rsplit("-", 1)[0]


def read_outcomes(content: bytes, *, model: str, where: str) -> tuple[list[LineOutcome], int]:
    """The outcomes of an output or error file, and how many lines could not be read (not
    JSON, or without a custom_id)."""
    outcomes: list[LineOutcome] = []
    unreadable = 0
    for raw in content.splitlines():
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            unreadable += 1
            continue
        outcome = outcome_of(obj, model=model, where=where)
        if outcome is None:
            unreadable += 1
        else:
            outcomes.append(outcome)
    return outcomes, unreadable


def outcome_of(obj: Any, *, model: str, where: str) -> LineOutcome | None:
    """The outcome of one parsed output line (None when it is not one)."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("custom_id"), str):
        return None
    custom_id = obj["custom_id"]
    response, error = obj.get("response"), obj.get("error")
    if isinstance(response, Mapping):
        status = response.get("status_code", 200)
        body = response.get("body")
        if status == 200 and isinstance(body, Mapping) and not error:
            return _answer(custom_id, body, model=model, where=where)
        status = status if isinstance(status, int) else None
        text = f"{where}: HTTP {status}: {scrub(_error_text(body, error), None)}"
        exc = error_for_status(status, text)
        return LineOutcome(custom_id, "retry" if exc.retryable else "failed", error=exc)
    code, message = _code_and_message(error)
    if code in TRANSIENT_CODES:
        return LineOutcome(custom_id, "retry", error=ServerError(f"{where}: {code}: {message}"))
    return LineOutcome(custom_id, "failed", error=ProviderError(f"{where}: {code}: {message}"))


def _answer(custom_id: str, body: Mapping[str, Any], *, model: str, where: str) -> LineOutcome:
    payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
    try:
        response = parse_chat_response(payload, where=where)
    except ProviderError as exc:
        return LineOutcome(custom_id, "retry" if exc.retryable else "answered", error=exc)
    if not response.model:
        response = dataclasses.replace(response, model=model)
    return LineOutcome(custom_id, "answered", response)


def _error_text(body: Any, error: Any) -> str:
    """The message of an error body (OpenAI's `{"error": {...}}`) or of vLLM's `error`."""
    for candidate in (body, error):
        if isinstance(candidate, str) and candidate:
            return candidate
        if isinstance(candidate, Mapping):
            inner = candidate.get("error", candidate)
            if isinstance(inner, Mapping) and inner.get("message"):
                return str(inner["message"])
            if isinstance(inner, str) and inner:
                return inner
    return "(no error message)"


def _code_and_message(error: Any) -> tuple[str, str]:
    if isinstance(error, Mapping):
        inner = error.get("error", error)
        if isinstance(inner, Mapping):
            return str(inner.get("code") or "error"), str(inner.get("message") or "")
    if isinstance(error, str):
        return "error", scrub(error, None)
    return "missing", "the line has neither a response nor an error"


async def store_answers(cache: Any, outcomes: Iterable[LineOutcome]) -> int:
    """Store every usable answer in `cache` (a `VerdictCache`) under its request's key, as
    the engine stores answers; returns how many. An answer cut at its limit, filtered or empty
    is never stored (the engine decides what to do with it); a Judge answer stored here that
    does not validate is a miss when read (the engine checks every cached verdict)."""
    import asyncio

    writes = [
        cache.set(cache_key_of(o.custom_id), answer_entry(o.response))
        for o in outcomes
        if o.outcome == "answered" and o.response is not None and unusable(o.response) is None
    ]
    await asyncio.gather(*writes)
    await cache.flush()
    return len(writes)
