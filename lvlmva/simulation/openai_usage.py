"""Token accounting of the OpenAI stand-in: cached prompt tokens, hidden reasoning tokens, the
completion budget, `finish_reason`, and the `chat.completion` body itself.

Sources:

- [spec] openai/openai-openapi@f85dbe2 `CompletionUsage`: `prompt_tokens`, `completion_tokens`,
  `total_tokens`, `prompt_tokens_details.cached_tokens`, `completion_tokens_details.
  reasoning_tokens` (reasoning tokens count inside `completion_tokens`);
  `max_completion_tokens` bounds "visible output tokens and reasoning tokens";
  `CreateChatCompletionResponse`: `id`, `object` "chat.completion", `created` (Unix seconds),
  `model`, `choices[{index, message{role, content, refusal, annotations}, logprobs,
  finish_reason}]` with finish_reason stop | length | tool_calls | content_filter |
  function_call, `system_fingerprint`, `service_tier`.
- [reasoning] a reasoning model can spend the whole budget thinking: empty content and
  finish_reason `length` (DESIGN.md "LVLM API facts"; model pages warn that low
  max_completion_tokens give "empty responses (where all the tokens are used on reasoning)").
  How many tokens an effort spends is not published: the stand-in's figures are its own and
  configurable (`ReasoningLengths`).
- [caching] prompt caching: only prompts of at least 1,024 tokens; hits are exact prefixes,
  counted in steps of 128 tokens above 1,024 (the prompt-caching guide, as restated in
  docs.apiyi.com/en/api-capabilities/openai/prompt-caching and portkey.ai's OpenAI caching page).
  The stand-in caches prefixes per answering model, across synchronous and batch requests.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lvlmva.simulation.openai_content import REPLY_PRIMING, Segment, text_tokens

__all__ = [
    "AnswerShape",
    "PrefixCache",
    "ReasoningLengths",
    "Shaped",
    "completion_body",
    "shape_answer",
    "usage_body",
]

FinishReason = Literal["stop", "length", "content_filter"]
CACHE_MIN_TOKENS, CACHE_STEP = 1024, 128
REFUSAL = "I'm sorry, but I can't help with that request."
_FILLER = " and, on reflection, more of the same"


@dataclass(frozen=True)
class ReasoningLengths:
    """Hidden reasoning tokens a reasoning model spends per `reasoning_effort` (the stand-in's
    own figures: OpenAI publishes none). With the defaults, `medium` (the gpt-5 and o-series
    default) spends 1,024 tokens: a `max_completion_tokens` of 1,024 leaves nothing to answer."""

    by_effort: Mapping[str, int] = field(
        default_factory=lambda: {
            "none": 0,
            "minimal": 32,
            "low": 256,
            "medium": 1024,
            "high": 4096,
            "xhigh": 8192,
            "max": 16384,
        }
    )

    def tokens(self, effort: str | None) -> int:
        return int(self.by_effort.get(effort or "none", 0))


class PrefixCache:
    """Prompt prefixes seen per model, at the granularity of message pieces (role markers, text
    parts, images): `cached_tokens` is the longest seen prefix, rounded down to the API's
    steps, then the prompt's prefixes are remembered (the oldest forgotten past `capacity`)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def lookup_and_store(self, model: str, segments: Sequence[Segment]) -> int:
        digest = hashlib.sha256(model.encode()).hexdigest()
        total = sum(s.tokens for s in segments) + REPLY_PRIMING
        matched, running, chain = 0, 0, []
        for segment in segments:  # a chained digest stands for the whole prefix up to here
            piece = f"{digest}\x1f{segment.kind}\x1f{segment.key}".encode()
            digest = hashlib.sha256(piece).hexdigest()
            running += segment.tokens
            chain.append(digest)
            if digest in self._seen:
                matched = running
        for digest in chain:
            self._seen[digest] = None
            self._seen.move_to_end(digest)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        if total < CACHE_MIN_TOKENS or matched < CACHE_MIN_TOKENS:
            return 0
        return CACHE_MIN_TOKENS + (matched - CACHE_MIN_TOKENS) // CACHE_STEP * CACHE_STEP

    def clear(self) -> None:
        self._seen.clear()


AnswerShape = Literal["normal", "truncate", "content_filter", "refusal"]


@dataclass(frozen=True)
class Shaped:
    """One choice as answered: visible content (None when filtered or refused), finish reason,
    and its completion tokens (reasoning included)."""

    content: str | None
    refusal: str | None
    finish_reason: FinishReason
    completion_tokens: int
    reasoning_tokens: int


def _cut(text: str, tokens: int) -> str:
    return text[: max(tokens, 0) * 4]


def shape_answer(text: str, budget: int, reasoning: int, shape: AnswerShape = "normal") -> Shaped:
    """The answer `text` within a completion budget of `budget` tokens, of which `reasoning`
    go to hidden reasoning first. `shape` applies an injected fault: `truncate` makes the model
    run on past the budget, `content_filter` withholds the content, `refusal` refuses."""
    reasoning = min(reasoning, budget)
    room = budget - reasoning
    if shape == "refusal":
        used = min(room, text_tokens(REFUSAL))
        return Shaped(None, _cut(REFUSAL, used), "stop", reasoning + used, reasoning)
    if shape == "content_filter":
        used = min(room, text_tokens(text) // 2)
        return Shaped(None, None, "content_filter", reasoning + used, reasoning)
    if shape == "truncate":
        while text_tokens(text) <= room:
            text += _FILLER * max(1, (room * 4 - len(text)) // len(_FILLER) + 1)
    needed = text_tokens(text)
    if needed > room:
        return Shaped(_cut(text, room), None, "length", budget, reasoning)
    return Shaped(text, None, "stop", reasoning + needed, reasoning)


def usage_body(prompt: int, cached: int, choices: Sequence[Shaped]) -> dict[str, Any]:
    completion = sum(c.completion_tokens for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": sum(c.reasoning_tokens for c in choices),
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


_ALPHABET = string.ascii_letters + string.digits


def random_id(prefix: str, rng: random.Random, length: int = 29) -> str:
    """An id in the API's style (`chatcmpl-` + 29 letters and digits), from `rng`."""
    return prefix + "".join(rng.choice(_ALPHABET) for _ in range(length))


def completion_body(
    *,
    completion_id: str,
    created: int,
    model: str,
    choices: Sequence[Shaped],
    usage: Mapping[str, Any],
    logprobs: Sequence[Mapping[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """A `chat.completion` object as the API returns it (`logprobs`: each choice's, when
    they were asked for)."""
    fingerprint = "fp_" + hashlib.sha256(model.encode()).hexdigest()[:10]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {
                    "role": "assistant",
                    "content": c.content,
                    "refusal": c.refusal,
                    "annotations": [],
                },
                "logprobs": None if logprobs is None else logprobs[i],
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ],
        "usage": dict(usage),
        "service_tier": "default",
        "system_fingerprint": fingerprint,
    }
