"""A `BatchDispatcher` wired for an endpoint: its manifest (in the answer cache's directory,
locked for this run), the Files/Batches client and the synchronous dispatcher for re-asks."""

from __future__ import annotations

from typing import Any

from lvlmva.engine.batch.dispatcher import BatchDispatcher
from lvlmva.engine.batch.options import BatchOptions
from lvlmva.engine.batch.progress import BatchReporter
from lvlmva.engine.batch.store import BatchStore
from lvlmva.engine.dispatch import OnlineDispatcher
from lvlmva.errors import ConfigError

__all__ = ["MANIFEST_DIR", "manifest_dir", "open_dispatcher"]

MANIFEST_DIR = "batches"


def manifest_dir(cache_dir: Any) -> Any:
    """Where the batch manifest of the answer cache in `cache_dir` lives."""
    from pathlib import Path

    return Path(cache_dir).expanduser() / MANIFEST_DIR


def open_dispatcher(
    options: BatchOptions,
    *,
    base_url: str | None,
    api_key: str | None,
    cache: Any,
    online: OnlineDispatcher,
    progress: bool | None = None,
    providers: tuple[Any, ...] = (),
) -> BatchDispatcher:
    """The dispatcher of a batch run against `base_url` (None: `OPENAI_BASE_URL` or OpenAI)
    with the answer `cache` (a `VerdictCache`: it holds the manifest and every answer). Re-asks
    and the budget go through `online` (its meter is the run's). `providers` (the Critic's and
    the Judge's) must give their request bodies (`body(request)`) for the batch lines."""
    from lvlmva.engine.providers.openai_compat import resolve_endpoint

    for provider in providers:
        if not callable(getattr(provider, "body", None)):
            raise ConfigError(
                f"batch mode needs an OpenAI-compatible critic (kind 'openai'); the provider "
                f"{getattr(provider, 'name', provider)!r} has no request body for a batch file"
            )

    if cache is None:
        raise ConfigError(
            "--batch keeps its manifest and answers in the answer cache: drop --no-cache "
            "(or give --cache-dir)"
        )
    endpoint, key = resolve_endpoint(base_url, api_key)
    client = None
    if options.mode == "api":
        from lvlmva.engine.batch.client import BatchClient

        client = BatchClient(endpoint, key)
    store = BatchStore(manifest_dir(cache.directory))
    try:
        store.lock()
    except BaseException:
        store.close()
        raise
    return BatchDispatcher(
        options=options,
        store=store,
        endpoint=endpoint,
        client=client,
        meter=online.meter,
        online=online,
        cache=cache,
        reporter=BatchReporter(enabled=progress is not False),
    )
