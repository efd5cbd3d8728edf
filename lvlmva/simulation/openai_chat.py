"""One chat-completions request through the stand-in's rules, for both the synchronous route and
batch lines: model lookup (404), validation (400), context length, rate limits (429, synchronous
only), injected faults, the answerer, the token budget and usage, and the ledger entry.

Checks run in this order: model, body rules, context window, rate limit. A request that breaks
several gets the first answer in that order (the API's own order is not documented).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lvlmva.simulation.answerers import Answer, Answerer, CannotAnswer
from lvlmva.simulation.clock import Clock
from lvlmva.simulation.logprobs import answer_logprobs, tokens_within, wire_logprobs
from lvlmva.simulation.openai_errors import (
    APIError,
    invalid_request,
    invalid_type,
    missing_required,
    model_not_found,
)
from lvlmva.simulation.openai_faults import FaultDraw, Faults, draw_faults
from lvlmva.simulation.openai_ledger import CallRecord, Channel, Ledger, body_sha256
from lvlmva.simulation.openai_models import CUSTOM, ModelFamily, family_for
from lvlmva.simulation.openai_ratelimit import RateLimiter, RateLimits
from lvlmva.simulation.openai_rules import ChatParams, validate_chat
from lvlmva.simulation.openai_usage import (
    PrefixCache,
    ReasoningLengths,
    Shaped,
    completion_body,
    random_id,
    shape_answer,
    usage_body,
)

__all__ = ["ChatEngine", "ChatOutcome", "ChatSettings"]

SIMULATED_MODELS = ("simulated", "simulated-critic", "simulated-judge")


@dataclass(frozen=True)
class ChatSettings:
    """What the stand-in serves: OpenAI's model families (`serve_openai_models`) and extra
    names answered as a gpt-4o-like non-reasoning model (`custom_models`); per-model rate
    limits; reasoning lengths per effort; the seed of ids and fault draws."""

    serve_openai_models: bool = True
    custom_models: tuple[str, ...] = SIMULATED_MODELS
    limits: RateLimits = field(default_factory=RateLimits)
    reasoning: ReasoningLengths = field(default_factory=ReasoningLengths)
    seed: int = 0


@dataclass(frozen=True)
class ChatOutcome:
    """The answer: HTTP status, JSON body, extra headers, and what the ledger recorded."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]
    record: CallRecord
    draw: FaultDraw = field(default_factory=FaultDraw)


