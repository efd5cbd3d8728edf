"""No LVLM at all: the dataset's true spurious masks become the correction masks. This is the
upper bound an LVLM critic is measured against, not a critic."""

from __future__ import annotations

from lvlmva.critics.base import CriticBackend
from lvlmva.critics.settings import CriticSettings


class GroundTruthCritic(CriticBackend):
    name = "ground-truth"
    summary = "no LVLM: the true spurious masks (the upper bound)"
    uses_llm = False
    answers_from_ground_truth = True

    def describe(self, settings: CriticSettings) -> str:
        return "Critic: none (ground-truth spurious masks used as correction masks: upper bound)"
