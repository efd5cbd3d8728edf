"""`CritiqueRun`: one durable critique run on disk (manifest, SQLite rows, sample files)."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lvlmva.errors import DataError
from lvlmva.runs import files, overrides, rows
from lvlmva.runs.query import RunQuery
from lvlmva.runs.records import (
    STORE_VERSION,
    AuditEntry,
    ExportResult,
    MissingSample,
    Page,
    ReviewedSample,
    RunManifest,
    RunRecord,
    RunSummary,
    SampleArrays,
)
from lvlmva.runs.schema import DB_NAME, connect

MANIFEST_NAME = "manifest.json"
LOCK_NAME = "writer.lock"
_MAX_PAGE = 1000


def _read_manifest(root: Path) -> RunManifest:
    if not root.exists():
        raise DataError(f"no critique run at {root}: the folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a critique run folder")
    path = root / MANIFEST_NAME
    if not path.is_file() or not (root / DB_NAME).is_file():
        raise DataError(
            f"{root} is not a critique run (no {MANIFEST_NAME} and {DB_NAME}); "
            "give the folder that `lvlmva critique` wrote"
        )
    try:
        data = json.loads(path.read_text())
        version = int(data.get("store_version", 0))
    except (ValueError, TypeError, AttributeError):
        raise DataError(f"{path} is not a valid run manifest (not a JSON object)") from None
    if version > STORE_VERSION:
        raise DataError(
            f"{root} was written by a newer lvlm-va (store version {version}, this one reads up "
            f"to {STORE_VERSION}); upgrade lvlm-va to open it"
        )
    return RunManifest.from_json(path.read_text(), str(path))


class CritiqueRun:
    """A critique run: create it with `CritiqueRun.create`, reopen it with `CritiqueRun.open`.

    Thread-safe (one lock around the connection). Several processes may read at once; one fills
    it (`add` takes a per-run writer lock), and overrides from a reviewer may land meanwhile.
    Use as a context manager or call `close`.
    """

    def __init__(self, root: Path, manifest: RunManifest, *, sync: bool = True) -> None:
        self.root = root
        self._manifest = manifest
        self._sync = sync
        self._lock = threading.RLock()
        self._conn = connect(root / DB_NAME)
        self._conn.row_factory = sqlite3.Row
        self._writer_fd: int | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, manifest: RunManifest, *, sync: bool = True):
        """Start a new run in `path` (missing or empty). `sync=False` skips fsync (faster,
        still safe against a killed process, not against a power cut)."""
        from lvlmva import __version__

        root = Path(path).expanduser()
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise DataError(
                f"{root} already exists and is not empty; open it with CritiqueRun.open "
                "(to resume or review) or choose a new folder"
            )
        root.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC)
        manifest = dataclasses.replace(
            manifest,
            run_id=manifest.run_id or f"{stamp:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}",
            created=manifest.created or stamp.isoformat(timespec="seconds"),
            library_version=manifest.library_version or __version__,
            store_version=STORE_VERSION,
        )
        connect(root / DB_NAME, create=True).close()
        files.write_atomic(root / MANIFEST_NAME, manifest.to_json().encode(), sync=sync)
        return cls(root, manifest, sync=sync)

    @classmethod
    def open(cls, path: str | os.PathLike, *, sync: bool = True) -> CritiqueRun:
        """Open an existing run; a one-line `DataError` for a missing folder, a folder that is
        not a run, or a run from a newer store version."""
        root = Path(path).expanduser()
        return cls(root, _read_manifest(root), sync=sync)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._writer_fd is not None:
                os.close(self._writer_fd)  # releases the flock
                self._writer_fd = None

    def __enter__(self) -> CritiqueRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def manifest(self) -> RunManifest:
        return self._manifest

    def extend_manifest(self, **extra: Any) -> RunManifest:
        """Add entries to the manifest's `extra`; changing an existing entry is refused."""
        with self._lock:
            current = _read_manifest(self.root)
            clash = [k for k, v in extra.items() if k in current.extra and current.extra[k] != v]
            if clash:
                raise DataError(f"manifest entries {clash} are already set; a manifest only grows")
            self._manifest = dataclasses.replace(current, extra={**current.extra, **extra})
            data = self._manifest.to_json().encode()
            files.write_atomic(self.root / MANIFEST_NAME, data, sync=self._sync)
            return self._manifest

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _take_writer_lock(self) -> None:
        if self._writer_fd is not None:
            return
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataError(
                f"another process is adding samples to {self.root}; one run has one writer"
            ) from None
        self._writer_fd = fd

    # --- filling ---------------------------------------------------------------------------

    def _check_record(self, record: RunRecord, arrays: SampleArrays | None) -> None:
        where = f"sample {record.index}"
        if record.split != self._manifest.split:
            raise DataError(f"{where} is from split {record.split!r}; this run covers "
                            f"{self._manifest.split!r}")
        n = len(self._manifest.class_names)
        for name, value in (("label", record.label), ("prediction", record.prediction)):
            if value is not None and not 0 <= int(value) < n:
                raise DataError(f"{where}: {name} {value} is not a class id of the {n} classes")
        if arrays is None:
            if record.status == "ok":
                raise DataError(f"{where}: an 'ok' sample needs its arrays (labels, images)")
            return
        if any(k < 0 for k in record.cluster_ids):
            raise DataError(f"{where}: cluster ids {record.cluster_ids} must be >= 0")
        resp = arrays.responsibilities
        if resp is not None and record.cluster_ids and max(record.cluster_ids) >= len(resp):
            raise DataError(f"{where}: cluster ids {record.cluster_ids} exceed the "
                            f"{len(resp)} responsibility maps")
        if record.status == "ok" and self._manifest.masks == "soft" and resp is None:
            raise DataError(f"{where}: this run uses soft masks, so it needs responsibilities")

    def add(
        self, record: RunRecord, arrays: SampleArrays | None = None, *, replace: bool = False
    ) -> bool:
        """Store one sample; True if stored. Re-adding an index already stored with status
        "ok" is a no-op (False) unless `replace=True`; a failed or not-run sample is replaced
        (a resumed run retries it). Replacing drops the sample's overrides (its clusters are
        new), recorded as "reset" entries in the audit trail; the note stays.
        A sample is either fully stored or absent, whatever moment the process dies."""
        self._check_record(record, arrays)
        self._take_writer_lock()
        with self._lock:
            old = self._conn.execute(
                "SELECT status, generation, note FROM samples WHERE idx = ?", (record.index,)
            ).fetchone()
        if old is not None and old["status"] == "ok" and not replace:
            return False
        generation = 0 if old is None else old["generation"] + 1
        shares: tuple[float | None, float | None] = (None, None)
        if arrays is not None and record.verdicts is not None:
            if arrays.mask is None:  # the critic's mask is the rule applied to its verdicts
                arrays = dataclasses.replace(arrays, mask=rows.compute_mask(
                    arrays.labels, record.colors, record.cluster_ids, record.verdicts,
                    arrays.responsibilities, soft=self._manifest.masks == "soft",
                ))
            share = float(arrays.mask.mean())  # no overrides yet: the effective mask is the same
            shares = (share, share)
        names = [] if arrays is None else files.write_sample_files(
            self.root, record.index, generation, arrays, sync=self._sync
        )
        values = rows.sample_values(
            record, generation, names, None if arrays is None else arrays.labels.shape, shares
        )
        values["note"] = None if old is None else old["note"]
        with self._transaction() as conn:
            if old is not None:
                overrides.reset(conn, record.index, "re-critiqued sample replaced")
                conn.execute("DELETE FROM clusters WHERE idx = ?", (record.index,))
            columns = ", ".join(values)
            conn.execute(
                f"INSERT OR REPLACE INTO samples ({columns}) VALUES "
                f"({', '.join('?' * len(values))})",
                tuple(values.values()),
            )
            conn.executemany(
                "INSERT INTO clusters VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows.cluster_values(record)
            )
        if old is not None:
            files.remove_generation(self.root, record.index, old["generation"])
        return True

    # --- reading ---------------------------------------------------------------------------

    def has(self, index: int) -> bool:
        """Whether sample `index` is stored (with any status)."""
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM samples WHERE idx = ?", (index,)).fetchone()
        return row is not None

    def done_indices(self, statuses: tuple[str, ...] = ("ok",)) -> Iterator[int]:
        """The stored indices with one of `statuses`, ascending, streamed in batches (a resumed
        critique skips these)."""
        query = RunQuery(statuses=statuses)
        last = -1
        while True:
            where, params = query.where()
            with self._lock:
                batch = self._conn.execute(
                    f"SELECT idx FROM samples WHERE idx > ? AND {where} ORDER BY idx LIMIT 10000",
                    (last, *params),
                ).fetchall()
            if not batch:
                return
            yield from (r[0] for r in batch)
            last = batch[-1][0]

    def _fetch(self, sample_rows: list[sqlite3.Row]) -> list[ReviewedSample]:
        if not sample_rows:
            return []
        ids = [r["idx"] for r in sample_rows]
        with self._lock:
            cluster_rows = self._conn.execute(
                f"SELECT * FROM clusters WHERE idx IN ({', '.join('?' * len(ids))}) "
                "ORDER BY idx, pos",
                ids,
            ).fetchall()
        by_index: dict[int, list[sqlite3.Row]] = {i: [] for i in ids}
        for c in cluster_rows:
            by_index[c["idx"]].append(c)
        return [rows.to_reviewed(r, by_index[r["idx"]]) for r in sample_rows]

    def get(self, index: int) -> ReviewedSample:
        """Sample `index` with its review state; DataError when it is not stored."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM samples WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise MissingSample(f"sample {index} is not in the run {self.root}")
        return self._fetch([row])[0]

    def count(self, query: RunQuery | None = None) -> int:
        where, params = (query or RunQuery()).where()
        with self._lock:
            return self._conn.execute(f"SELECT COUNT(*) FROM samples WHERE {where}",
                                      params).fetchone()[0]

    def query(self, query: RunQuery | None = None, *, offset: int = 0, limit: int = 50) -> Page:
        """One page of the samples matching `query`, in its order."""
        query = query or RunQuery()
        if not 1 <= limit <= _MAX_PAGE or offset < 0:
            raise DataError(f"limit must lie in [1, {_MAX_PAGE}] and offset >= 0")
        where, params = query.where()
        with self._lock:
            page = self._conn.execute(
                f"SELECT * FROM samples WHERE {where} ORDER BY {query.order_by()} "
                "LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
        return Page(tuple(self._fetch(page)), self.count(query), offset, limit)

    def __iter__(self) -> Iterator[ReviewedSample]:
        return self.iter_samples()

    def iter_samples(self, query: RunQuery | None = None, *, batch: int = 500):
        """Every sample matching `query` in index order, `batch` rows in memory at a time."""
        where, params = (query or RunQuery()).where()
        last = -1
        while True:
            with self._lock:
                page = self._conn.execute(
                    f"SELECT * FROM samples WHERE idx > ? AND {where} ORDER BY idx LIMIT ?",
                    (last, *params, batch),
                ).fetchall()
            if not page:
                return
            yield from self._fetch(page)
            last = page[-1]["idx"]

    def arrays(self, index: int) -> files.StoredArrays:
        """The stored files of sample `index`, read lazily."""
        with self._lock:
            row = self._conn.execute(
                "SELECT generation, files FROM samples WHERE idx = ?", (index,)
            ).fetchone()
        if row is None:
            raise MissingSample(f"sample {index} is not in the run {self.root}")
        return files.StoredArrays(self.root, index, row["generation"], json.loads(row["files"]))

    # --- review ----------------------------------------------------------------------------

    def override(
        self, index: int, color: str, verdict: bool, *, note: str | None = None,
        reviewer: str | None = None,
    ) -> ReviewedSample:
        """Set the reviewer's verdict of one colour (True = relevant), saved at once with an
        audit entry (old and new verdict, time, reviewer, note). Setting the critic's own
        verdict removes the override; setting the current verdict changes nothing."""
        verdict = bool(verdict)
        with self._transaction() as conn:  # read and write in one transaction: no lost update
            sample = self.get(index)
            changed = overrides.plan(sample, color, verdict)
            if changed is None:
                return sample
            mask = overrides.effective_mask(self, sample, None, changed)
            share = None if mask is None else float(mask.mean())
            overrides.apply(conn, sample, color, verdict, changed, share, note, reviewer)
        return self.get(index)

    def set_note(self, index: int, note: str | None, *, reviewer: str | None = None) -> None:
        """Set (or clear, with None or "") the sample's note, with an audit entry."""
        self.get(index)
        with self._transaction() as conn:
            overrides.note(conn, index, note or None, reviewer)

    def audit(self, index: int | None = None, *, limit: int = 1000) -> list[AuditEntry]:
        """The newest `limit` audit entries (of one sample, or of all), oldest first."""
        where, params = ("idx = ?", [index]) if index is not None else ("1", [])
        with self._lock:
            found = self._conn.execute(
                f"SELECT * FROM audit WHERE {where} ORDER BY id DESC LIMIT ?", (*params, limit)
            ).fetchall()
        return [rows.to_audit(r) for r in reversed(found)]

    def effective_verdicts(self, index: int) -> dict[str, bool] | None:
        """The critic's verdicts with the overrides applied (None: the critique failed)."""
        return self.get(index).effective_verdicts

    def effective_mask(self, index: int, *, soft: bool | None = None) -> np.ndarray | None:
        """The mask [H, W] from the effective verdicts, by `mask_from_verdicts` on the stored
        labels (and responsibilities when soft; default: the run's rule). None without
        verdicts."""
        return overrides.effective_mask(self, self.get(index), soft)

    def reviewed_masks(self, *, soft: bool | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(index, effective mask) of every "ok" sample, in index order (for re-aligning)."""
        for sample in self.iter_samples(RunQuery(statuses=("ok",))):
            yield sample.record.index, overrides.effective_mask(self, sample, soft)

    def summary(self) -> RunSummary:
        from lvlmva.runs.export import summarize

        with self._lock:
            return summarize(self._conn)

    def export(self, out_dir: str | os.PathLike, *, soft: bool | None = None) -> ExportResult:
        """Write the reviewed verdicts (JSONL) and effective masks (.npy) into `out_dir`."""
        from lvlmva.runs.export import export_run

        return export_run(self, Path(out_dir), soft)

    def has_ground_truth(self) -> bool:
        """Whether any sample stores ground-truth spurious colours."""
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM samples WHERE has_truth LIMIT 1").fetchone()
        return row is not None
