"""A content-addressed, on-disk store of LVLM answers (diskcache), with single-flight.

Keys are opaque strings chosen by the caller (the engine derives them from everything that
determines an answer: `lvlmva.engine.keys`); entries are plain JSON-able values, so this
module knows nothing of the engine's types. A caller that reads typed values passes a
`decode` that raises `ValueError` (or `TypeError`, `KeyError`, `IndexError`) on an entry it
cannot use: such an entry counts as a miss and is computed and stored again, never an error.
So is an entry that cannot be read at all (a damaged row or value file): `get_or_compute` logs
it and computes the answer; a failed write is logged and the answer still returned. A cache
whose database cannot be opened is one `DataError` naming the file; `clear_directory` removes
such a database. Entries may carry a `tag` (the engine's: the model, marked for simulated
answers); `directory_stats` counts entries by tag from a read-only connection, creating nothing.
Disk I/O runs in one worker thread, never on the event loop, in batches: the reads and writes
queued during one event-loop iteration cross to the thread together, the writes of a batch
share one SQLite transaction, and a batch's results come back with one loop callback.

Entries are stored as JSON text and keys as strings (`JSONOnlyDisk`), never pickled: diskcache's
default pickles, and loading a pickle can run code, so a row stored any other way (an entry
that an earlier lvlmva pickled, or one planted in a shared or copied directory) is never
loaded. It reads as a miss, is replaced when its answer is stored again, is left out of
`export` and still counts in the stats until then; `lvlmva cache clear` removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import re
import shutil
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

import diskcache

from lvlmva.errors import ConfigError, DataError

__all__ = [
    "CacheStats",
    "DirectoryStats",
    "JSONOnlyDisk",
    "Lookup",
    "SingleFlight",
    "Source",
    "VerdictCache",
    "clear_directory",
    "default_cache_dir",
    "directory_stats",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_SIZE_LIMIT = 4 * 2**30  # 4 GiB; diskcache evicts least recently stored beyond it
UNDECODABLE = (ValueError, TypeError, KeyError, IndexError)  # what a `decode` may raise
DB_NAME = "cache.db"  # diskcache's database file
_VALUE_DIR = re.compile(r"\A[0-9a-f]{2}\Z")  # diskcache's folders of large values


class JSONOnlyDisk(diskcache.Disk):
    """diskcache's storage without pickle: values as their JSON text, keys as strings. A row
    stored otherwise (a pickle, bytes, a number) reads as None, a miss; a pickled key as None."""

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"cache keys are strings, not {type(key).__name__}")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        return super().get(key, raw) if raw else None  # a pickled key is never loaded

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        if read:
            raise TypeError("the answer cache stores JSON values, not files")
        return super().store(json.dumps(value, ensure_ascii=False), False, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if read or mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_TEXT):
            return None  # a pickle or bytes: not an entry of ours
        text = super().fetch(mode, filename, value, False)
        try:
            return json.loads(text) if type(text) is str else None
        except ValueError:
            return None


def default_cache_dir() -> Path:
    """`LVLMVA_CACHE_DIR` if set, else `~/.cache/lvlmva`."""
    env = os.environ.get("LVLMVA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lvlmva"


def _same(value: Any) -> Any:
    return value


class Source(StrEnum):
    """Where a `get_or_compute` value came from."""

    CACHE = "cache"  # read from disk
    COMPUTED = "computed"  # this caller ran the factory
    SHARED = "shared"  # an identical request was in flight; its result was reused


@dataclass(frozen=True)
class Lookup(Generic[T]):
    value: T
    source: Source


class SingleFlight(Generic[T]):
    """Runs at most one factory per key at a time; concurrent callers of the same key wait
    for it and share its result or its exception. If the running caller is cancelled, a
    waiting one takes over."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._running)

    async def run(self, key: str, factory: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """`(value, shared)`; `shared` is True when another caller computed it."""
        while True:
            running = self._running.get(key)
            if running is None:
                break
            try:
                return await asyncio.shield(running), True
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if running.cancelled() and not (task is not None and task.cancelling()):
                    continue  # only the leader was cancelled: try to lead
                raise  # we were cancelled ourselves (perhaps with the leader)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            value = await factory()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: no "never retrieved" warning without waiters
            raise
        else:
            future.set_result(value)
            return value, False
        finally:
            del self._running[key]


_Op = tuple[str, str, Any, "asyncio.Future[Any]"]  # (kind "get" | "set", key, value, future)
# a "set" value is (entry, tag)
_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


class _DiskWorker:
    """One thread that runs the cache's reads and writes in batches (see the module doc).

    `submit` is called on the event loop; operations run in the order they were submitted."""

    def __init__(self, store: Callable[[], diskcache.Cache]) -> None:
        self._store = store  # looked up per batch, so tests can wrap the cache's methods
        self._inbox: queue.SimpleQueue[list[_Op] | None] = queue.SimpleQueue()
        self._pending: list[_Op] = []
        self._thread: threading.Thread | None = None

    def submit(self, kind: str, key: str, value: Any = None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._hand_over)
        self._pending.append((kind, key, value, future))
        return future

    def _hand_over(self) -> None:
        batch, self._pending = self._pending, []
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="lvlmva-cache", daemon=True)
            self._thread.start()
        self._inbox.put(batch)

    def _serve(self) -> None:
        while True:
            batch = self._inbox.get()
            if batch is None:
                return
            stop = False
            while not stop:  # take everything queued meanwhile into the same batch
                try:
                    more = self._inbox.get_nowait()
                except queue.Empty:
                    break
                stop = more is None
                batch.extend(more or ())
            _deliver(self._execute(batch))
            if stop:
                return

    def _execute(self, batch: list[_Op]) -> list[_Outcome]:
        store = self._store()
        if not any(kind == "set" for kind, _, _, _ in batch):
            return [_run_op(store, op) for op in batch]
        try:
            with store.transact():  # one commit for all the writes of the batch
                return [_run_op(store, op) for op in batch]
        except Exception as exc:  # the transaction failed: none of its writes is stored
            return [(future, None, exc) for _, _, _, future in batch]

    def stop(self) -> None:
        """Finish what was handed over, then end the thread."""
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join()
            self._thread = None


