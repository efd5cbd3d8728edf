"""Rows of the run database to typed values and back, and the mask rule applied to a row."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np

from lvlmva.runs.records import AuditEntry, ReviewedSample, RunRecord
from lvlmva.vision.masks import mask_array


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def compute_mask(
    labels: np.ndarray,
    colors: Sequence[str],
    cluster_ids: Sequence[int],
    verdicts: Mapping[str, bool],
    responsibilities: np.ndarray | None,
    *,
    soft: bool,
) -> np.ndarray:
    """The mask [H, W] float32 by `lvlmva.vision.masks.mask_array`, the pipeline's own rule
    (numpy: opening or reviewing a run never loads torch)."""
    return mask_array(labels, colors, cluster_ids, verdicts,
                      responsibilities=responsibilities, soft=soft)


def truth_mismatch(verdicts: Mapping[str, bool] | None, spurious: Sequence[str] | None):
    """How many colours' verdicts differ from the ground truth (None when either is unknown):
    the truth of colour c is "yes" unless its cluster overlaps a spurious region."""
    if verdicts is None or spurious is None:
        return None
    return sum(bool(v) != (c not in spurious) for c, v in verdicts.items())


def sample_values(record: RunRecord, generation: int, files: list[str], shape, shares) -> dict:
    """The `samples` columns of a newly added record (no overrides yet)."""
    masked, effective = shares
    return {
        "idx": record.index,
        "split": record.split,
        "label": int(record.label),
        "class_name": record.class_name,
        "prediction": None if record.prediction is None else int(record.prediction),
        "confidence": None if record.confidence is None else float(record.confidence),
        "status": record.status,
        "critique": record.critique,
        "error": record.error,
        "provider_calls": int(record.provider_calls),
        "cache_hits": int(record.cache_hits),
        "cost_usd": float(record.cost_usd),
        "has_truth": int(record.spurious_colors is not None),
        "generation": generation,
        "files": json.dumps(files),
        "height": None if shape is None else int(shape[0]),
        "width": None if shape is None else int(shape[1]),
        "min_agreement": min(record.agreement.values()) if record.agreement else None,
        "masked_share": masked,
        "eff_masked_share": effective,
        "n_overrides": 0,
        "truth_mismatch": truth_mismatch(record.verdicts, record.spurious_colors),
        "added_at": now(),
    }


def cluster_values(record: RunRecord) -> list[tuple]:
    rows = []
    for pos, (color, cid) in enumerate(zip(record.colors, record.cluster_ids, strict=True)):
        critic = None if record.verdicts is None else int(record.verdicts[color])
        agreement = None if record.agreement is None else record.agreement[color]
        spurious = None if record.spurious_colors is None else int(color in record.spurious_colors)
        rows.append((record.index, pos, color, cid, critic, None, agreement, spurious))
    return rows


def to_reviewed(sample: sqlite3.Row, clusters: Sequence[sqlite3.Row]) -> ReviewedSample:
    """A `ReviewedSample` from its `samples` row and its `clusters` rows (in `pos` order)."""
    colors = tuple(c["color"] for c in clusters)
    has_verdicts = bool(clusters) and clusters[0]["critic"] is not None
    if sample["status"] == "ok" and not clusters:
        has_verdicts = True  # an image without clusters: empty verdicts
    verdicts = {c["color"]: bool(c["critic"]) for c in clusters} if has_verdicts else None
    agreement = (
        {c["color"]: c["agreement"] for c in clusters}
        if clusters and clusters[0]["agreement"] is not None
        else None
    )
    spurious = (
        tuple(c["color"] for c in clusters if c["spurious"]) if sample["has_truth"] else None
    )
    overrides = {c["color"]: bool(c["override"]) for c in clusters if c["override"] is not None}
    record = RunRecord(
        index=sample["idx"],
        split=sample["split"],
        label=sample["label"],
        class_name=sample["class_name"],
        status=sample["status"],
        colors=colors,
        cluster_ids=tuple(c["cluster_id"] for c in clusters),
        prediction=sample["prediction"],
        confidence=sample["confidence"],
        critique=sample["critique"],
        verdicts=verdicts,
        agreement=agreement,
        provider_calls=sample["provider_calls"],
        cache_hits=sample["cache_hits"],
        cost_usd=sample["cost_usd"],
        error=sample["error"],
        spurious_colors=spurious,
    )
    effective = None if verdicts is None else {**verdicts, **overrides}
    shape = None if sample["height"] is None else (sample["height"], sample["width"])
    return ReviewedSample(
        record=record,
        overrides=overrides,
        effective_verdicts=effective,
        note=sample["note"],
        masked_share=sample["masked_share"],
        effective_masked_share=sample["eff_masked_share"],
        shape=shape,
        generation=sample["generation"],
        files=tuple(json.loads(sample["files"])),
    )


def to_audit(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        index=row["idx"],
        kind=row["kind"],
        color=row["color"],
        old_verdict=_bool(row["old_verdict"]),
        new_verdict=_bool(row["new_verdict"]),
        note=row["note"],
        reviewer=row["reviewer"],
        at=row["at"],
    )
