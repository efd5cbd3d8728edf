"""Batch files answered elsewhere (`vllm run-batch`): export the pending lines of the
manifest's file shards as one JSONL input file, and ingest an output file through the same
reading as the Batch API's output (`ingest.read_outcomes`), into the manifest and the cache.

    lvlmva batch export requests.jsonl          # the lines a `--batch files` run wrote
    vllm run-batch -i requests.jsonl -o answers.jsonl --model WEIGHTS --served-model-name M
    lvlmva batch ingest answers.jsonl           # then run the same command again
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvlmva.engine.batch.ingest import LineOutcome, outcome_of, store_answers
from lvlmva.engine.batch.store import BatchStore, LineRecord, ShardRecord, Step, write_atomic
from lvlmva.errors import ConfigError, DataError

__all__ = ["Exported", "Ingested", "export_lines", "ingest_file"]

OPEN_STEPS = (Step.WRITTEN, Step.EXPORTED)


@dataclass(frozen=True)
class Exported:
    path: Path
    model: str
    lines: int
    shards: int


@dataclass(frozen=True)
class Ingested:
    answered: int
    failed: int
    retry: int
    unknown: int  # custom_ids no file shard waits for
    unreadable: int
    shards_done: int


def _file_shards(store: BatchStore) -> list[ShardRecord]:
    return [s for s in store.shards() if s.mode == "files" and s.step in OPEN_STEPS]


def export_lines(store: BatchStore, path: str | Path, model: str | None = None) -> Exported:
    """Write the pending lines of the file shards (of `model`) to `path`; the shards become
    `exported`. Several models and no `model` is a ConfigError naming them (one model per
    file, as `vllm run-batch` serves one)."""
    shards = _file_shards(store)
    models = sorted({s.model for s in shards})
    if model is None and len(models) > 1:
        raise ConfigError(f"the batch files hold requests for {', '.join(models)}: export one "
                          "model at a time with --model")  # fmt: skip
    chosen = [s for s in shards if model is None or s.model == model]
    if not chosen:
        raise ConfigError(
            f"no batch requests wait for export in {store.root}"
            + (f" for model {model}" if model else "")
            + "; a run with --batch files writes them"
        )
    content, count = [], 0
    for shard in chosen:
        pending = {line.custom_id for line in store.lines_of(shard.id) if line.pending}
        for raw in (store.read_file(shard.id, "input") or b"").splitlines(keepends=True):
            if raw.strip() and json.loads(raw)["custom_id"] in pending:
                content.append(raw)
                count += 1
    path = Path(path)
    try:
        write_atomic(path, b"".join(content))
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None
    for shard in chosen:
        if shard.step is not Step.EXPORTED:
            store.advance(shard, step=Step.EXPORTED)
    return Exported(path, chosen[0].model, count, len(chosen))


def ingest_file(store: BatchStore, cache: Any, path: str | Path) -> Ingested:
    """Read an output file (vLLM's or OpenAI's line format) into the file shards waiting for
    its lines: answers into `cache` and each shard's output file, outcomes into the manifest
    (a shard whose every line has one is `ingested`)."""
    import asyncio

    path = Path(path)
    try:
        raws = path.read_bytes().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    shards = {s.id: s for s in _file_shards(store)}
    by_shard: dict[str, list[tuple[bytes, LineOutcome]]] = defaultdict(list)
    unknown = unreadable = 0
    for raw in raws:
        if not raw.strip():
            continue
        found = _read(raw, store, shards)
        if found is None:
            unreadable += 1
        elif found[0] is None:
            unknown += 1
        else:
            by_shard[found[0].shard].append((raw, found[1]))
    counts = {"answered": 0, "failed": 0, "retry": 0}
    done = 0
    asyncio.run(store_answers(cache, (o for items in by_shard.values() for _, o in items)))
    for shard_id, items in by_shard.items():
        outcomes = [o for _, o in items]
        previous = store.read_file(shard_id, "output") or b""
        store.write_file(shard_id, "output", previous + b"".join(r + b"\n" for r, _ in items))
        for outcome in outcomes:
            counts[outcome.outcome] += 1
        record = shards[shard_id]
        settled = {o.custom_id for o in outcomes}
        left = [x for x in store.lines_of(shard_id) if x.pending and x.custom_id not in settled]
        step = Step.EXPORTED if left else Step.INGESTED
        store.resolve(record, ((o.custom_id, o.outcome, o.detail) for o in outcomes), step=step,
                      status=None if left else "completed")  # fmt: skip
        done += not left
    return Ingested(counts["answered"], counts["failed"], counts["retry"], unknown, unreadable,
                    done)  # fmt: skip


def _read(
    raw: bytes, store: BatchStore, shards: dict[str, ShardRecord]
) -> tuple[LineRecord | None, LineOutcome] | None:
    """The pending line an output line answers (None if none waits) and its outcome; None
    when the line is not an output line."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    custom_id = obj.get("custom_id") if isinstance(obj, dict) else None
    if not isinstance(custom_id, str):
        return None
    waiting = [
        line for line in store.lines_named(custom_id) if line.pending and line.shard in shards
    ]
    if not waiting:
        return None, LineOutcome(custom_id, "failed")
    shard = shards[waiting[0].shard]
    outcome = outcome_of(obj, model=shard.model, where=f"batch file {shard.id} ({shard.model})")
    return (waiting[0], outcome) if outcome is not None else None
