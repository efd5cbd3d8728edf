"""The batch manifest: every step of every shard, and the shard of every request line.

It lives in `<cache dir>/batches/`: `manifest.sqlite3` (SQLite in WAL mode; each step is one
transaction, so a `kill -9` at any moment leaves the last committed step) and the shards'
files, `<shard>.input.jsonl` (what is uploaded, or exported), `<shard>.output.jsonl` and
`<shard>.errors.jsonl` (what the batch answered), each written to a temporary name, synced and
renamed, before the step that names it is committed.

A shard moves through `Step`s: written -> uploaded -> creating (a create was sent; if the
process died before its answer, the batch is found again by its metadata) -> created ->
polled (status and counts as last seen) -> downloaded (its output and error files are here)
-> ingested (every line's outcome recorded, the answers in the answer cache). A shard of mode
`files` goes written -> exported -> ingested instead.

A line is keyed by (endpoint, custom_id); its `outcome` is None while its shard has not
resolved it, else "answered", "failed" (the reason in `detail`) or "retry" (expired, cancelled
or a transient error: it may go into a later shard, which counts one more `tries`). A line
that is pending in an unfinished shard or answered is never put into another shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from lvlmva.errors import ConfigError

__all__ = ["SPLIT_INTO", "BatchStore", "LineRecord", "ShardRecord", "Step", "write_atomic"]

MANIFEST = "manifest.sqlite3"
FILE_KINDS = ("input", "output", "errors")
SPLIT_INTO = "split into"  # how the error of a shard replaced by its halves begins

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shards (
    id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, model TEXT NOT NULL, mode TEXT NOT NULL,
    stages TEXT NOT NULL, step TEXT NOT NULL, lines INTEGER NOT NULL, bytes INTEGER NOT NULL,
    written_at REAL NOT NULL, updated_at REAL NOT NULL, file_id TEXT, batch_id TEXT,
    status TEXT, completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    expires_at REAL, output_file_id TEXT, error_file_id TEXT, uploaded_at REAL,
    submits INTEGER NOT NULL DEFAULT 0, error TEXT, tokens INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS lines (
    endpoint TEXT NOT NULL, custom_id TEXT NOT NULL, shard TEXT NOT NULL, outcome TEXT,
    tries INTEGER NOT NULL DEFAULT 1, detail TEXT, PRIMARY KEY (endpoint, custom_id)
);
CREATE INDEX IF NOT EXISTS lines_by_shard ON lines (shard);
"""


class Step(StrEnum):
    WRITTEN = "written"
    UPLOADED = "uploaded"
    CREATING = "creating"
    CREATED = "created"
    POLLED = "polled"
    DOWNLOADED = "downloaded"
    INGESTED = "ingested"
    EXPORTED = "exported"


@dataclass(frozen=True)
class ShardRecord:
    """One shard as the manifest holds it. `stages`: the engine steps of its lines
    ("critic", "judge+reask" ...); `status`, `completed`, `failed`: the batch as last polled."""

    id: str
    endpoint: str
    model: str
    mode: str
    stages: str
    step: Step
    lines: int
    bytes: int
    written_at: float
    updated_at: float
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None
    completed: int = 0
    failed: int = 0
    expires_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    uploaded_at: float | None = None  # the input file's creation time, on the API's clock
    submits: int = 0
    error: str | None = None
    tokens: int = 0  # estimated prompt tokens of its lines (what the batch queue counts)

    @property
    def finished(self) -> bool:
        """Every line has its outcome: nothing more will happen to this shard."""
        return self.step is Step.INGESTED

    @property
    def submitted(self) -> bool:
        """A batch may exist for it at the API (created, or being created)."""
        return self.step in (Step.CREATING, Step.CREATED, Step.POLLED, Step.DOWNLOADED)


@dataclass(frozen=True)
class LineRecord:
    endpoint: str
    custom_id: str
    shard: str
    outcome: str | None
    tries: int
    detail: str | None

    @property
    def pending(self) -> bool:
        return self.outcome is None


_SHARD_FIELDS = tuple(f.name for f in dataclasses.fields(ShardRecord))


