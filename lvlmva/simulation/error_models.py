"""How the simulated LVLM gets a verdict wrong: error models, and repeated samples of a question.

Each cluster of a Critic request gets a probability `p` of a wrong verdict from an error model,
computed from its `ClusterTraits` (is it truly spurious, how mixed, how small):

- ``independent``: ``p = 1 - verdict_accuracy`` for truly spurious clusters and
  ``1 - relevant_accuracy`` for the others, whatever the cluster looks like. Errors fall as often
  on a clear digit stroke as on an ambiguous blob: the pessimistic bound.
- ``ambiguity``: errors concentrate on ambiguous clusters, as real LVLM errors do (the method's
  J ablation: verdict accuracy 0.68 at J = 3, where clusters mix relevant and spurious pixels,
  against 0.84-0.86 at J = 5-9). The odds of an error are

      odds(p) = exp(b + MIX_WEIGHT * mixedness) * (REFERENCE_SIZE / size) ** SIZE_WEIGHT

  where `mixedness` is the share of the cluster's pixels on the other side of the spurious
  boundary (for a truly spurious cluster: its pixels off the spurious region; for the others:
  their pixels within `NEAR_BAND` of it) and `size` the cluster's share of the image area.
  The intercept `b` is solved (bisection) separately for spurious and for other clusters so that
  the mean error over a **fixed reference population** equals ``1 - verdict_accuracy`` and
  ``1 - relevant_accuracy``: the clusters of `lvlmva.simulation.ambiguity_reference` (synth-knee,
  J = 7, the setting of the real-model figures, which were measured on knee radiographs at the
  default J = 7). The intercept is never fitted to the run's own clusters: a per-run or per-image
  normalisation would hold the accuracy at the configured figure whatever J is, and so cancel
  the very effect the model exists for. On another task or J the accuracy is what that task's
  ambiguity gives relative to the reference (the report's measured verdict accuracy says it).

**Repeated samples** (the same image and clusters asked again with the colours listed in another
order, another wording, another temperature or seed): a share `systematic` of the error rate
is systematic (the cluster fools the simulation on every sample) and the rest is drawn afresh per
distinct request. With ``p_s = systematic * p``, a cluster is wrong on every sample when a draw
fixed by (seed, image, colour) falls in the top ``p_s``, else wrong on a sample with
``q = (p - p_s) / (1 - p_s)`` (a draw fixed by the request too): every single answer is still
wrong with probability exactly `p`, and self-consistency (a vote over samples) can remove only
the random part. `systematic = 1` gives the same answer to every sample (the simulator's
behaviour before repeated samples were modelled).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from lvlmva.errors import ConfigError
from lvlmva.simulation.clustermap import ClusterFinding
from lvlmva.simulation.critique import unit_draw

__all__ = [
    "DEFAULT_SYSTEMATIC",
    "ERROR_MODELS",
    "MIX_WEIGHT",
    "NEAR_BAND",
    "REFERENCE_SIZE",
    "SIZE_WEIGHT",
    "AmbiguityErrors",
    "ClusterTraits",
    "ErrorModel",
    "IndependentErrors",
    "build_error_model",
    "is_wrong",
]

MIX_WEIGHT = 6.0  # log-odds added by a fully mixed cluster (odds x 403 against a pure one)
SIZE_WEIGHT = 0.25  # a cluster 4x smaller has 4 ** 0.25 = 1.41x the odds of an error
REFERENCE_SIZE = 0.02  # cluster share of the image area at which size adds nothing
NEAR_BAND = 0.1  # share of the map's shorter side: "near" the spurious region
DEFAULT_SYSTEMATIC = 0.5  # half of every error rate repeats on every sample of a question


@dataclass(frozen=True)
class ClusterTraits:
    """What an error model may know about a cluster: the truth and how ambiguous it looks."""

    spurious: bool
    mixedness: float  # [0, 1], share of pixels on the other side of the spurious boundary
    size: float  # (0, 1], share of the image area

    @classmethod
    def of(cls, finding: ClusterFinding, area: int) -> ClusterTraits:
        """The traits of a finding of `find_spurious` on a map of `area` pixels."""
        pixels = max(1, finding.pixels)
        other = pixels - finding.overlap if finding.spurious else finding.near
        return cls(finding.spurious, other / pixels, finding.pixels / max(1, area))


class ErrorModel(Protocol):
    """The chance of a wrong verdict on a cluster; `identity` names the model and its settings
    in one string (it is part of the simulation's identity, hence of cache keys)."""

    name: str

    @property
    def identity(self) -> str: ...

    def error_probability(self, traits: ClusterTraits) -> float: ...


def _check_accuracy(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value}")
    return float(value)


class IndependentErrors:
    """The same error rate on every cluster of a kind (see the module docstring)."""

    name = "independent"

    def __init__(self, verdict_accuracy: float, relevant_accuracy: float) -> None:
        self.verdict_accuracy = _check_accuracy("verdict_accuracy", verdict_accuracy)
        self.relevant_accuracy = _check_accuracy("relevant_accuracy", relevant_accuracy)

    @property
    def identity(self) -> str:
        return f"independent(acc={self.verdict_accuracy:g},rel={self.relevant_accuracy:g})"

    def error_probability(self, traits: ClusterTraits) -> float:
        accuracy = self.verdict_accuracy if traits.spurious else self.relevant_accuracy
        return 1.0 - accuracy


Cells = Sequence[tuple[float, float, int]]  # (mixedness, log10 size, count)


def _ambiguity_logit(mixedness: float, log10_size: float) -> float:
    """The trait part of the log-odds of an error."""
    return MIX_WEIGHT * mixedness + SIZE_WEIGHT * math.log(10.0) * (
        math.log10(REFERENCE_SIZE) - log10_size
    )


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _solve_intercept(cells: Cells, target: float) -> float:
    """The intercept b with mean error `target` over the reference `cells` (bisection; -inf
    and +inf for targets 0 and 1)."""
    if target <= 0.0:
        return -math.inf
    if target >= 1.0:
        return math.inf
    total = sum(n for *_, n in cells)
    logits = [(_ambiguity_logit(m, s), n) for m, s, n in cells]

    def mean_error(b: float) -> float:
        return sum(n * _sigmoid(b + t) for t, n in logits) / total

    low, high = -60.0, 60.0
    for _ in range(100):
        mid = 0.5 * (low + high)
        if mean_error(mid) < target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


class AmbiguityErrors:
    """Errors that grow with a cluster's mixedness and smallness, calibrated on a fixed
    reference population (see the module docstring)."""

    name = "ambiguity"

    def __init__(self, verdict_accuracy: float, relevant_accuracy: float) -> None:
        from lvlmva.simulation import ambiguity_reference as reference

        self.verdict_accuracy = _check_accuracy("verdict_accuracy", verdict_accuracy)
        self.relevant_accuracy = _check_accuracy("relevant_accuracy", relevant_accuracy)
        self.reference = reference.NAME
        self._intercept = {
            True: _solve_intercept(reference.SPURIOUS, 1.0 - self.verdict_accuracy),
            False: _solve_intercept(reference.OTHER, 1.0 - self.relevant_accuracy),
        }

    @property
    def identity(self) -> str:
        return (
            f"ambiguity(acc={self.verdict_accuracy:g},rel={self.relevant_accuracy:g},"
            f"mix={MIX_WEIGHT:g},size={SIZE_WEIGHT:g}@{REFERENCE_SIZE:g},band={NEAR_BAND:g},"
            f"ref={self.reference})"
        )

    def error_probability(self, traits: ClusterTraits) -> float:
        b = self._intercept[traits.spurious]
        if math.isinf(b):
            return 0.0 if b < 0 else 1.0
        log10_size = math.log10(max(traits.size, 1e-6))
        return _sigmoid(b + _ambiguity_logit(traits.mixedness, log10_size))


ERROR_MODELS: dict[str, Callable[[float, float], ErrorModel]] = {
    IndependentErrors.name: IndependentErrors,
    AmbiguityErrors.name: AmbiguityErrors,
}


def build_error_model(name: str, verdict_accuracy: float, relevant_accuracy: float) -> ErrorModel:
    """The error model `name` (a key of `ERROR_MODELS`)."""
    try:
        factory = ERROR_MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown simulated error model {name!r}; use one of {', '.join(ERROR_MODELS)}"
        ) from None
    return factory(verdict_accuracy, relevant_accuracy)


def is_wrong(p: float, systematic: float, fixed: tuple[object, ...], sample: str) -> bool:
    """Whether a verdict with error probability `p` is wrong on the sample `sample` of the
    question `fixed` (seed, image, colour): systematically (on every sample) or at random (see
    the module docstring). Deterministic in its arguments."""
    stuck = systematic * p
    if unit_draw(*fixed) >= 1.0 - stuck:
        return True
    if stuck >= 1.0 or p <= stuck:
        return False
    return unit_draw(*fixed, "sample", sample) < (p - stuck) / (1.0 - stuck)
