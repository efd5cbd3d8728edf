"""The simulated Critic's prose and the simulated Judge's reading of it.

Every paragraph of a simulated critique ends with a line ``Verdict for <colour>: yes|no``
(the same closing line the Critic templates ask a real LVLM for), which `read_verdicts` parses.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = ["SimVerdict", "read_verdicts", "unit_draw", "write_critique"]

_VERDICT_LINE = re.compile(
    r"^[ \t*_>-]*verdict for[ \t*_]+(?P<color>[A-Za-z][A-Za-z0-9 _-]*?)[ \t*_]*:[ \t*_]*"
    r"(?P<verdict>yes|no)\b",
    re.IGNORECASE | re.MULTILINE,
)

SIMULATION_NOTE = "[lvlm-va simulated critic: answers derive from ground-truth masks]"


@dataclass(frozen=True)
class SimVerdict:
    """The simulated Critic's answer for one colour: `relevant` is its verdict ("yes"),
    `truly_spurious` the ground truth it was drawn from, `error_probability` the error
    model's chance that a verdict on this cluster is wrong."""

    color: str
    relevant: bool
    truly_spurious: bool
    row: float
    col: float
    share: float
    error_probability: float = 0.0

    @property
    def p_no(self) -> float:
        """The P("no") the simulation reports for this verdict: its verdict holds with
        probability 1 - `error_probability` (calibrated), but never less than a coin flip,
        as a model decoding its likelier word would say (clusters the error model gets wrong
        more often than not are reported at 0.5)."""
        p = min(self.error_probability, 0.5)
        return p if self.relevant else 1.0 - p


def unit_draw(*key: object) -> float:
    """A uniform number in [0, 1) fixed by `key` (SHA-256 based; same on every platform)."""
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _place(row: float, col: float) -> str:
    vertical = "upper" if row < 1 / 3 else ("lower" if row > 2 / 3 else "")
    horizontal = "left" if col < 1 / 3 else ("right" if col > 2 / 3 else "")
    if vertical and horizontal:
        return f"the {vertical}-{horizontal} corner"
    if vertical:
        return f"the {vertical} half, around the middle"
    if horizontal:
        return f"the middle of the {horizontal} side"
    return "the middle"


def _size(share: float) -> str:
    if share >= 0.4:
        return "a large part"
    if share >= 0.15:
        return "a moderate part"
    return "a small part"


_RELEVANT = (
    "It lies on the structure the class description asks for and I see no spurious feature "
    "under it, so it is relevant evidence for the class.",
    "What it covers matches the described features of the class; nothing spurious sits under it.",
)
_SPURIOUS = (
    "It lies on a feature named in the task notes as spurious rather than on the structure "
    "that defines the class, so the classifier should not rely on it.",
    "It sits on something unrelated to the class description - a known spurious feature - "
    "so it is not valid evidence.",
)


def write_critique(verdicts: Sequence[SimVerdict], *, key: str) -> str:
    """A critique in prose, one paragraph per colour, each ending with its verdict line."""
    paragraphs = [SIMULATION_NOTE]
    for v in verdicts:
        options = _RELEVANT if v.relevant else _SPURIOUS
        choice = options[int(unit_draw("wording", key, v.color) * len(options))]
        paragraphs.append(
            f"{v.color.capitalize()}: this cluster covers {_size(v.share)} of the highlighted "
            f"area ({v.share:.0%}), lying mainly in {_place(v.row, v.col)} of the image. {choice}\n"
            f"Verdict for {v.color}: {'yes' if v.relevant else 'no'}"
        )
    return "\n\n".join(paragraphs)


def read_verdicts(text: str, colors: Collection[str]) -> list[tuple[str, bool]]:
    """`(colour, relevant)` pairs of the ``Verdict for <colour>: yes|no`` lines in `text`,
    for colours in `colors` (matched without regard to case), first statement per colour."""
    lookup = {c.lower(): c for c in colors}
    out: dict[str, bool] = {}
    for match in _VERDICT_LINE.finditer(text):
        color = lookup.get(match.group("color").strip().lower())
        if color is not None and color not in out:
            out[color] = match.group("verdict").lower() == "yes"
    return list(out.items())
