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
from lvlmva.pipeline import (
    AlignResult,
    CritiqueCounts,
    CritiqueOptions,
    SampleRecord,
    TrainOptions,
    align,
    align_sync,
    choose_alignment_indices,
    default_lambda,
    resolve_spec,
)

__all__ = [
    "CRITICS",
    "SIMULATED_CRITIC_MODEL",
    "SIMULATED_JUDGE_MODEL",
    "AlignResult",
    "CriticSettings",
    "CritiqueCounts",
    "CritiqueOptions",
    "EngineLimits",
    "SampleRecord",
    "SimulationSettings",
    "TrainOptions",
    "align",
    "align_sync",
    "choose_alignment_indices",
    "default_lambda",
    "resolve_spec",
]