def new_shard_id() -> str:
    """Sortable by time, unique across processes: `20250101-120000-3f9a1c`."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def write_atomic(path: Path, content: bytes) -> None:
    """Write `content` to `path` so that a crash leaves either the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class BatchStore:
    """The manifest in `root` (created if missing). Safe to use from several threads of one
    process (one connection behind a lock) and, for reading, from other processes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.root / MANIFEST, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process
            self._db.executescript(_SCHEMA)
            _add_missing_columns(self._db)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"cannot open the batch manifest in {self.root}: {exc}; pass a writable "
                "--cache-dir"
            ) from None
        self._lock = threading.Lock()
        self._run_lock: Any = None

    def __repr__(self) -> str:
        return f"BatchStore({str(self.root)!r})"

    # -- the run lock -----------------------------------------------------------------------

    def lock(self) -> None:
        """Hold the manifest for this process until `close()`: a second batch run on the same
        cache directory is a ConfigError (two runs would submit the same lines). The lock is
        the kernel's (`flock`), so a killed process releases it."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, documented
            return
        handle = (self.root / "run.lock").open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ConfigError(
                f"another lvlmva batch run is using {self.root}; wait for it, or give this "
                "run its own --cache-dir"
            ) from None
        self._run_lock = handle

    def try_lock(self) -> bool:
        """`lock()` if no other process holds it; False if one does."""
        try:
            self.lock()
        except ConfigError:
            return False
        return True

    # -- shards -----------------------------------------------------------------------------

    def path(self, shard_id: str, kind: str) -> Path:
        if kind not in FILE_KINDS:
            raise ValueError(f"unknown shard file {kind!r}")
        return self.root / f"{shard_id}.{kind}.jsonl"

    def write_file(self, shard_id: str, kind: str, content: bytes) -> Path:
        path = self.path(shard_id, kind)
        write_atomic(path, content)
        return path

    def read_file(self, shard_id: str, kind: str) -> bytes | None:
        try:
            return self.path(shard_id, kind).read_bytes()
        except FileNotFoundError:
            return None

    def add_shard(self, record: ShardRecord, custom_ids: Iterable[str], content: bytes) -> None:
        """Write the shard's input file, then record it and its lines in one transaction."""
        self.write_file(record.id, "input", content)
        rows = [(record.endpoint, cid, record.id) for cid in custom_ids]
        with self._transaction() as db:
            _insert_shard(db, record)
            db.executemany(
                "INSERT INTO lines (endpoint, custom_id, shard) VALUES (?, ?, ?) "
                "ON CONFLICT (endpoint, custom_id) DO UPDATE SET shard = excluded.shard, "
                "outcome = NULL, detail = NULL, tries = tries + 1",
                rows,
            )

    def split(
        self,
        record: ShardRecord,
        parts: list[tuple[ShardRecord, list[str], bytes]],
        reason: str = "the batch queue refused it",
    ) -> ShardRecord:
        """Replace `record` (never run) by `parts` ((record, custom_ids, content) each): their
        input files are written, then in one transaction they are recorded, its lines move to
        them (their `tries` unchanged: nothing ran) and it ends `ingested`, naming them."""
        for part, _, content in parts:
            self.write_file(part.id, "input", content)
        updated = dataclasses.replace(
            record, step=Step.INGESTED, updated_at=time.time(),
            error=f"{SPLIT_INTO} {', '.join(p.id for p, _, _ in parts)}: "
            f"{reason}",
        )  # fmt: skip
        with self._transaction() as db:
            for part, ids, _ in parts:
                _insert_shard(db, part)
                db.executemany(
                    "UPDATE lines SET shard = ? WHERE endpoint = ? AND custom_id = ? AND shard = ?",
                    [(part.id, record.endpoint, cid, record.id) for cid in ids],
                )
            _update_shard(db, updated)
        self.path(record.id, "input").unlink(missing_ok=True)
        return updated

    def advance(self, record: ShardRecord, **changes: Any) -> ShardRecord:
        """Record the shard's next step (or new status); returns the updated record."""
        updated = dataclasses.replace(record, updated_at=time.time(), **changes)
        with self._transaction() as db:
            _update_shard(db, updated)
        return updated

    def resolve(
        self,
        record: ShardRecord,
        outcomes: Iterable[tuple[str, str, str | None]],
        **changes: Any,
    ) -> ShardRecord:
        """Record the outcome of lines of `record` ((custom_id, outcome, detail)) and the
        shard's changes in one transaction. Lines that moved to another shard are left."""
        updated = dataclasses.replace(record, updated_at=time.time(), **changes)
        rows = [(o, d, record.endpoint, cid, record.id) for cid, o, d in outcomes]
        with self._transaction() as db:
            db.executemany(
                "UPDATE lines SET outcome = ?, detail = ? "
                "WHERE endpoint = ? AND custom_id = ? AND shard = ?",
                rows,
            )
            _update_shard(db, updated)
        return updated

    def shard(self, shard_id: str) -> ShardRecord | None:
        rows = self._query(f"SELECT {', '.join(_SHARD_FIELDS)} FROM shards WHERE id = ?", shard_id)
        return _shard(rows[0]) if rows else None

    def shards(self, endpoint: str | None = None) -> list[ShardRecord]:
        """Every shard (of `endpoint`), oldest first."""
        sql = f"SELECT {', '.join(_SHARD_FIELDS)} FROM shards"
        rows = (
            self._query(sql + " WHERE endpoint = ? ORDER BY written_at, id", endpoint)
            if endpoint is not None
            else self._query(sql + " ORDER BY written_at, id")
        )
        return [_shard(row) for row in rows]

    # -- lines ------------------------------------------------------------------------------

    def line(self, endpoint: str, custom_id: str) -> LineRecord | None:
        rows = self._query(
            "SELECT endpoint, custom_id, shard, outcome, tries, detail FROM lines "
            "WHERE endpoint = ? AND custom_id = ?",
            endpoint,
            custom_id,
        )
        return LineRecord(*rows[0]) if rows else None

    def lines_named(self, custom_id: str) -> list[LineRecord]:
        """The lines with this custom_id, at any endpoint."""
        rows = self._query(
            "SELECT endpoint, custom_id, shard, outcome, tries, detail FROM lines "
            "WHERE custom_id = ?",
            custom_id,
        )
        return [LineRecord(*row) for row in rows]

    def lines_of(self, shard_id: str) -> list[LineRecord]:
        """The lines whose latest shard is `shard_id`."""
        rows = self._query(
            "SELECT endpoint, custom_id, shard, outcome, tries, detail FROM lines "
            "WHERE shard = ? ORDER BY custom_id",
            shard_id,
        )
        return [LineRecord(*row) for row in rows]

    def has_lines(self, endpoint: str) -> bool:
        return bool(self._query("SELECT 1 FROM lines WHERE endpoint = ? LIMIT 1", endpoint))

    # -- plumbing ---------------------------------------------------------------------------

    def _query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._run_lock is not None:
            self._run_lock.close()  # releases the flock
            self._run_lock = None

    def __enter__(self) -> BatchStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _insert_shard(db: sqlite3.Connection, record: ShardRecord) -> None:
    db.execute(
        f"INSERT INTO shards ({', '.join(_SHARD_FIELDS)}) VALUES "
        f"({', '.join('?' * len(_SHARD_FIELDS))})",
        [_column(getattr(record, name)) for name in _SHARD_FIELDS],
    )


def _update_shard(db: sqlite3.Connection, record: ShardRecord) -> None:
    names = [n for n in _SHARD_FIELDS if n != "id"]
    db.execute(
        f"UPDATE shards SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?",
        [*(_column(getattr(record, n)) for n in names), record.id],
    )


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a manifest written by an earlier version up to the schema (columns only added)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(shards)")}
    if "tokens" not in have:
        db.execute("ALTER TABLE shards ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0")


def _column(value: Any) -> Any:
    return str(value) if isinstance(value, StrEnum) else value


def _shard(row: tuple[Any, ...]) -> ShardRecord:
    values = dict(zip(_SHARD_FIELDS, row, strict=True))
    values["step"] = Step(values["step"])
    return ShardRecord(**values)
