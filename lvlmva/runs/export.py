"""A run's summary (SQL aggregates) and the export of its reviewed verdicts and masks."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lvlmva.errors import DataError
from lvlmva.runs import overrides
from lvlmva.runs.query import RunQuery
from lvlmva.runs.records import STATUSES, ExportResult, RunSummary, ratio

if TYPE_CHECKING:
    from lvlmva.runs.store import CritiqueRun

VERDICTS_NAME = "verdicts.jsonl"
MASKS_NAME = "masks.npy"
INDICES_NAME = "indices.npy"


def summarize(conn: sqlite3.Connection) -> RunSummary:
    """Counts by status, review counts, costs and, where ground truth is stored, verdict
    accuracies of the critic and of the reviewed (effective) verdicts."""
    by_status = dict.fromkeys(STATUSES, 0)
    calls = hits = 0
    cost = 0.0
    for status, n, c, h, usd in conn.execute(
        "SELECT status, COUNT(*), SUM(provider_calls), SUM(cache_hits), SUM(cost_usd) "
        "FROM samples GROUP BY status"
    ):
        by_status[status] = n
        calls, hits, cost = calls + (c or 0), hits + (h or 0), cost + (usd or 0.0)
    reviewed, overridden, notes, truth = conn.execute(
        "SELECT COALESCE(SUM(n_overrides > 0), 0), COALESCE(SUM(n_overrides), 0), "
        "COALESCE(SUM(note IS NOT NULL), 0), COALESCE(SUM(has_truth AND status = 'ok'), 0) "
        "FROM samples"
    ).fetchone()
    audit = conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    # truth of a cluster: relevant (1) unless it overlaps a spurious region
    n, critic_ok, reviewed_ok, n_spurious, critic_no, reviewed_no = conn.execute(
        "SELECT COUNT(*), SUM(critic = 1 - spurious), "
        "SUM(COALESCE(override, critic) = 1 - spurious), SUM(spurious), "
        "SUM(spurious AND critic = 0), SUM(spurious AND COALESCE(override, critic) = 0) "
        "FROM clusters WHERE spurious IS NOT NULL AND critic IS NOT NULL"
    ).fetchone()
    return RunSummary(
        total=sum(by_status.values()),
        by_status=by_status,
        overridden_samples=reviewed,
        overridden_clusters=overridden,
        audit_entries=audit,
        notes=notes,
        provider_calls=calls,
        cache_hits=hits,
        cost_usd=cost,
        truth_samples=truth,
        critic_accuracy=ratio(critic_ok or 0, n),
        reviewed_accuracy=ratio(reviewed_ok or 0, n),
        critic_spurious_recall=ratio(critic_no or 0, n_spurious or 0),
        reviewed_spurious_recall=ratio(reviewed_no or 0, n_spurious or 0),
    )


def _verdict_line(sample) -> str:
    record = sample.record
    return json.dumps(
        {
            "index": record.index,
            "split": record.split,
            "label": record.label,
            "class_name": record.class_name,
            "colors": list(record.colors),
            "cluster_ids": list(record.cluster_ids),
            "critic_verdicts": record.verdicts,
            "verdicts": sample.effective_verdicts,
            "overridden": sorted(sample.overrides),
            "note": sample.note,
        },
        sort_keys=True,
    )


def export_run(run: CritiqueRun, out_dir: Path, soft: bool | None) -> ExportResult:
    """Stream every "ok" sample into `verdicts.jsonl` (critic and effective verdicts, overrides,
    note) and `masks.npy` [N, H, W] float16 (effective masks, row i is sample `indices[i]`),
    one sample in memory at a time. Files appear complete or not at all (temporary names)."""
    query = RunQuery(statuses=("ok",))
    total = run.count(query)
    if total == 0:
        raise DataError(f"{run.root} has no critiqued ('ok') samples to export")
    first = next(run.iter_samples(query, batch=1))
    if first.shape is None:
        raise DataError(f"sample {first.record.index} has no stored cluster labels")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in (VERDICTS_NAME, MASKS_NAME, INDICES_NAME)}
    tmp = {name: p.with_name(f".{p.name}.{os.getpid()}.tmp") for name, p in paths.items()}
    masks = np.lib.format.open_memmap(
        tmp[MASKS_NAME], mode="w+", dtype=np.float16, shape=(total, *first.shape)
    )
    indices = np.zeros(total, dtype=np.int64)
    count = 0
    with open(tmp[VERDICTS_NAME], "w") as lines:
        for sample in run.iter_samples(query):
            if count == total:
                break  # samples added while exporting wait for the next export
            if sample.shape != first.shape:
                raise DataError(
                    f"sample {sample.record.index} is {sample.shape}, sample "
                    f"{first.record.index} is {first.shape}: masks of mixed sizes cannot be "
                    "stacked into one array"
                )
            masks[count] = overrides.effective_mask(run, sample, soft)
            indices[count] = sample.record.index
            lines.write(_verdict_line(sample) + "\n")
            count += 1
    masks.flush()
    del masks
    if count < total:  # an "ok" sample was replaced by a failed one while exporting
        for path in tmp.values():
            path.unlink(missing_ok=True)
        raise DataError(f"{run.root} changed during the export; export again")
    with open(tmp[INDICES_NAME], "wb") as handle:
        np.save(handle, indices)
    for name, path in paths.items():
        os.replace(tmp[name], path)
    return ExportResult(
        verdicts=str(paths[VERDICTS_NAME]),
        masks=str(paths[MASKS_NAME]),
        indices=str(paths[INDICES_NAME]),
        count=count,
    )
