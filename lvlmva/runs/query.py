"""Filters and sort orders over a run's samples, turned into one parameterised SQL clause."""

from __future__ import annotations

from dataclasses import dataclass

from lvlmva.errors import ConfigError
from lvlmva.runs.records import STATUSES

SORT_KEYS = {
    "index": "idx",
    "confidence": "confidence",
    "masked": "eff_masked_share",
    "agreement": "min_agreement",
    "cost": "cost_usd",
    "label": "label",
    "overrides": "n_overrides",
}


@dataclass(frozen=True)
class RunQuery:
    """Which samples, in which order. Empty tuples and None mean "any".

    `labels` / `predictions`: ground-truth / predicted class ids; `vote_disagreement`: some
    colour's Critic votes were split (agreement < 1); `max_confidence`: the prediction's
    confidence is below it; `min_masked` / `max_masked`: bounds of the effective masked share
    of the image; `truth_disagreement`: an effective verdict differs from the ground truth
    (runs that store it); `overridden`: only reviewed (True) or untouched (False) samples;
    `misclassified`: prediction differs from the label. Ties sort by index.
    """

    labels: tuple[int, ...] = ()
    predictions: tuple[int, ...] = ()
    statuses: tuple[str, ...] = ()
    vote_disagreement: bool = False
    max_confidence: float | None = None
    min_masked: float | None = None
    max_masked: float | None = None
    truth_disagreement: bool = False
    overridden: bool | None = None
    misclassified: bool = False
    sort: str = "index"
    descending: bool = False

    def __post_init__(self) -> None:
        if self.sort not in SORT_KEYS:
            raise ConfigError(f"unknown sort {self.sort!r}; choose one of {sorted(SORT_KEYS)}")
        bad = [s for s in self.statuses if s not in STATUSES]
        if bad:
            raise ConfigError(f"unknown statuses {bad}; choose from {list(STATUSES)}")
        for name in ("min_masked", "max_masked", "max_confidence"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {value}")

    def where(self) -> tuple[str, list[object]]:
        """The SQL condition (on table `samples`) and its parameters."""
        parts: list[str] = []
        params: list[object] = []
        for column, values in (
            ("label", self.labels),
            ("prediction", self.predictions),
            ("status", self.statuses),
        ):
            if values:
                parts.append(f"{column} IN ({', '.join('?' * len(values))})")
                params.extend(values)
        if self.vote_disagreement:
            parts.append("min_agreement < 1.0")
        if self.max_confidence is not None:
            parts.append("confidence < ?")
            params.append(float(self.max_confidence))
        if self.min_masked is not None:
            parts.append("eff_masked_share >= ?")
            params.append(float(self.min_masked))
        if self.max_masked is not None:
            parts.append("eff_masked_share <= ?")
            params.append(float(self.max_masked))
        if self.truth_disagreement:
            parts.append("truth_mismatch > 0")
        if self.overridden is not None:
            parts.append("n_overrides > 0" if self.overridden else "n_overrides = 0")
        if self.misclassified:
            parts.append("prediction IS NOT NULL AND prediction != label")
        return (" AND ".join(parts) or "1"), params

    def order_by(self) -> str:
        column = SORT_KEYS[self.sort]
        direction = "DESC" if self.descending else "ASC"
        if column == "idx":
            return f"idx {direction}"
        # NULLs (e.g. no confidence) last in both directions, then by index
        return f"{column} IS NULL, {column} {direction}, idx ASC"
