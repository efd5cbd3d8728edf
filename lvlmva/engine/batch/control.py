"""`lvlmva batch status|cancel` in library form: the manifest's shards with a fresh look at
their batches, and cancelling shards (a cancelled batch's partial output is ingested).

Neither writes a shard the way a run does while a run holds the manifest: `status` only reads
(its fresh counts are shown, not recorded), and `cancel` only asks the API to cancel, leaving
the collection to the run that polls the batch. With the manifest free, `cancel` waits for the
batch to end (up to `wait_s`), downloads what it answered and ingests it into the cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lvlmva.engine.batch.client import BatchClient, BatchInfo
from lvlmva.engine.batch.options import BatchOptions
from lvlmva.engine.batch.poller import ShardPoller, ingest_shard
from lvlmva.engine.batch.progress import BatchReporter
from lvlmva.engine.batch.store import BatchStore, ShardRecord, Step
from lvlmva.engine.errors import BadRequest, ProviderError
from lvlmva.errors import ConfigError

__all__ = ["ShardView", "cancel_shards", "select_shards", "view_shards"]


@dataclass(frozen=True)
class ShardView:
    """A shard as the manifest has it, and its batch as the API has it now (when asked)."""

    record: ShardRecord
    live: BatchInfo | None = None
    error: str | None = None  # why the API could not be asked


ClientFor = Callable[[str], BatchClient]


def select_shards(store: BatchStore, ids: Iterable[str], *, everything: bool) -> list[ShardRecord]:
    """The shards named by shard or batch id (ConfigError for an unknown one), or with
    `everything` every shard not finished."""
    shards = store.shards()
    wanted = list(ids)
    if everything:
        return [s for s in shards if not s.finished]
    if not wanted:
        raise ConfigError("name the shards or batches to cancel (see lvlmva batch status), or "
                          "pass --all")  # fmt: skip
    chosen = []
    for name in wanted:
        match = [s for s in shards if name in (s.id, s.batch_id)]
        if not match:
            raise ConfigError(f"no shard or batch {name!r} in {store.root} (lvlmva batch status "
                              "lists them)")  # fmt: skip
        chosen.extend(match)
    return chosen


async def view_shards(shards: list[ShardRecord], client_for: ClientFor | None) -> list[ShardView]:
    """Each shard, with a fresh look at its batch when it has one and `client_for` is given."""
    views = []
    for shard in shards:
        if client_for is None or shard.batch_id is None or shard.finished:
            views.append(ShardView(shard))
            continue
        try:
            live = await client_for(shard.endpoint).retrieve(shard.batch_id)
            views.append(ShardView(shard, live))
        except (ProviderError, ConfigError) as exc:  # unreachable, or no key for it here
            views.append(ShardView(shard, error=str(exc)))
    return views


async def cancel_shards(
    store: BatchStore,
    shards: list[ShardRecord],
    client_for: ClientFor,
    *,
    cache: object | None,
    collect: bool,
    wait_s: float = 600.0,
    reporter: BatchReporter | None = None,
) -> list[ShardRecord]:
    """Cancel each shard: its batch at the API, or (never submitted) the shard itself, whose
    lines may then go out with a later run. With `collect` (the caller holds the manifest)
    wait for each batch to end and ingest what it answered. Returns the shards as left."""
    reporter = reporter or BatchReporter()
    left = []
    for shard in shards:
        if shard.finished:
            left.append(shard)
            continue
        client = client_for(shard.endpoint)
        batch_id = shard.batch_id
        if shard.step is Step.CREATING and batch_id is None and shard.file_id:
            found = await client.find(shard.id, shard.file_id, shard.uploaded_at or 0.0)
            batch_id = found.id if found is not None else None
        if batch_id is None:
            left.append(_cancel_unsent(store, shard) if collect else shard)
            continue
        try:
            await client.cancel(batch_id)
        except BadRequest as exc:  # it ended meanwhile: collect what it has
            reporter.note(f"batch {shard.id}: {exc}")
        if collect:
            shard = await _collect(store, shard, batch_id, client, cache, wait_s, reporter)
        left.append(shard)
    return left


def _cancel_unsent(store: BatchStore, shard: ShardRecord) -> ShardRecord:
    pending = [line.custom_id for line in store.lines_of(shard.id) if line.pending]
    return store.resolve(
        shard,
        ((cid, "retry", "cancelled before it was submitted") for cid in pending),
        step=Step.INGESTED,
        status="cancelled",
        error="cancelled before it was submitted",
    )


async def _collect(
    store: BatchStore,
    shard: ShardRecord,
    batch_id: str,
    client: BatchClient,
    cache: object | None,
    wait_s: float,
    reporter: BatchReporter,
) -> ShardRecord:
    if shard.step in (Step.CREATING, Step.UPLOADED):
        shard = store.advance(shard, step=Step.CREATED, batch_id=batch_id)
    poller = ShardPoller(store, client, BatchOptions(poll_s=2.0), reporter)
    try:
        shard = await asyncio.wait_for(poller.run(shard), wait_s)
    except TimeoutError:
        reporter.note(f"batch {shard.id}: still cancelling after {wait_s:g} s; a later "
                      "`lvlmva batch cancel` or run collects it")  # fmt: skip
        return store.shard(shard.id) or shard
    shard, _ = await ingest_shard(store, shard, cache)
    return shard
