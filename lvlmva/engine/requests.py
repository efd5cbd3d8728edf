"""The requests of a Critic & Judge job, as pure functions of typed inputs.

One request body whatever sends it: the engine, `lvlmva estimate` and a batch run build their
requests here.

- Critic: system + user text with the job's images, free-text answer.
- Judge: system + user text with the critique, no images; the verdict schema rides along
  when the provider supports structured output.
- Fused: one call with the images and the schema, instead of the two.
- Re-ask: the first Judge (or fused) request, the answer that did not validate and the error.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from lvlmva.engine.cost import estimate_prompt_tokens
from lvlmva.engine.keys import template_sha256
from lvlmva.engine.model_params import rules_for
from lvlmva.engine.types import ChatRequest, CritiqueJob, ImagePart, Message, TextPart
from lvlmva.engine.validation import verdict_schema

__all__ = [
    "REASK",
    "STEPS",
    "PromptTemplates",
    "Sampling",
    "critic_request",
    "fused_request",
    "judge_request",
    "larger_budget",
    "prompt_variables",
    "reask_request",
    "shared_verdict_schema",
    "step_template_sha256",
    "with_budget",
]

STEPS = ("critic", "judge", "fused")
RENDER_MEMO = 512  # rendered prompts remembered (see `render`)
REASK = (
    "That answer could not be used: {error}. Answer again with only the JSON object, one entry "
    'for each of these colours: {colors}; every verdict must be "yes" or "no".'
)


class Template(Protocol):
    sha256: str

    def render(self, variables: Mapping[str, str]) -> str: ...


class PromptTemplates(Protocol):
    """What requests need of `lvlmva.prompts.PromptSet`: a system and a user template for
    each step."""

    critic_system: Template
    critic_user: Template
    judge_system: Template
    judge_user: Template
    fused_system: Template
    fused_user: Template


@dataclass(frozen=True)
class Sampling:
    """The settings the requests of a run carry, as asked for; each model family's rules
    (`lvlmva.engine.model_params`) decide what is sent: `temperature` is left out when None
    and for models that allow only their default, `max_tokens` (the output budget, reasoning
    included; None: the family's default) is capped at the model's limit, `reasoning_effort`
    is sent when set to models that take one, and `image_detail` (a `DETAILS` policy, "fit"
    by default) rides on requests with images; `verdict_logprobs` asks for token
    log-probabilities with that many alternatives, where the model gives them (the Critic's
    verdict lines and the Judge's or fused call's verdicts are read from them)."""

    temperature: float | None = 0.0
    max_tokens: int | None = None
    seed: int | None = 0
    reasoning_effort: str | None = None
    image_detail: str | None = "fit"
    verdict_logprobs: int | None = None


def prompt_variables(job: CritiqueJob) -> dict[str, str]:
    """The job's template variables plus those the engine adds: `n_clusters`, `colors`
    (", "-joined) and `image_names`."""
    return {
        **job.variables,
        "n_clusters": str(len(job.colors)),
        "colors": ", ".join(job.colors),
        "image_names": ", ".join(image.name for image in job.images),
    }


def step_template_sha256(prompts: PromptTemplates, step: str) -> str:
    """The hash of the two templates of `step` (part of its cache key)."""
    system, user = _templates(prompts, step)
    return template_sha256(system.sha256, user.sha256)


@functools.lru_cache(maxsize=1024)
def shared_verdict_schema(colors: tuple[str, ...]) -> dict[str, Any]:
    """`verdict_schema(colors)`, built once per colour set and shared: never modify it."""
    return verdict_schema(colors)


def critic_request(
    prompts: PromptTemplates, job: CritiqueJob, *, model: str, sampling: Sampling
) -> ChatRequest:
    return _request(prompts, "critic", prompt_variables(job), job.images, model, sampling, None)


def judge_request(
    prompts: PromptTemplates,
    job: CritiqueJob,
    critique: str,
    *,
    model: str,
    sampling: Sampling,
    structured: bool,
) -> ChatRequest:
    """The Judge's request for `critique`; `structured`: send the verdict schema."""
    variables = {**prompt_variables(job), "critique": critique}
    schema = shared_verdict_schema(job.colors) if structured else None
    return _request(prompts, "judge", variables, (), model, sampling, schema)


def fused_request(
    prompts: PromptTemplates,
    job: CritiqueJob,
    *,
    model: str,
    sampling: Sampling,
    structured: bool,
) -> ChatRequest:
    schema = shared_verdict_schema(job.colors) if structured else None
    return _request(prompts, "fused", prompt_variables(job), job.images, model, sampling, schema)


def reask_request(
    first: ChatRequest, answer: str, error: object, colors: tuple[str, ...]
) -> ChatRequest:
    """`first` followed by the `answer` that did not validate and a request to answer again,
    naming the `error` (a `VerdictValidationError`'s text is precise enough to act on)."""
    reask = REASK.format(error=error, colors=", ".join(colors))
    messages = (*first.messages, Message.text("assistant", answer), Message.text("user", reask))
    return replace(first, messages=messages)


def render(template: Template, variables: Mapping[str, str]) -> str:
    """`template.render(variables)`, remembered by the values of the variables the template
    uses (its `variables`, when it lists them): system prompts and class-dependent text repeat
    from job to job, and rendering them was a tenth of the engine's own CPU per job. The text
    is a function of those values alone, so the memo changes no request."""
    try:
        names = _names_of(template)
        key = (template, *(variables[name] for name in names)) if names is not None else None
        text = _RENDERED.get(key) if key is not None else None
    except (KeyError, TypeError):  # a missing variable (render explains it), unhashable values
        return template.render(variables)
    if text is None:
        text = template.render(variables)
        if key is not None:
            if len(_RENDERED) >= RENDER_MEMO:
                _RENDERED.clear()
            _RENDERED[key] = text
    return text


_RENDERED: dict[tuple[Any, ...], str] = {}


@functools.lru_cache(maxsize=64)
def _names_of(template: Template) -> tuple[str, ...] | None:
    names = getattr(template, "variables", None)
    return None if names is None else tuple(sorted(names))


def _templates(prompts: PromptTemplates, step: str) -> tuple[Template, Template]:
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}: use one of {', '.join(STEPS)}")
    return getattr(prompts, f"{step}_system"), getattr(prompts, f"{step}_user")