def _run_op(store: diskcache.Cache, op: _Op) -> _Outcome:
    kind, key, value, future = op
    try:
        if kind == "get":
            return future, store.get(key), None
        entry, tag = value
        store.set(key, entry, tag=tag)
        return future, None, None
    except Exception as exc:
        return future, None, exc


def _deliver(outcomes: list[_Outcome]) -> None:
    """Resolve the futures of a batch with one callback per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_resolve, items)


def _resolve(items: list[_Outcome]) -> None:
    for future, value, error in items:
        if future.done():  # the caller was cancelled
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


@dataclass(frozen=True)
class CacheStats:
    directory: str
    entries: int
    size_bytes: int
    hits: int  # in this process
    misses: int
    writes: int


class VerdictCache:
    """Content-addressed LVLM answers on disk.

    `await get(key)` / `await set(key, entry)` run in the cache's worker thread; entries are
    JSON-able values. `get_or_compute(key, factory)` returns the cached value or runs
    `factory` once for all concurrent callers of the same key and stores its result. Safe to
    share between processes (diskcache uses SQLite)."""

    def __init__(self, directory: str | Path, *, size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        self.directory = Path(directory).expanduser()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(
                str(self.directory), size_limit=size_limit, disk=JSONOnlyDisk
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot open the cache directory {self.directory}: {exc.strerror or exc}; "
                "pass a writable --cache-dir"
            ) from None
        except sqlite3.DatabaseError as exc:
            raise damaged(self.directory, exc) from None
        self._warned: set[str] = set()
        self._worker = _DiskWorker(lambda: self._cache)
        self._flight: SingleFlight[Any] = SingleFlight()
        self._pending_writes: set[asyncio.Future[None]] = set()
        self.hits = 0
        self.misses = 0
        self.writes = 0

    def __repr__(self) -> str:
        return f"VerdictCache({str(self.directory)!r})"

    # -- async API ----------------------------------------------------------------------------

    async def get(self, key: str) -> Any | None:
        """The entry stored under `key`, or None."""
        entry = await self._worker.submit("get", key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        return entry

    async def set(self, key: str, entry: Any, *, tag: str | None = None) -> None:
        """Store `entry` (JSON-able, else a TypeError), labelled `tag`. The write completes even
        if the caller is cancelled meanwhile; `flush()` waits for such writes."""
        future = self._worker.submit("set", key, (entry, tag))
        self._pending_writes.add(future)
        future.add_done_callback(self._pending_writes.discard)
        await asyncio.shield(future)
        self.writes += 1

    async def get_or_compute(
        self,
        key: str,
        factory: Callable[[], Awaitable[T]],
        *,
        encode: Callable[[T], Any] = _same,
        decode: Callable[[Any], T] = _same,
        tag: str | None = None,
    ) -> Lookup[T]:
        """The cached value (`decode(entry)`), or `factory()`'s, stored as `encode(value)`
        (labelled `tag`) before returning. An entry that `decode` refuses or that cannot be
        read (see the module doc) is a miss; a failed write is logged. Identical keys in
        flight run `factory` once; its exception reaches every waiting caller."""

        async def lookup_or_compute() -> Lookup[T]:
            try:
                entry = await self._worker.submit("get", key)
            except Exception as exc:  # a damaged row or value file: a miss, never a crash
                self._warn("read", exc)
                entry = None
            if entry is not None:
                try:
                    value = decode(entry)
                except UNDECODABLE as exc:
                    log.debug("cache entry %s does not decode (%s): a miss", key[:12], exc)
                else:
                    self.hits += 1
                    return Lookup(value, Source.CACHE)
            self.misses += 1
            value = await factory()
            try:
                await self.set(key, encode(value), tag=tag)
            except Exception as exc:  # the answer stands; only its copy on disk is lost
                self._warn("write", exc)
            return Lookup(value, Source.COMPUTED)

        found, shared = await self._flight.run(key, lookup_or_compute)
        return Lookup(found.value, Source.SHARED) if shared else found

    def _warn(self, what: str, exc: Exception) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(
                "the answer cache %s could not %s an entry (%s: %s): treated as a miss; "
                "`lvlmva cache clear` empties a damaged cache",
                self.directory, what, type(exc).__name__, exc,
            )  # fmt: skip

    async def flush(self) -> None:
        """Wait for writes started by callers that were cancelled."""
        while self._pending_writes:
            await asyncio.gather(*list(self._pending_writes), return_exceptions=True)

    async def aclose(self) -> None:
        await self.flush()
        self.close()

    # -- sync API (CLI) -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._cache)

    def stats(self) -> CacheStats:
        return CacheStats(
            directory=str(self.directory),
            entries=len(self._cache),
            size_bytes=int(self._cache.volume()),
            hits=self.hits,
            misses=self.misses,
            writes=self.writes,
        )

    def clear(self) -> int:
        """Delete every entry; returns how many there were."""
        return int(self._cache.clear())

    def export(self, path: str | Path) -> int:
        """Write every entry as one JSON line: `{"key": key, **entry}` for a mapping entry,
        else `{"key": key, "entry": entry}`; returns the number of lines."""
        path = Path(path)
        try:
            handle = path.open("w", encoding="utf-8")
        except OSError as exc:
            raise DataError(f"cannot write the export file {path}: {exc.strerror}") from None
        count = 0
        with handle:
            for key in self._cache.iterkeys():
                entry = None if key is None else self._cache.get(key)  # None: a pickled key
                if entry is None:  # evicted meanwhile, or not JSON (see the module doc)
                    continue
                row = {"key": key, **(entry if isinstance(entry, dict) else {"entry": entry})}
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                count += 1
        return count

    def close(self) -> None:
        self._worker.stop()
        self._cache.close()

    def __enter__(self) -> VerdictCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the cache directory, without opening a cache -----------------------------------------------


def damaged(directory: Path, exc: BaseException) -> DataError:
    """The one-line error for a cache database that cannot be read."""
    return DataError(
        f"the answer cache {directory / DB_NAME} is damaged ({exc}); empty it with "
        f"`lvlmva cache clear --cache-dir {directory}` (its answers are lost) or pass another "
        "--cache-dir"
    )


@dataclass(frozen=True)
class DirectoryStats:
    """What a cache directory holds: entries and bytes, and entries per tag (the model of the
    answer, "simulated:<model>" for a simulation's; None: entries stored without one)."""

    directory: str
    entries: int
    size_bytes: int
    by_tag: dict[str | None, int]


def directory_stats(directory: str | Path) -> DirectoryStats | None:
    """The contents of the cache in `directory`, read without creating or changing anything;
    None when there is no cache there. A damaged database is a `DataError` naming it."""
    directory = Path(directory).expanduser()
    db = directory / DB_NAME
    if not db.is_file():
        return None
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT tag, COUNT(*), SUM(size) FROM Cache GROUP BY tag").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise damaged(directory, exc) from None
    by_tag = {_tag_text(tag): int(n) for tag, n, _ in rows}
    values = sum(int(size or 0) for _, _, size in rows)
    return DirectoryStats(str(directory), sum(by_tag.values()), db.stat().st_size + values, by_tag)


def _tag_text(tag: Any) -> str | None:
    if isinstance(tag, bytes):
        return tag.decode("utf-8", "replace")
    return None if tag is None else str(tag)


def clear_directory(directory: str | Path) -> int | None:
    """Empty the cache in `directory`; the number of entries removed, or None when its
    database was damaged and was removed with its value files (their number is unknown)."""
    directory = Path(directory).expanduser()
    try:
        with VerdictCache(directory) as cache:
            return cache.clear()
    except (DataError, sqlite3.DatabaseError):
        pass  # a database that cannot be opened or read: remove its files
    for path in directory.iterdir():
        if path.name.startswith(DB_NAME) and path.is_file():
            path.unlink()  # the database and its -wal / -shm files
        elif _VALUE_DIR.match(path.name) and path.is_dir():
            shutil.rmtree(path)
    return None
