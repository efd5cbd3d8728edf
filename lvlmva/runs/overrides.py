"""A reviewer's changes to a run: verdict overrides and notes, each with an audit entry, and
the effective mask (the critic's verdicts with the overrides applied, through the mask rule)."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import numpy as np

from lvlmva.errors import DataError
from lvlmva.runs import rows
from lvlmva.runs.records import ReviewedSample

if TYPE_CHECKING:
    from lvlmva.runs.files import StoredArrays
    from lvlmva.runs.store import CritiqueRun


def plan(sample: ReviewedSample, color: str, verdict: bool) -> dict[str, bool] | None:
    """The effective verdicts after setting `color` to `verdict`; None if nothing changes."""
    record = sample.record
    if sample.effective_verdicts is None:
        raise DataError(
            f"sample {record.index} has no critic verdicts (status {record.status}); only "
            "critiqued samples can be overridden: rerun the critique for it"
        )
    if color not in sample.effective_verdicts:
        raise DataError(
            f"sample {record.index} has no cluster coloured {color!r}; its colours are "
            f"{list(record.colors)}"
        )
    if sample.effective_verdicts[color] == verdict:
        return None
    return {**sample.effective_verdicts, color: verdict}


def effective_mask(
    run: CritiqueRun,
    sample: ReviewedSample,
    soft: bool | None,
    verdicts: dict[str, bool] | None = None,
    stored: StoredArrays | None = None,
) -> np.ndarray | None:
    """The mask of `sample` under `verdicts` (default: its effective verdicts). Where these are
    the critic's own verdicts under the run's rule, the stored critic mask (the pipeline's
    float32 mask, bit for bit); otherwise the rule on the stored labels and responsibilities
    (`stored`: the sample's files, when the caller has them open already)."""
    verdicts = sample.effective_verdicts if verdicts is None else verdicts
    if verdicts is None:
        return None
    run_soft = run.manifest.masks == "soft"
    soft = run_soft if soft is None else soft
    stored = run.arrays(sample.record.index) if stored is None else stored
    if soft == run_soft and verdicts == sample.record.verdicts and stored.mask is not None:
        return stored.mask
    responsibilities = stored.responsibilities if soft else None
    if soft and responsibilities is None:
        raise DataError(
            f"sample {sample.record.index} has no responsibilities stored, so it has no soft "
            "mask; ask for hard masks (soft=False / --masks hard)"
        )
    record = sample.record
    return rows.compute_mask(
        stored.labels, record.colors, record.cluster_ids, verdicts, responsibilities, soft=soft
    )


def apply(
    conn: sqlite3.Connection,
    sample: ReviewedSample,
    color: str,
    verdict: bool,
    effective: dict[str, bool],
    share: float | None,
    note: str | None,
    reviewer: str | None,
) -> None:
    """Write one override (inside the caller's transaction)."""
    record = sample.record
    assert record.verdicts is not None and sample.effective_verdicts is not None
    override = None if verdict == record.verdicts[color] else int(verdict)
    remaining = {c for c in sample.overrides if c != color} | ({color} if override is not None
                                                               else set())
    conn.execute(
        "UPDATE clusters SET override = ? WHERE idx = ? AND color = ?",
        (override, record.index, color),
    )
    conn.execute(
        "UPDATE samples SET n_overrides = ?, eff_masked_share = ?, truth_mismatch = ? "
        "WHERE idx = ?",
        (
            len(remaining),
            share,
            rows.truth_mismatch(effective, record.spurious_colors),
            record.index,
        ),
    )
    conn.execute(
        "INSERT INTO audit (idx, kind, color, old_verdict, new_verdict, note, reviewer, at) "
        "VALUES (?, 'verdict', ?, ?, ?, ?, ?, ?)",
        (
            record.index,
            color,
            int(sample.effective_verdicts[color]),
            int(verdict),
            note,
            reviewer,
            rows.now(),
        ),
    )


def reset(conn: sqlite3.Connection, index: int, why: str) -> None:
    """Drop the overrides of sample `index` (inside the caller's transaction), each logged."""
    dropped = conn.execute(
        "SELECT color, critic, override FROM clusters WHERE idx = ? AND override IS NOT NULL",
        (index,),
    ).fetchall()
    conn.executemany(
        "INSERT INTO audit (idx, kind, color, old_verdict, new_verdict, note, reviewer, at) "
        "VALUES (?, 'reset', ?, ?, NULL, ?, NULL, ?)",
        [(index, r["color"], r["override"], why, rows.now()) for r in dropped],
    )


def note(conn: sqlite3.Connection, index: int, text: str | None, reviewer: str | None) -> None:
    """Set the note of sample `index` (inside the caller's transaction), logged."""
    conn.execute("UPDATE samples SET note = ? WHERE idx = ?", (text, index))
    conn.execute(
        "INSERT INTO audit (idx, kind, color, old_verdict, new_verdict, note, reviewer, at) "
        "VALUES (?, 'note', NULL, NULL, NULL, ?, ?, ?)",
        (index, text, reviewer, rows.now()),
    )
