"""`lvlmva batch status|cancel|export|ingest`: the batch manifest of a cache directory.

- `status`: every unfinished shard (and the last finished ones; `--all`: every one), with its
  batch's current status and counts from the API (`--offline`: the manifest's).
- `cancel ID... | --all`: cancel batches (or unsent shards); with no run holding the manifest,
  wait for them to end and ingest their partial output.
- `export FILE [--model M]`: the requests a `--batch files` run wrote, as one JSONL file for
  `vllm run-batch`; `ingest FILE`: its output file read back (answers into the cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from lvlmva.commands.common import Command

RECENT = 10  # finished shards `status` lists without --all


COMMAND = Command(
    "batch",
    help="batch runs: status | cancel | export | ingest",
    description="Look at, cancel, export or ingest the batch shards a `--batch` run keeps "
    "in its cache directory (docs/batch.md).",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="batch_action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="shards and their batches")
    status.add_argument("--all", action="store_true", help="every shard, finished ones too")
    status.add_argument("--offline", action="store_true", help="do not ask the API")
    status.add_argument("--json", action="store_true", help="one JSON object per shard")
    cancel = actions.add_parser("cancel", help="cancel batches; ingest their partial output")
    cancel.add_argument("ids", nargs="*", metavar="ID", help="shard or batch ids")
    cancel.add_argument("--all", action="store_true", help="every unfinished shard")
    cancel.add_argument(
        "--wait-s", type=float, default=600.0, help="how long to wait for a batch to end"
    )
    export = actions.add_parser("export", help="requests of --batch files runs, for vllm")
    export.add_argument("file", help="the JSONL file to write")
    export.add_argument("--model", help="the model whose requests to export")
    ingest = actions.add_parser("ingest", help="read a vllm run-batch output file")
    ingest.add_argument("file", help="the output JSONL file")
    for sub in (status, cancel, export, ingest):
        sub.add_argument(
            "--cache-dir", help="the run's cache (default: ~/.cache/lvlmva or LVLMVA_CACHE_DIR)"
        )


def run(args: argparse.Namespace) -> int:
    import asyncio

    from lvlmva.cache import default_cache_dir
    from lvlmva.engine.batch.factory import manifest_dir
    from lvlmva.engine.batch.store import BatchStore
    from lvlmva.errors import ConfigError

    cache_dir = args.cache_dir or default_cache_dir()
    root = manifest_dir(cache_dir)
    if not (root / "manifest.sqlite3").exists():
        raise ConfigError(f"no batch manifest in {root}: no --batch run used this cache")
    with BatchStore(root) as store:
        if args.batch_action == "status":
            return asyncio.run(_status(store, args))
        if args.batch_action in ("export", "ingest") or args.batch_action == "cancel":
            collect = store.try_lock()
            if not collect and args.batch_action != "cancel":
                raise ConfigError(f"a --batch run is using {root}; wait for it to end")
            if args.batch_action == "export":
                return _export(store, args)
            if args.batch_action == "ingest":
                return _ingest(store, cache_dir, args)
            return asyncio.run(_cancel(store, cache_dir, args, collect=collect))
    return 2


class _Clients:
    """One Files/Batches client per endpoint, keyed from the environment."""

    def __init__(self) -> None:
        self._clients: dict[str, object] = {}

    def __call__(self, endpoint: str):
        from lvlmva.engine.batch.client import BatchClient
        from lvlmva.engine.providers.openai_compat import resolve_endpoint

        if endpoint not in self._clients:
            base, key = resolve_endpoint(endpoint, None)
            self._clients[endpoint] = BatchClient(base, key)
        return self._clients[endpoint]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()  # type: ignore[attr-defined]


async def _status(store, args: argparse.Namespace) -> int:
    from lvlmva.engine.batch.control import view_shards
    from lvlmva.engine.batch.progress import describe_shard

    shards = store.shards()
    finished = [s for s in shards if s.finished]
    shown = shards if args.all else [s for s in shards if not s.finished] + finished[-RECENT:]
    shown.sort(key=lambda s: (s.written_at, s.id))
    clients = None if args.offline else _Clients()
    try:
        views = await view_shards(shown, clients)
    finally:
        if clients is not None:
            await clients.aclose()
    for view in views:
        record = view.record
        if view.live is not None:
            live = view.live
            record = dataclasses.replace(
                record, status=live.status, completed=live.completed, failed=live.failed,
                expires_at=live.expires_at or record.expires_at,
            )  # fmt: skip
        if args.json:
            row = {k: str(v) if k == "step" else v for k, v in dataclasses.asdict(record).items()}
            print(json.dumps({**row, "api_error": view.error}))
        else:
            print(describe_shard(record) + (f" (API: {view.error})" if view.error else ""))
    if not args.json:
        active = len(shards) - len(finished)
        print(f"{store.root}: {len(shards)} shards, {active} unfinished"
              + ("" if args.all or len(finished) <= RECENT else "; --all lists every one"))
    return 0


async def _cancel(store, cache_dir, args: argparse.Namespace, *, collect: bool) -> int:
    from lvlmva.cache import VerdictCache
    from lvlmva.engine.batch.control import cancel_shards, select_shards
    from lvlmva.engine.batch.progress import describe_shard

    shards = select_shards(store, args.ids, everything=args.all)
    clients = _Clients()
    cache = VerdictCache(cache_dir) if collect else None
    try:
        left = await cancel_shards(
            store, shards, clients, cache=cache, collect=collect, wait_s=args.wait_s
        )
    finally:
        await clients.aclose()
        if cache is not None:
            await cache.aclose()
    for shard in left:
        print(describe_shard(shard))
    if not collect:
        print("a --batch run holds this manifest: it collects the cancelled batches' output")
    return 0


def _export(store, args: argparse.Namespace) -> int:
    from lvlmva.engine.batch.offline import export_lines

    done = export_lines(store, args.file, args.model)
    print(
        f"wrote {done.lines} {done.model} requests to {done.path}; answer them with `vllm "
        f"run-batch -i {done.path} -o OUT --model WEIGHTS --served-model-name {done.model}`, "
        "then `lvlmva batch ingest OUT` and run the batch command again"
    )
    return 0


def _ingest(store, cache_dir, args: argparse.Namespace) -> int:
    from lvlmva.cache import VerdictCache
    from lvlmva.engine.batch.offline import ingest_file

    with VerdictCache(cache_dir) as cache:
        done = ingest_file(store, cache, args.file)
    print(
        f"{args.file}: {done.answered} answered, {done.failed} failed, {done.retry} to send "
        f"again; {done.unknown} lines no batch file waits for, {done.unreadable} unreadable; "
        f"{done.shards_done} shards complete. Run the batch command again to go on."
    )
    return 0