def _request(
    prompts: PromptTemplates,
    step: str,
    variables: Mapping[str, str],
    images: tuple[ImagePart, ...],
    model: str,
    sampling: Sampling,
    schema: Mapping[str, Any] | None,
) -> ChatRequest:
    system, user = _templates(prompts, step)
    rules = rules_for(model)
    effort = sampling.reasoning_effort if rules.efforts != () else None  # chat models take none
    return ChatRequest(
        model=model,
        messages=(
            Message.text("system", render(system, variables)),
            Message("user", (TextPart(render(user, variables)), *images)),
        ),
        temperature=rules.temperature(sampling.temperature, effort),
        max_tokens=rules.max_tokens(sampling.max_tokens),
        seed=sampling.seed,
        response_schema=schema,
        reasoning_effort=effort,
        image_detail=sampling.image_detail if images else None,
        top_logprobs=rules.top_logprobs(sampling.verdict_logprobs, effort),
    )


def with_budget(request: ChatRequest, max_tokens: int) -> ChatRequest:
    """`request` with a larger output budget (an answer cut at the limit is asked again so)."""
    return replace(request, max_tokens=max_tokens)


def larger_budget(request: ChatRequest, tpm: float | None) -> int | None:
    """Twice the request's output budget within the model's limit and so that the request
    stays within half of `tpm` (None: no larger one). A request near tpm would stall the run:
    the `RateLimiter` refills tpm less its largest request per window."""
    limit = rules_for(request.model).max_output_tokens
    larger = request.max_tokens * 2 if limit is None else min(request.max_tokens * 2, limit)
    if tpm is not None:
        larger = min(larger, math.floor(tpm / 2) - estimate_prompt_tokens(request))
    return larger if larger > request.max_tokens else None
