"""A content-addressed, on-disk cache of LVLM answers (diskcache), with single-flight.

The key is a SHA-256 over everything that determines an answer (provider, model, template hash,
rendered text, image hashes, sampling parameters, schema hash), so a changed prompt, image or
setting is a miss, and a rerun after a crash or Ctrl-C pays only for what was not answered yet.
Disk I/O runs in one worker thread, never on the event loop, in batches: the reads and writes
queued during one event-loop iteration cross to the thread together, the writes of a batch
share one SQLite transaction, and a batch's results come back with one loop callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import queue
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

import diskcache

from lvlmva.engine.types import Usage
from lvlmva.errors import ConfigError, DataError

__all__ = [
    "CacheStats",
    "CachedResponse",
    "Lookup",
    "SingleFlight",
    "Source",
    "VerdictCache",
    "cache_key",
    "canonical_sha256",
    "default_cache_dir",
]

T = TypeVar("T")

KEY_VERSION = 2  # bump when the key derivation or the meaning of a cached value changes
DEFAULT_SIZE_LIMIT = 4 * 2**30  # 4 GiB; diskcache evicts least recently stored beyond it


def default_cache_dir() -> Path:
    """`LVLMVA_CACHE_DIR` if set, else `~/.cache/lvlmva`."""
    env = os.environ.get("LVLMVA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lvlmva"


def canonical_sha256(value: Any) -> str:
    """SHA-256 of the canonical JSON of `value` (sorted keys, no whitespace)."""
    return hashlib.sha256(_canonical_json(value).encode("utf-8")).hexdigest()


def cache_key(
    *,
    provider: str,
    model: str,
    template_sha256: str,
    text: str | Iterable[str],
    image_sha256s: Iterable[str],
    params: Mapping[str, Any],
    schema_sha256: str | None,
) -> str:
    """The cache key of one request: SHA-256 over all its parts.

    `text` is the rendered prompt (a string, or the texts of its messages in order);
    `params` the sampling parameters (temperature, seed, max_tokens, ...). The short parts go
    into a JSON header (a list in a fixed order, the params sorted by name) that also records
    the byte length of every text; the texts follow as raw UTF-8, so they are hashed without
    being JSON-escaped (that escaping was most of the cost)."""
    texts = [text.encode("utf-8")] if isinstance(text, str) else [t.encode("utf-8") for t in text]
    header = [
        KEY_VERSION,
        provider,
        model,
        template_sha256,
        sorted(params.items()),
        list(image_sha256s),
        schema_sha256,
        isinstance(text, str),
        [len(t) for t in texts],
    ]
    digest = hashlib.sha256(_HEADER.encode(header).encode("utf-8"))
    for t in texts:
        digest.update(t)
    return digest.hexdigest()


_HEADER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # a list: fixed order
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


@dataclass(frozen=True)
class CachedResponse:
    """A cached answer: its text, the usage it cost when it was paid for, and the model."""

    text: str
    usage: Usage
    model: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "usage": [self.usage.prompt_tokens, self.usage.completion_tokens],
            "model": self.model,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CachedResponse:
        prompt, completion = data["usage"]
        return cls(str(data["text"]), Usage(int(prompt), int(completion)), str(data["model"]))


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
                if running.cancelled():
                    continue  # the leader was cancelled: try to lead
                raise  # we were cancelled ourselves
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
        store.set(key, value)
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

    `await get(key)` / `await set(key, value)` run in the cache's worker thread; values are
    `CachedResponse`s stored as plain dicts. `get_or_compute(key, factory)` returns the cached
    value or runs `factory` once for all concurrent callers of the same key and stores its
    result. Safe to share between processes (diskcache uses SQLite)."""

    def __init__(self, directory: str | Path, *, size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        self.directory = Path(directory).expanduser()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(str(self.directory), size_limit=size_limit)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the cache directory {self.directory}: {exc.strerror or exc}; "
                "pass a writable --cache-dir"
            ) from None
        self._worker = _DiskWorker(lambda: self._cache)
        self._flight: SingleFlight[CachedResponse] = SingleFlight()
        self._pending_writes: set[asyncio.Future[None]] = set()
        self.hits = 0
        self.misses = 0
        self.writes = 0

    def __repr__(self) -> str:
        return f"VerdictCache({str(self.directory)!r})"

    # -- async API ----------------------------------------------------------------------------

    async def get(self, key: str) -> CachedResponse | None:
        data = await self._worker.submit("get", key)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        return CachedResponse.from_dict(data)

    async def set(self, key: str, value: CachedResponse) -> None:
        """Store `value`. The write completes even if the caller is cancelled meanwhile;
        `flush()` waits for such writes."""
        future = self._worker.submit("set", key, value.to_dict())
        self._pending_writes.add(future)
        future.add_done_callback(self._pending_writes.discard)
        await asyncio.shield(future)
        self.writes += 1

    async def get_or_compute(
        self, key: str, factory: Callable[[], Awaitable[CachedResponse]]
    ) -> Lookup[CachedResponse]:
        """The cached value, or `factory()`'s (stored before returning). Identical keys in
        flight run `factory` once; its exception reaches every waiting caller."""

        async def lookup_or_compute() -> Lookup[CachedResponse]:
            cached = await self.get(key)
            if cached is not None:
                return Lookup(cached, Source.CACHE)
            value = await factory()
            await self.set(key, value)
            return Lookup(value, Source.COMPUTED)

        found, shared = await self._flight.run(key, lookup_or_compute)
        return Lookup(found.value, Source.SHARED) if shared else found

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
        """Write every entry as one JSON line `{"key", "text", "usage", "model"}`; returns the
        number of lines."""
        path = Path(path)
        try:
            handle = path.open("w", encoding="utf-8")
        except OSError as exc:
            raise DataError(f"cannot write the export file {path}: {exc.strerror}") from None
        count = 0
        with handle:
            for key in self._cache.iterkeys():
                data = self._cache.get(key)
                if data is None:  # evicted meanwhile
                    continue
                handle.write(json.dumps({"key": key, **data}, ensure_ascii=False) + "\n")
                count += 1
        return count

    def close(self) -> None:
        self._worker.stop()
        self._cache.close()

    def __enter__(self) -> VerdictCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
