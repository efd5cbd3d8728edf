"""The poller: drives one shard from the step the manifest holds to its end, recording each
step before the next begins, and reads its outcome.

upload -> create (tagged with the shard id in the batch metadata) -> poll with backoff until
the batch ends -> download its output and error files -> ingest. A create whose answer was
lost (a timeout, a dead connection, a killed process: the manifest then says `creating`) is
resolved by looking the batch up by its tag before creating another, so a line is never in
two batches. Transient errors are retried with the poll backoff (`MAX_TRANSIENT` in a row);
a permanent one (401, 403, 400, exhausted quota) is raised at once, leaving the manifest at
the last step done, so a later run resumes there.

A shard is created only when its model's batch queue has room for it (`QueueGate`, see
`lvlmva.engine.batch.queue`). A batch that failed validation because the queue was full
(`token_limit_exceeded`) is created again from the same file once enough of this run's other
batches of the model have ended. Refused with none of them queued, it is more than the queue
takes: a shard of several lines is split in two (`ShardSplit`; both halves go through the gate
again, and are split again if need be); a single line is created again after a growing wait
(up to `queue_waits` times, then it fails saying what to do). One that failed for another
reason fails its lines with the API's errors. Lines missing from both files (a cancelled
batch's lines that never ran) are `retry`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from lvlmva.engine.batch.client import BatchClient, BatchInfo
from lvlmva.engine.batch.ingest import LineOutcome, read_outcomes, store_answers
from lvlmva.engine.batch.options import BatchOptions
from lvlmva.engine.batch.progress import BatchReporter
from lvlmva.engine.batch.queue import QueueGate
from lvlmva.engine.batch.shards import halves
from lvlmva.engine.batch.store import BatchStore, ShardRecord, Step, new_shard_id
from lvlmva.engine.errors import BadRequest, ProviderError, ServerError

__all__ = ["MAX_TRANSIENT", "ShardPoller", "ShardSplit", "ingest_shard"]

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_TRANSIENT = 12  # transient errors in a row before a step gives up (~7 min of waits)
QUEUE_FULL = "token_limit_exceeded"


class ShardSplit(Exception):
    """The shard was split in two, never having run: its lines wait in `parts` ((record,
    custom_ids) each), which are to be run in its place."""

    def __init__(self, record: ShardRecord, parts: list[tuple[ShardRecord, list[str]]]) -> None:
        super().__init__(f"batch {record.id} split into {len(parts)} shards")
        self.record, self.parts = record, parts


class ShardPoller:
    """Moves shards through their steps against `client`, recording each in `store`."""

    def __init__(
        self,
        store: BatchStore,
        client: BatchClient,
        options: BatchOptions,
        reporter: BatchReporter,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.client = client
        self.options = options
        self.reporter = reporter
        self._sleep = sleep
        self.queue = QueueGate(options.queue_tokens)
        self._creates: dict[str, int] = {}  # shard id -> creates tried in this process
        self._queue_waits: dict[str, int] = {}  # shard id -> full-queue waits with none queued

    async def run(self, record: ShardRecord) -> ShardRecord:
        """Take `record` to `downloaded` (or return it as it is once ingested)."""
        if record.step in (Step.CREATING, Step.CREATED, Step.POLLED):
            self.queue.hold(record.model, record.id, record.tokens)  # a resumed batch
        try:
            return await self._steps(record)
        finally:
            self.queue.leave(record.model, record.id)

    async def _steps(self, record: ShardRecord) -> ShardRecord:
        while True:
            step = record.step
            if step in (Step.DOWNLOADED, Step.INGESTED):
                return record
            if step is Step.WRITTEN:
                record = await self._upload(record)
            elif step is Step.UPLOADED:
                record = await self._create(record)
            elif step is Step.CREATING:
                record = await self._adopt_or_create(record)
            elif step in (Step.CREATED, Step.POLLED):
                record = await self._poll(record)
            else:
                raise ValueError(f"shard {record.id} is {step}: not a Batch API shard")
            self.reporter.shard(record)

    async def _upload(self, record: ShardRecord) -> ShardRecord:
        content = self.store.read_file(record.id, "input")
        if content is None:
            raise BadRequest(f"batch shard {record.id}: its input file is missing from "
                             f"{self.store.root}")  # fmt: skip
        file_id, uploaded_at = await self._patiently(
            lambda: self.client.upload(f"lvlmva-{record.id}.jsonl", content)
        )
        return self.store.advance(
            record, step=Step.UPLOADED, file_id=file_id, uploaded_at=uploaded_at
        )

    async def _create(self, record: ShardRecord) -> ShardRecord:
        assert record.file_id is not None
        await self._admit(record)
        if record.lines > 1 and self.queue.never_fits(record.model, record.tokens):
            content = self.store.read_file(record.id, "input")
            if content:  # larger than what the queue is now thought to take: split untried
                self.queue.leave(record.model, record.id)
                raise self._split(record, content, tried=False)
        tries = self._creates[record.id] = self._creates.get(record.id, 0) + 1
        record = self.store.advance(record, step=Step.CREATING)
        try:
            info = await self.client.create(record.file_id, record.id)
        except ProviderError as exc:
            if not exc.retryable:
                # Refused for sure: nothing was created. Back to `uploaded`.
                self.store.advance(record, step=Step.UPLOADED)
                self.queue.leave(record.model, record.id)
                raise
            if tries >= MAX_TRANSIENT:
                raise  # still `creating`: a later run looks the batch up first
            log.info("batch create for shard %s: %s; looking it up", record.id, exc)
            await self._sleep(self.options.poll_s)
            return record  # still `creating`: the next step looks it up first
        return self._created(record, info)

    async def _admit(self, record: ShardRecord) -> None:
        """Wait until the model's batch queue has room for the shard."""
        queue = self.queue
        if not queue.fits(record.model, record.tokens):
            self.reporter.note(
                f"batch {record.id}: waits for room in the batch queue of {record.model} "
                f"(this run holds {queue.held(record.model):,} of "
                f"{queue.capacity(record.model):,} prompt tokens; it needs {record.tokens:,})"
            )
        await queue.enter(record.model, record.id, record.tokens)

    async def _adopt_or_create(self, record: ShardRecord) -> ShardRecord:
        """A create was sent and its answer never recorded: find that batch, else create."""
        assert record.file_id is not None
        since = record.uploaded_at if record.uploaded_at is not None else 0.0
        found = await self._patiently(
            lambda: self.client.find(record.id, record.file_id or "", since)
        )
        if found is not None:
            return self._created(record, found)
        return await self._create(record)

    def _created(self, record: ShardRecord, info: BatchInfo) -> ShardRecord:
        return self.store.advance(
            record,
            step=Step.CREATED,
            batch_id=info.id,
            status=info.status,
            expires_at=info.expires_at,
            submits=record.submits + 1,
            output_file_id=None,
            error_file_id=None,
        )

    async def _poll(self, record: ShardRecord) -> ShardRecord:
        """Poll until the batch ends (recording each change), then download its files."""
        batch_id = record.batch_id
        assert batch_id is not None
        wait = self.options.poll_s
        seen = (record.status, record.completed, record.failed)
        while True:
            info = await self._patiently(lambda: self.client.retrieve(batch_id))
            now = (info.status, info.completed, info.failed)
            if now != seen or record.step is Step.CREATED:
                record = self._progress(
                    record, info, Step.POLLED, expires_at=info.expires_at or record.expires_at
                )
                wait = self.options.poll_s if now != seen else wait
                seen = now
            self.reporter.shard(record)
            if info.finished:
                return await self._finished(record, info)
            await self._sleep(wait)
            wait = self.options.next_poll_s(wait)

    async def _finished(self, record: ShardRecord, info: BatchInfo) -> ShardRecord:
        self.queue.leave(record.model, record.id)
        error = "; ".join(info.errors)[:2000] or None
        if info.status == "failed" and QUEUE_FULL in info.error_codes:
            again = await self._queue_full(record)
            if again:
                return self.store.advance(record, step=Step.UPLOADED, batch_id=None)
            error = self._queue_full_error(record)
        files = {}
        for kind, file_id in (("output", info.output_file_id), ("errors", info.error_file_id)):
            if file_id:
                files[kind] = await self._patiently(lambda f=file_id: self.client.download(f))
        for kind, content in files.items():
            self.store.write_file(record.id, kind, content)
        return self._progress(
            record, info, Step.DOWNLOADED, output_file_id=info.output_file_id,
            error_file_id=info.error_file_id, error=error,
        )  # fmt: skip

    async def _queue_full(self, record: ShardRecord) -> bool:
        """The batch was refused for a full queue: whether to create it again (its create
        then waits in `_admit` for room), after a wait when no batch of this run can end to
        make room."""
        others = self.queue.refused(record.model, record.id)
        if others:
            self.reporter.note(
                f"batch {record.id}: the batch queue of {record.model} is full; it is created "
                f"again once this run's other batches leave room (they hold {others:,} prompt "
                "tokens)"
            )
            return True
        if record.lines > 1 and (content := self.store.read_file(record.id, "input")):
            raise self._split(record, content)
        waits = self._queue_waits[record.id] = self._queue_waits.get(record.id, 0) + 1
        if waits > self.options.queue_waits:
            return False
        pause = self.options.queue_wait_s(waits)
        self.reporter.note(f"batch {record.id}: the batch queue of {record.model} is full with "
                           f"none of this run's batches in it; creating it again in "
                           f"{pause:.0f} s")  # fmt: skip
        await self._sleep(pause)
        return True

    def _split(self, record: ShardRecord, content: bytes, *, tried: bool = True) -> ShardSplit:
        """The shard is more than the queue takes (`tried`: it was refused with none of this
        run's batches queued, and the gate learns half its tokens; else one no larger was).
        Its halves replace it in the manifest."""
        if tried:
            cap = self.queue.too_large(record.model, record.tokens)
            why = (f"the batch queue of {record.model} took none of its ~{record.tokens:,} "
                   "prompt tokens with none of this run's batches in it; split in two, and "
                   f"its shards are cut to {cap:,} from now on")  # fmt: skip
        else:
            why = (f"~{record.tokens:,} prompt tokens, more than half of a shard the batch "
                   f"queue of {record.model} refused; split in two without trying")  # fmt: skip
        now = time.time()
        parts = [
            (ShardRecord(
                id=new_shard_id(), endpoint=record.endpoint, model=record.model,
                mode=record.mode, stages=record.stages, step=Step.WRITTEN, lines=len(ids),
                bytes=len(body), written_at=now, updated_at=now, tokens=tokens,
            ), ids, body)
            for ids, body, tokens in halves(content, record.tokens)
        ]  # fmt: skip
        self.store.split(record, parts, "the batch queue refused it" if tried else
                         "more than half of a shard the batch queue refused")  # fmt: skip
        self.reporter.note(f"batch {record.id}: {why}")
        return ShardSplit(record, [(part, ids) for part, ids, _ in parts])

    def _queue_full_error(self, record: ShardRecord) -> str:
        waits = self._queue_waits.get(record.id, 0) - 1
        return (
            f"token_limit_exceeded: the batch queue of {record.model} stayed full over {waits} "
            f"waits with none of this run's batches in it. Either other batches of the "
            f"organisation fill it (rerun later: nothing is lost), or this shard's ~"
            f"{record.tokens:,} prompt tokens are more than the model's batch queue limit: pass "
            "--batch-queue-tokens with the limit from the API's limits page (shards are cut to "
            "it, and a request over it is refused before it is sent: send it without --batch)"
        )

    def _progress(
        self, record: ShardRecord, info: BatchInfo, step: Step, **changes: Any
    ) -> ShardRecord:
        """Record `step` with the batch's status and line counts as `info` gives them."""
        return self.store.advance(
            record, step=step, status=info.status, completed=info.completed, failed=info.failed,
            **changes,
        )  # fmt: skip

    async def _patiently(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()`, retried on transient errors with the poll backoff."""
        wait = self.options.poll_s
        for tries in range(1, MAX_TRANSIENT + 1):
            try:
                return await attempt()
            except ProviderError as exc:
                if not exc.retryable or tries == MAX_TRANSIENT:
                    raise
                pause = max(wait, exc.retry_after or 0.0)
                log.info("batch API: %s; trying again in %.1f s", exc, pause)
                await self._sleep(pause)
                wait = self.options.next_poll_s(wait)
        raise AssertionError("unreachable")


async def ingest_shard(
    store: BatchStore, record: ShardRecord, cache: object | None
) -> tuple[ShardRecord, list[LineOutcome]]:
    """The outcome of every line of a downloaded shard: its answers stored in `cache` (when
    given) first, then every outcome and the `ingested` step recorded in one transaction."""
    where = f"batch {record.batch_id or record.id} ({record.model})"
    outcomes: dict[str, LineOutcome] = {}
    unreadable = 0
    for kind in ("output", "errors"):
        content = store.read_file(record.id, kind)
        if content:  # parsed off the event loop: a full shard is 50,000 lines
            found, bad = await asyncio.to_thread(
                read_outcomes, content, model=record.model, where=where
            )
            unreadable += bad
            outcomes.update((o.custom_id, o) for o in found)
    mine = {line.custom_id for line in store.lines_of(record.id) if line.pending}
    outcomes = {cid: o for cid, o in outcomes.items() if cid in mine}
    for cid in mine - outcomes.keys():
        outcomes[cid] = _unanswered(record, where, cid)
    if cache is not None:
        await store_answers(cache, outcomes.values())
    notes = [record.error] if record.error else []
    if unreadable:
        notes.append(f"{unreadable} output lines could not be read")
    record = await asyncio.to_thread(
        store.resolve,
        record,
        [(o.custom_id, o.outcome, o.detail) for o in outcomes.values()],
        step=Step.INGESTED,
        error="; ".join(notes) or None,
    )
    store.path(record.id, "input").unlink(missing_ok=True)  # sent and answered: not needed
    return record, list(outcomes.values())


def _unanswered(record: ShardRecord, where: str, custom_id: str) -> LineOutcome:
    if record.status == "failed":
        reason = record.error or "the batch failed validation"
        return LineOutcome(custom_id, "failed", error=BadRequest(f"{where}: failed: {reason}"))
    why = {"cancelled": "the batch was cancelled before it ran (a rerun sends it again)"}.get(
        record.status or "", f"the batch ended {record.status} without an answer for it"
    )
    return LineOutcome(custom_id, "retry", error=ServerError(f"{where}: {why}"))
