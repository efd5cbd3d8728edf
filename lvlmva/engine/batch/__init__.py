"""Batch mode: the engine's requests through the OpenAI Batch API, or into batch files for
`vllm run-batch`, resumable after any crash.

- `options`: `BatchOptions` and the API's limits (50,000 requests and 200 MB per file).
- `shards`: the shard writer (request lines, one model per file, within the limits).
- `store`: the manifest (`BatchStore`: every step of every shard, every line's outcome).
- `client`: Files and Batches on the official openai SDK (`BatchClient`).
- `poller`: one shard from its recorded step to its end (`ShardPoller`), and its ingest.
- `queue`: `QueueGate`, this run's share of each model's batch queue (enqueued tokens).
- `ingest`: output and error lines (OpenAI's and vLLM's) as outcomes; answers into the cache.
- `dispatcher`: `BatchDispatcher`, the engine's `Dispatcher` for all of it.
- `progress`: the per-shard lines while waiting; `factory`: a dispatcher wired for a run.

The names below are imported lazily (the SDK only when a client is made)."""

from __future__ import annotations

from lvlmva.lazy_imports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lvlmva.engine.batch.options": ("BatchOptions",),
        "lvlmva.engine.batch.store": ("BatchStore", "ShardRecord", "Step"),
        "lvlmva.engine.batch.client": ("BatchClient",),
        "lvlmva.engine.batch.poller": ("ShardPoller",),
        "lvlmva.engine.batch.dispatcher": ("BatchDispatcher", "BatchDetached"),
        "lvlmva.engine.batch.factory": ("open_dispatcher", "manifest_dir"),
    },
)
