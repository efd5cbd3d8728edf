"""Batch mode: the engine's requests through the OpenAI Batch API, or into batch files for
`vllm run-batch`, resumable after any crash.

- `options`: `BatchOptions` and the API's limits (50,000 requests and 200 MB per file).
- `shards`: the shard writer (request lines, one model per file, within the limits).
- `store`: the manifest (`BatchStore`: every step of every shard, every line's outcome).
- `client`: Files and Batches on the official openai SDK (`BatchClient`).
- `poller`: one shard from its recorded step to its end (`ShardPoller`), and its ingest.
- `ingest`: output and error lines (OpenAI's and vLLM's) as outcomes; answers into the cache.
- `dispatcher`: `BatchDispatcher`, the engine's `Dispatcher` for all of it.
- `progress`: the per-shard lines while waiting; `factory`: a dispatcher wired for a run.

The names below are imported lazily (the SDK only when a client is made)."""

from __future__ import annotations

from lvlmva.lazy_imports import lazy_exports

_EXPORTS = {
    "BatchOptions": "lvlmva.engine.batch.options",
    "BatchStore": "lvlmva.engine.batch.store",
    "ShardRecord": "lvlmva.engine.batch.store",
    "Step": "lvlmva.engine.batch.store",
    "BatchClient": "lvlmva.engine.batch.client",
    "ShardPoller": "lvlmva.engine.batch.poller",
    "BatchDispatcher": "lvlmva.engine.batch.dispatcher",
    "BatchDetached": "lvlmva.engine.batch.dispatcher",
    "open_dispatcher": "lvlmva.engine.batch.factory",
    "manifest_dir": "lvlmva.engine.batch.factory",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
