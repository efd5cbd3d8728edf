"""How distinguishable the cluster colours stay for colour-blind reviewers.

Colour-vision deficiency is simulated with the matrices of Machado, Oliveira & Fernandes (2009,
severity 1.0) applied in linear RGB; distances are CIE76 Delta E in CIELAB (D65). A Delta E
near 2 is the threshold of a just-noticeable difference; chips and outlines should stay far
above it. The app never relies on colour alone (chips carry numbers and names, clusters are
outlined and numbered), so these figures describe the secondary cue.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lvlmva.vision.palette import PALETTE

SIMULATIONS: dict[str, np.ndarray] = {
    "normal": np.eye(3),
    "protanopia": np.array([[0.152286, 1.052583, -0.204868],
                            [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968],
                              [0.280085, 0.672501, 0.047413],
                              [-0.011820, 0.042940, 0.968881]]),
    "tritanopia": np.array([[1.255528, -0.076749, -0.178779],
                            [-0.078411, 0.930809, 0.147602],
                            [0.004733, 0.691367, 0.303900]]),
}

_RGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805],
                        [0.2126, 0.7152, 0.0722],
                        [0.0193, 0.1192, 0.9505]])
_WHITE = np.array([0.95047, 1.0, 1.08883])


def _linear(rgb: np.ndarray) -> np.ndarray:
    c = rgb / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def to_lab(rgb: np.ndarray, simulation: str = "normal") -> np.ndarray:
    """CIELAB [N, 3] of sRGB colours [N, 3] (0-255) as seen under `simulation`."""
    linear = np.clip(_linear(np.asarray(rgb, np.float64)) @ SIMULATIONS[simulation].T, 0, 1)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])],
                    axis=1)


@dataclass(frozen=True)
class PairDistance:
    simulation: str
    distance: float
    pair: tuple[str, str]


def closest_pair(names: Sequence[str], simulation: str,
                 palette: Mapping[str, tuple[int, int, int]] = PALETTE) -> PairDistance:
    """The two colours of `names` that look most alike under `simulation`, and their Delta E."""
    lab = to_lab(np.array([palette[n] for n in names]), simulation)
    best = min(itertools.combinations(range(len(names)), 2),
               key=lambda ij: float(np.linalg.norm(lab[ij[0]] - lab[ij[1]])))
    distance = float(np.linalg.norm(lab[best[0]] - lab[best[1]]))
    return PairDistance(simulation, distance, (names[best[0]], names[best[1]]))


def worst_case(names: Sequence[str], simulations: Sequence[str] = tuple(SIMULATIONS)) -> float:
    """The smallest pairwise Delta E of `names` over `simulations`."""
    return min(closest_pair(names, s).distance for s in simulations)


def maximin_order(names: Sequence[str] = tuple(PALETTE), first: str = "blue") -> list[str]:
    """A proposed order: each next colour is the one farthest (in the worst simulation) from
    those already chosen, so the first J colours (clusters are numbered by weight) stay as far
    apart as they can for every J. Starts with `first`."""
    labs = {s: dict(zip(names, to_lab(np.array([PALETTE[n] for n in names]), s), strict=True))
            for s in SIMULATIONS}
    order = [first]
    while len(order) < len(names):
        def gap(candidate: str) -> float:
            return min(float(np.linalg.norm(labs[s][candidate] - labs[s][c]))
                       for s in SIMULATIONS for c in order)

        order.append(max((n for n in names if n not in order), key=gap))
    return order


AVOID_EARLY = ("red", "grey", "white")
"""Late in the proposed order: red sits on red markers and lesions in some datasets, grey and
white vanish on greyscale images (radiographs, digits)."""


def proposed_order(avoid_early: Sequence[str] = AVOID_EARLY) -> list[str]:
    """The maximin order (over every start colour) of the palette without `avoid_early`,
    best at J = 7 (the default cluster count), then J = 5 and 9; `avoid_early` follow."""
    rest = [n for n in PALETTE if n not in avoid_early]

    def score(order: list[str]) -> tuple[float, ...]:
        return tuple(worst_case(order[:j]) for j in (7, 5, 9) if j <= len(order))

    best = max((maximin_order(rest, first=f) for f in rest), key=score)
    return best + [n for n in PALETTE if n in avoid_early]
