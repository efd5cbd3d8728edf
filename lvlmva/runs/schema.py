"""The SQLite schema of a run and how a connection to it is opened.

One row per sample in `samples` (scalars and the derived columns the filters use), one row per
cluster in `clusters` (the critic's verdict, the reviewer's override, votes and ground truth),
and an append-only `audit` table. WAL mode: readers (the review app) never block the writer
(the critique), and a transaction is either fully in the database after a crash or not at all.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lvlmva.errors import DataError
from lvlmva.runs.records import STORE_VERSION

DB_NAME = "run.sqlite"

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    idx INTEGER PRIMARY KEY,
    split TEXT NOT NULL,
    label INTEGER NOT NULL,
    class_name TEXT NOT NULL,
    prediction INTEGER,
    confidence REAL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'not_run')),
    critique TEXT,
    error TEXT,
    provider_calls INTEGER NOT NULL DEFAULT 0,
    cache_hits INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    has_truth INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL,
    files TEXT NOT NULL,
    height INTEGER,
    width INTEGER,
    min_agreement REAL,
    masked_share REAL,
    eff_masked_share REAL,
    n_overrides INTEGER NOT NULL DEFAULT 0,
    truth_mismatch INTEGER,
    note TEXT,
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clusters (
    idx INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    color TEXT NOT NULL,
    cluster_id INTEGER NOT NULL,
    critic INTEGER,
    override INTEGER,
    agreement REAL,
    spurious INTEGER,
    PRIMARY KEY (idx, color)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    idx INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('verdict', 'note', 'reset')),
    color TEXT,
    old_verdict INTEGER,
    new_verdict INTEGER,
    note TEXT,
    reviewer TEXT,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_label ON samples (label, idx);
CREATE INDEX IF NOT EXISTS samples_prediction ON samples (prediction, idx);
CREATE INDEX IF NOT EXISTS samples_status ON samples (status, idx);
CREATE INDEX IF NOT EXISTS samples_confidence ON samples (confidence, idx);
CREATE INDEX IF NOT EXISTS samples_masked ON samples (eff_masked_share, idx);
CREATE INDEX IF NOT EXISTS samples_agreement ON samples (min_agreement, idx);
CREATE INDEX IF NOT EXISTS audit_idx ON audit (idx, id);
"""


def connect(path: Path, *, create: bool = False) -> sqlite3.Connection:
    """A connection to the run database at `path`, in WAL mode with a busy timeout.

    The connection may be used from several threads; the store serialises access with a lock.
    """
    try:
        conn = sqlite3.connect(
            path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: crash-safe, durable on fsync
        conn.execute("PRAGMA foreign_keys=ON")
        if create:
            conn.executescript(_DDL)
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('store_version', ?)", (str(STORE_VERSION),)
            )
        _check_version(conn, path)
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path} is not a readable run database ({exc})") from None
    return conn


def _check_version(conn: sqlite3.Connection, path: Path) -> None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()
    if row is None:
        raise DataError(f"{path} has no store version: it is not a critique run database")
    if int(row[0]) > STORE_VERSION:
        raise DataError(
            f"{path.parent} was written by a newer lvlm-va (store version {row[0]}, this one "
            f"reads up to {STORE_VERSION}); upgrade lvlm-va to open it"
        )
