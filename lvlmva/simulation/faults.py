"""Fault injection for the simulated LVLM: which failure a request gets, and how a JSON answer
is spoiled. Every spoiled answer is one that strict validation must reject."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar

from lvlmva.errors import ConfigError

__all__ = [
    "FaultRates",
    "TransportFault",
    "TransportRates",
    "check_shares",
    "draw_one",
    "spoil_json",
]

T = TypeVar("T")

TransportFault = Literal["429", "500", "timeout"]
JsonFault = Literal["malformed", "schema", "colors"]


@dataclass(frozen=True)
class TransportRates:
    """Per-request probabilities of the transport faults (429, 500, timeout), which together
    must not exceed 1."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0

    TRANSPORT: ClassVar[tuple[str, str, str]] = ("rate_429", "rate_500", "rate_timeout")

    def transport(self, rng: random.Random) -> TransportFault | None:
        """The transport fault one draw of `rng` gives, or None."""
        return draw_one(
            rng, (("429", self.rate_429), ("500", self.rate_500), ("timeout", self.rate_timeout))
        )


@dataclass(frozen=True)
class FaultRates(TransportRates):
    """Per-request probabilities. The transport faults apply to every request; the JSON faults
    apply to answers that are JSON (Judge and fused requests) that got through, and together
    must not exceed 1."""

    rate_malformed_json: float = 0.0
    rate_schema_violation: float = 0.0
    rate_wrong_colors: float = 0.0

    def __post_init__(self) -> None:
        check_shares(
            vars(self),
            self.TRANSPORT,
            ("rate_malformed_json", "rate_schema_violation", "rate_wrong_colors"),
        )

    def json(self, rng: random.Random) -> JsonFault | None:
        return draw_one(
            rng,
            (
                ("malformed", self.rate_malformed_json),
                ("schema", self.rate_schema_violation),
                ("colors", self.rate_wrong_colors),
            ),
        )


def check_shares(shares: Mapping[str, float], *groups: Sequence[str], label: str = "") -> None:
    """ConfigError unless every share is a probability and the shares of each group sum to at
    most 1 (`label` goes before a share's name in its message)."""
    for name, value in shares.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{label}{name} must be a probability in [0, 1], got {value}")
    for group in groups:
        if sum(shares[name] for name in group) > 1.0 + 1e-9:
            raise ConfigError(f"{' + '.join(group)} must not exceed 1")


def draw_one(rng: random.Random, options: Sequence[tuple[T, float]]) -> T | None:
    """The option whose share one draw of `rng` falls in (shares taken in order), else None."""
    u = rng.random()
    for value, share in options:
        if u < share:
            return value
        u -= share
    return None


def _dump(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


def spoil_json(
    entries: Sequence[tuple[str, str]],
    fault: JsonFault,
    rng: random.Random,
    palette: Sequence[str],
) -> str:
    """The answer `{"output": entries}` spoiled by `fault` (variant chosen with `rng`)."""
    good = [{"color": c, "verdict": v} for c, v in entries]
    if fault == "malformed":
        text = _dump({"output": good})
        variant = rng.randrange(3)
        if variant == 0:  # cut off mid-way, as when a reply hits a length limit
            return text[: rng.randrange(1, len(text) - 1)]
        if variant == 1:
            return f"Here are the verdicts you asked for: {text} Let me know if you need more."
        return text.replace('"', "'")
    if fault == "schema":
        variant = rng.randrange(4) if good else 2
        if variant == 0:
            i = rng.randrange(len(good))
            good[i] = {**good[i], "verdict": rng.choice(("maybe", "partly", "unclear"))}
            return _dump({"output": good})
        if variant == 1:
            i = rng.randrange(len(good))
            good[i] = {**good[i], "reason": "the cluster is partly on the object"}
            return _dump({"output": good})
        if variant == 2:
            return _dump({"verdicts": good})
        i = rng.randrange(len(good))
        return _dump({"output": [*good, dict(good[i])]})
    # wrong colour set: swap one colour for one not in the set, or drop one
    used = {c for c, _ in entries}
    unused = [c for c in palette if c not in used]
    if good and unused:
        i = rng.randrange(len(good))
        good[i] = {**good[i], "color": rng.choice(unused)}
    elif good:
        good.pop(rng.randrange(len(good)))
    else:
        good.append({"color": rng.choice(list(palette)), "verdict": "no"})
    return _dump({"output": good})