class ChatEngine:
    """Answers chat-completions bodies under the stand-in's rules (see the module docstring)."""

    def __init__(
        self,
        answerer: Answerer,
        settings: ChatSettings,
        clock: Clock,
        ledger: Ledger,
        faults: Faults,
    ) -> None:
        self.answerer = answerer
        self.settings = settings
        self.clock = clock
        self.ledger = ledger
        self.faults = faults
        self.limiter = RateLimiter(settings.limits, clock)
        self.prefixes = PrefixCache()
        self._custom = {name: CUSTOM for name in settings.custom_models}
        self.reset()

    def reset(self) -> None:
        """Restart the fault and id streams, the rate windows and the prompt cache."""
        self.rng = random.Random(f"standin-faults:{self.settings.seed}")
        self.ids = random.Random(f"standin-ids:{self.settings.seed}")
        self.limiter.reset()
        self.prefixes.clear()

    def resolve(self, model: Any) -> tuple[ModelFamily, str]:
        """The family and answering name of `model` (APIError 400 / 404 if not served)."""
        if model is None:
            raise missing_required("model")
        if not isinstance(model, str):
            raise invalid_type("model", "a string", model)
        found = family_for(model, self._custom)
        if found is None or model in self.faults.missing_models:
            raise model_not_found(model)
        if found[0] is not CUSTOM and not self.settings.serve_openai_models:
            raise model_not_found(model)
        moved = self.faults.moved_aliases.get(model)
        return (found[0], moved) if moved else found

    def check(self, body: Any) -> ChatParams:
        """Model lookup, body rules and the context window: the checks a batch line and a
        synchronous request share (APIError if one fails)."""
        if not isinstance(body, Mapping):
            raise invalid_request("The request body must be a JSON object.")
        family, answer_model = self.resolve(body.get("model"))
        params = validate_chat(body, family, answer_model)
        prompt = params.parsed.prompt_tokens
        total = prompt + (params.max_output or 0)
        if total > family.context_window:
            raise invalid_request(
                f"This model's maximum context length is {family.context_window} tokens. "
                f"However, you requested {total} tokens ({prompt} in the messages, "
                f"{params.max_output or 0} in the completion). Please reduce the length of the "
                "messages or completion.",
                "messages",
                "context_length_exceeded",
            )
        return params

    def _record(self, channel: Channel, sha: str, status: int, **values: Any) -> CallRecord:
        return self.ledger.record_call(
            CallRecord(0, channel, body_sha256=sha, status=status, at=self.clock.now(), **values)
        )

    def _fail(
        self,
        exc: APIError,
        where: tuple[Channel, str, str | None],
        headers: Mapping[str, str],
        draw: FaultDraw,
        ids: Mapping[str, Any],
    ) -> ChatOutcome:
        channel, sha, model = where
        record = self._record(channel, sha, exc.status, model=model, code=exc.code, **ids)
        return ChatOutcome(exc.status, exc.body(), {**headers, **exc.headers}, record, draw)

    def run(self, body: Any, *, channel: Channel = "sync", **ids: Any) -> ChatOutcome:
        """Answer one chat-completions body. `ids` (batch_id, custom_id) go to the ledger."""
        sha = body_sha256(body)
        model = body.get("model") if isinstance(body, Mapping) else None
        model = model if isinstance(model, str) else None
        draw = draw_faults(self.faults, self.rng, synchronous=channel == "sync")
        headers: dict[str, str] = {}
        try:
            params = self.check(body)
            if channel == "sync":
                estimate = params.parsed.prompt_tokens + (params.max_output or 0)
                admission = self.limiter.admit(params.model, estimate)
                headers = admission.headers
                if admission.error is not None:
                    raise admission.error
            if draw.transport is not None:
                raise self._transport_error(draw, params.model, headers)
            answer = self.answerer.answer(params.request)
        except APIError as exc:
            return self._fail(exc, (channel, sha, model), headers, draw, ids)
        except CannotAnswer as exc:
            error = invalid_request(f"simulated answerer: {exc}", None, "simulation_cannot_answer")
            return self._fail(error, (channel, sha, model), headers, draw, ids)
        answer = Answer(answer) if isinstance(answer, str) else answer
        return self._answer(params, answer, draw, headers, channel, sha, ids)

    def _transport_error(self, draw: FaultDraw, model: str, headers: Mapping[str, str]):
        if draw.transport == "429":
            wait = self.faults.retry_after_s
            return APIError(
                429,
                f"Rate limit reached for {model} (injected by the stand-in's faults). Please try "
                f"again in {wait:g}s.",
                "requests",
                None,
                "rate_limit_exceeded",
                {**headers, "retry-after": str(max(0, round(wait)))},
            )
        if draw.transport == "500":
            return APIError(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            )
        return APIError(504, "The stand-in held this request (injected timeout).", "server_error",
                        None, "timeout")  # fmt: skip

    def _answer(
        self,
        params: ChatParams,
        answer: Answer,
        draw: FaultDraw,
        headers: Mapping[str, str],
        channel: Channel,
        sha: str,
        ids: Mapping[str, Any],
    ) -> ChatOutcome:
        family = params.family
        budget = params.max_output or family.max_output_tokens
        reasoning = self.settings.reasoning.tokens(params.effort) if family.reasoning else 0
        choices = [
            shape_answer(answer.text, budget, reasoning, draw.shape) for _ in range(params.n)
        ]
        prompt = params.parsed.prompt_tokens
        cached = self.prefixes.lookup_and_store(params.answer_model, params.parsed.segments)
        usage = usage_body(prompt, cached, choices)
        body = completion_body(
            completion_id=random_id("chatcmpl-", self.ids),
            created=int(self.clock.now()),
            model=params.answer_model,
            choices=choices,
            usage=usage,
            logprobs=[_logprobs(answer, c, params.request.top_logprobs) for c in choices],
        )
        record = self._record(
            channel,
            sha,
            200,
            model=params.model,
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=usage["completion_tokens"],
            reasoning_tokens=usage["completion_tokens_details"]["reasoning_tokens"],
            finish_reasons=tuple(c.finish_reason for c in choices),
            **ids,
        )
        return ChatOutcome(200, body, dict(headers), record, draw)


def _logprobs(answer: Answer, choice: Shaped, top: int | None) -> dict[str, Any] | None:
    """A choice's `logprobs` object when they were asked for and it has content: the
    answerer's tokens that the (possibly cut) content still holds, or certain ones."""
    if top is None or choice.content is None:
        return None
    tokens = answer.logprobs or answer_logprobs(choice.content, None, top)
    return wire_logprobs(tokens_within(tokens, choice.content))
