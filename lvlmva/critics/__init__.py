"""Critic backends in a registry: `CRITICS[kind]` is the backend of a critic kind.

Adding a backend is one module (a `CriticBackend` subclass) and one entry here; the CLI's
`--critic` choices and options come from this table.

    backend = get_critic("openai")
    await backend.preflight(settings)
    session = await open_session(backend, settings, spec.family)
"""

from __future__ import annotations

from lvlmva.critics.base import CliOption, CriticBackend, CriticConnection
from lvlmva.critics.ground_truth import GroundTruthCritic
from lvlmva.critics.litellm import LiteLLMCritic
from lvlmva.critics.openai import OpenAICritic
from lvlmva.critics.session import CriticSession, open_session
from lvlmva.critics.settings import (
    SIMULATED_CRITIC_MODEL,
    SIMULATED_JUDGE_MODEL,
    CriticSettings,
    EngineLimits,
    RequestSettings,
    SimulationSettings,
)
from lvlmva.critics.simulated import SimulatedCritic
from lvlmva.errors import ConfigError

__all__ = [
    "CRITICS",
    "SIMULATED_CRITIC_MODEL",
    "SIMULATED_JUDGE_MODEL",
    "CliOption",
    "CriticBackend",
    "CriticConnection",
    "CriticSession",
    "CriticSettings",
    "EngineLimits",
    "RequestSettings",
    "SimulationSettings",
    "get_critic",
    "open_session",
]

CRITICS: dict[str, CriticBackend] = {
    backend.name: backend
    for backend in (SimulatedCritic(), OpenAICritic(), LiteLLMCritic(), GroundTruthCritic())
}


def get_critic(kind: str) -> CriticBackend:
    """The backend of critic `kind`; ConfigError naming the known kinds otherwise."""
    try:
        return CRITICS[kind]
    except KeyError:
        raise ConfigError(
            f"unknown critic {kind!r}: use one of {', '.join(CRITICS)}"
        ) from None
