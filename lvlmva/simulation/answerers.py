"""Who writes the content of the OpenAI stand-in's answers. The stand-in owns the protocol
(routes, validation, status codes, usage, headers); an `Answerer` only says what the assistant
message would say for a checked request.

- `SimulatedAnswerer`: the simulated LVLM (`SimulatedLVLM`), so critiques and verdicts stay
  meaningful (a simulation answering from ground-truth masks, never a model).
- `FixedAnswerer`: a constant text, or a function of the request, for protocol tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lvlmva.engine.types import ChatRequest, TokenLogprob
from lvlmva.errors import ConfigError
from lvlmva.simulation.simulator import SimulatedLVLM

__all__ = ["Answer", "Answerer", "CannotAnswer", "FixedAnswerer", "SimulatedAnswerer"]


class CannotAnswer(Exception):
    """The answerer cannot read this request (e.g. the simulated Judge got prose without
    verdict lines); the stand-in answers 400 with code `simulation_cannot_answer`."""


@dataclass(frozen=True)
class Answer:
    """An answer with its tokens' log-probabilities (None: the stand-in makes every token
    certain when they are asked for)."""

    text: str
    logprobs: tuple[TokenLogprob, ...] | None = None


@runtime_checkable
class Answerer(Protocol):
    def answer(self, request: ChatRequest) -> str | Answer: ...


class FixedAnswerer:
    """Answers `text`, or `text(request)` when it is a function."""

    def __init__(self, text: str | Callable[[ChatRequest], str] = "OK") -> None:
        self._text = text

    def answer(self, request: ChatRequest) -> str:
        return self._text(request) if callable(self._text) else self._text


class SimulatedAnswerer:
    """The simulated LVLM's answer text for a request. Its transport faults (429, 500,
    timeouts) and latency belong to the stand-in now and must be off here; its content faults
    (malformed JSON, schema violations, wrong colours) stay: they are what the "model" says.

    `SimulatedLVLM` has no public "answer text only" call, so this goes through `plan` /
    `deliver` with `max_tokens=0` (no truncation there: the stand-in applies the budget)."""

    def __init__(self, sim: SimulatedLVLM) -> None:
        faults = sim.faults
        if faults.rate_429 or faults.rate_500 or faults.rate_timeout:
            raise ConfigError(
                "the stand-in owns transport faults: build the SimulatedLVLM with rate_429, "
                "rate_500 and rate_timeout 0 and set them on the stand-in's faults instead"
            )
        self.sim = sim

    def answer(self, request: ChatRequest) -> Answer:
        outcome = self.sim.plan(dataclasses.replace(request, max_tokens=0))
        self.sim.deliver(outcome)
        if outcome.kind == "ok" and outcome.response is not None:
            return Answer(outcome.response.text, outcome.response.logprobs)
        raise CannotAnswer(outcome.message or f"the simulation answered {outcome.kind}")

    def __repr__(self) -> str:
        return f"SimulatedAnswerer({self.sim!r})"
