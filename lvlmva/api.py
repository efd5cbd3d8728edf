"""The public Python API in one import: `from lvlmva.api import align, CriticSettings`.

    result = await align(model, splits, "decoy-digits",
                         critic=CriticSettings(kind="openai", critic_model="gpt-4o"),
                         n_align=1000)

The pipeline itself lives in `lvlmva.pipeline`, the critic backends in `lvlmva.critics`.
"""

from lvlmva.critics import (
    CRITICS,
    SIMULATED_CRITIC_MODEL,
    SIMULATED_JUDGE_MODEL,
    CriticSettings,
    EngineLimits,
    SimulationSettings,
)
from lvlmva.pipeline import *  # noqa: F403
from lvlmva.pipeline import __all__ as _pipeline_names

__all__ = [
    "CRITICS",
    "SIMULATED_CRITIC_MODEL",
    "SIMULATED_JUDGE_MODEL",
    "CriticSettings",
    "EngineLimits",
    "SimulationSettings",
    *_pipeline_names,
]
