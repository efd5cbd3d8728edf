"""The review API's query string to a `RunQuery`, and a reviewed sample to JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lvlmva.errors import ConfigError
from lvlmva.runs import ReviewedSample, RunQuery

PAGE_LIMIT = 200


def _ints(params: Mapping[str, str], name: str) -> tuple[int, ...]:
    raw = params.get(name, "").strip()
    try:
        return tuple(int(v) for v in raw.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated class ids, got {raw!r}") from None


def _number(params: Mapping[str, str], name: str) -> float | None:
    raw = params.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _flag(params: Mapping[str, str], name: str) -> bool:
    return params.get(name, "") in ("1", "true", "yes")


def parse_query(params: Mapping[str, str]) -> RunQuery:
    """`label=1,2&prediction=3&status=ok&votes=1&max_conf=0.6&min_masked=0&max_masked=0.2
    &truth=1&reviewed=1|0&misclassified=1&sort=confidence&desc=1`."""
    reviewed = params.get("reviewed", "")
    statuses = tuple(s for s in params.get("status", "").split(",") if s)
    return RunQuery(
        labels=_ints(params, "label"),
        predictions=_ints(params, "prediction"),
        statuses=statuses,
        vote_disagreement=_flag(params, "votes"),
        max_confidence=_number(params, "max_conf"),
        min_masked=_number(params, "min_masked"),
        max_masked=_number(params, "max_masked"),
        truth_disagreement=_flag(params, "truth"),
        overridden=None if reviewed == "" else reviewed in ("1", "true", "yes"),
        misclassified=_flag(params, "misclassified"),
        sort=params.get("sort", "index") or "index",
        descending=_flag(params, "desc"),
    )


def parse_page(params: Mapping[str, str]) -> tuple[int, int]:
    try:
        offset, limit = int(params.get("offset", 0)), int(params.get("limit", 60))
    except ValueError:
        raise ConfigError("offset and limit must be integers") from None
    if offset < 0 or not 1 <= limit <= PAGE_LIMIT:
        raise ConfigError(f"offset must be >= 0 and limit in [1, {PAGE_LIMIT}]")
    return offset, limit


def card(sample: ReviewedSample, class_names: tuple[str, ...]) -> dict[str, Any]:
    """What the grid shows of a sample."""
    r = sample.record
    truth_mismatch = None
    if sample.effective_verdicts is not None and r.spurious_colors is not None:
        truth_mismatch = sum(
            v != (c not in r.spurious_colors) for c, v in sample.effective_verdicts.items()
        )
    return {
        "index": r.index,
        "label": r.label,
        "class_name": r.class_name,
        "prediction": r.prediction,
        "prediction_name": None if r.prediction is None else class_names[r.prediction],
        "confidence": r.confidence,
        "status": r.status,
        "overrides": len(sample.overrides),
        "masked": sample.masked_share,
        "effective_masked": sample.effective_masked_share,
        "min_agreement": min(r.agreement.values()) if r.agreement else None,
        "truth_mismatch": truth_mismatch,
        "has_note": bool(sample.note),
        "generation": sample.generation,
        "has_images": "overlay" in sample.files,
    }


def detail(sample: ReviewedSample, class_names: tuple[str, ...]) -> dict[str, Any]:
    """What the sample view shows (the card plus clusters, verdicts, texts)."""
    r = sample.record
    return {
        **card(sample, class_names),
        "split": r.split,
        "colors": list(r.colors),
        "cluster_ids": list(r.cluster_ids),
        "verdicts": r.verdicts,
        "effective_verdicts": sample.effective_verdicts,
        "overridden": sample.overrides,
        "agreement": r.agreement,
        "spurious_colors": None if r.spurious_colors is None else list(r.spurious_colors),
        "critique": r.critique,
        "error": r.error,
        "note": sample.note,
        "shape": None if sample.shape is None else list(sample.shape),
        "provider_calls": r.provider_calls,
        "cache_hits": r.cache_hits,
        "cost_usd": r.cost_usd,
    }
