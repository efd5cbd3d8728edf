"""`BatchDispatcher`: the engine's calls as lines of Batch API shards (see
`lvlmva.engine.dispatch` for the contract it keeps).

`send(call)` takes the call in at once: a line already answered in an earlier run is answered
from the manifest's files; one still pending in an unfinished shard waits on that shard (which
this process then polls); any other goes into the open shard of its model, with its budget
reserved at the batch price. `on_idle()` closes the open shards; each then runs through
`ShardPoller` in its own task and, once ingested, delivers all its answers in one pass, so the
engine offers the next stage's calls (the Judge's, after the Critic's) together and they leave
as the next shard. Lines that expired, were cancelled or failed transiently go out again in a
new shard (at most `max_submits` times per request); Judge re-asks go synchronously through
an `OnlineDispatcher` (`reasks="sync"`) or in a later shard (`"batch"`).

With `mode="files"` nothing is sent: the shards are written into the manifest, and once the
engine has nothing more to offer every waiting job ends the run with `BatchDetached`, whose
message says how to export the files, run them and resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from lvlmva.engine.batch.ingest import LineOutcome, read_outcomes
from lvlmva.engine.batch.options import BatchOptions
from lvlmva.engine.batch.poller import ShardPoller, ShardSplit, ingest_shard
from lvlmva.engine.batch.progress import BatchReporter
from lvlmva.engine.batch.shards import OpenShard, ShardWriter, batch_line
from lvlmva.engine.batch.store import BatchStore, LineRecord, ShardRecord, Step, new_shard_id
from lvlmva.engine.cost import CostMeter, estimate_prompt_tokens
from lvlmva.engine.dispatch import Call, OnlineDispatcher
from lvlmva.engine.errors import ProviderError
from lvlmva.engine.types import ChatResponse
from lvlmva.errors import ConfigError, LvlmvaError

__all__ = ["BatchDetached", "BatchDispatcher"]

log = logging.getLogger(__name__)

STORED_SHARDS = 4  # ingested shards whose outcomes are kept parsed in memory


class BatchDetached(LvlmvaError):
    """The run stopped with its requests in batch files or batches that run elsewhere; the
    message says how to resume. Not a failure: nothing is lost."""

    exit_code = 75  # EX_TEMPFAIL: try again later
    label = "detached"


@dataclass
class _Waiter:
    call: Call
    future: asyncio.Future[ChatResponse]
    shard: str | None = None


class BatchDispatcher:
    """Sends calls as batch lines. `endpoint` names the API root the shards belong to (only
    its shards are resumed); `client` is the Files/Batches client (None in files mode);
    `online` answers re-asks synchronously; `cache` (the engine's `VerdictCache`) receives
    every answer at ingest, before it is delivered, so no paid answer is lost to a crash."""

    def __init__(
        self,
        *,
        options: BatchOptions,
        store: BatchStore,
        endpoint: str,
        client: Any | None,
        meter: CostMeter,
        online: OnlineDispatcher | None = None,
        cache: Any | None = None,
        reporter: BatchReporter | None = None,
    ) -> None:
        if options.mode == "api" and client is None:
            raise ConfigError("the Batch API mode needs a Files/Batches client")
        self.options = options
        self.max_in_flight = options.max_jobs
        self.batch_priced = True  # what its calls cost: the batch share of the list price
        self.meter = meter
        self.store = store
        self.endpoint = endpoint
        self.reporter = reporter or BatchReporter()
        self._client = client
        self._online = online
        self._cache = cache
        self._poller = ShardPoller(store, client, options, self.reporter) if client else None
        self._writer = self._new_writer()
        self._waiting: dict[str, _Waiter] = {}
        self._shard_tasks: dict[str, asyncio.Task[None]] = {}
        self._stored: OrderedDict[str, dict[str, LineOutcome]] = OrderedDict()
        self._known = store.has_lines(endpoint)
        self._closed = False
        self.sync_reasks = 0  # re-asks sent synchronously (docs/batch.md measures them)

    # -- the Dispatcher protocol ------------------------------------------------------------

    async def send(self, call: Call) -> ChatResponse:
        if self._closed:
            raise RuntimeError("this BatchDispatcher is closed")
        sync_reask = self.options.reasks == "sync" and self.options.mode == "api"
        if call.attempt > 0 and sync_reask and self._online is not None:
            self.sync_reasks += 1
            return await self._online.send(call)
        line = self.store.line(self.endpoint, call.custom_id) if self._known else None
        if line is not None and line.outcome == "answered":
            stored = self._stored_answer(line, call)
            if stored is not None:
                return stored
        future: asyncio.Future[ChatResponse] = asyncio.get_running_loop().create_future()
        shard = self._shard_to_wait_on(line)
        # The engine holds the budget per job and per call (at the batch price: `batch_priced`).
        waiter = _Waiter(call, future, shard.id if shard else None)
        self._waiting[call.custom_id] = waiter
        try:
            if shard is not None:
                self._follow(shard)
            else:
                self._take_in(waiter)
            return await future
        finally:
            if self._waiting.get(call.custom_id) is waiter:
                del self._waiting[call.custom_id]

    def on_idle(self) -> None:
        """Close the open shards and start them; in files mode, detach once they are written."""
        shards = self._writer.close_all()
        if self.options.mode == "files":
            self._track(self._write_then_detach(shards), f"files-{time.monotonic()}")
            return
        for shard in shards:
            self._start(shard)

    async def aclose(self) -> None:
        """Stop polling (the batches run on at the API, and a rerun resumes them), close the
        client and the manifest."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._shard_tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        running = [s for s in self.store.shards(self.endpoint) if s.submitted]
        if running:
            log.info("%d batches still run at %s; rerun to collect them", len(running),
                     self.endpoint)  # fmt: skip
        if self._client is not None:
            await self._client.aclose()
        self.store.close()

    # -- taking calls in --------------------------------------------------------------------

    def _take_in(self, waiter: _Waiter) -> None:
        call = waiter.call
        body = getattr(call.provider, "body", None)
        if body is None:
            raise ConfigError(
                f"--batch needs an OpenAI-compatible provider; {call.provider.name!r} has no "
                "request body to put in a batch file"
            )
        line = batch_line(call.custom_id, body(call.request))
        closed = self._writer.add(
            call.request.model, call.custom_id, call.step, line,
            estimate_prompt_tokens(call.request),
        )  # fmt: skip
        if closed is not None:  # full: it leaves now, the rest at on_idle
            if self.options.mode == "files":
                self._track(self._write_then_detach([closed], detach=False), closed.model)
            else:
                self._start(closed)

    def _shard_to_wait_on(self, line: LineRecord | None) -> ShardRecord | None:
        """The unfinished shard `line` is pending in, if it is one this mode can wait on."""
        if line is None or not line.pending:
            return None
        shard = self.store.shard(line.shard)
        if shard is None or shard.finished:
            return None
        if self.options.mode == "api" and shard.step is Step.EXPORTED:
            return None  # handed to an offline runner; the API run sends it itself
        return shard

    def _follow(self, shard: ShardRecord) -> None:
        """Resume `shard` in this process unless it already runs here. In files mode nothing
        is polled: its calls wait for `lvlmva batch ingest` (or a Batch API run), and
        `on_idle` detaches."""
        if shard.id in self._shard_tasks:
            return
        if self.options.mode == "files":
            if shard.mode == "api" and shard.step is Step.WRITTEN:  # never sent: export it
                self.store.advance(shard, mode="files")
            return
        if shard.mode == "files":  # written for an offline runner: this API run sends it
            shard = self.store.advance(shard, mode="api")
        self._track(self._run(shard), shard.id)

    def _stored_answer(self, line: LineRecord, call: Call) -> ChatResponse | None:
        """The answer an earlier run ingested for this line (booked as reused), or None
        when its shard's files are gone."""
        outcomes = self._stored.get(line.shard)
        if outcomes is None:
            shard = self.store.shard(line.shard)
            outcomes = {}
            for kind in ("output", "errors"):
                content = self.store.read_file(line.shard, kind)
                if content and shard is not None:
                    found, _ = read_outcomes(content, model=shard.model, where=f"batch {shard.id}")
                    outcomes.update((o.custom_id, o) for o in found)
            self._stored[line.shard] = outcomes
            while len(self._stored) > STORED_SHARDS:
                self._stored.popitem(last=False)
        outcome = outcomes.get(line.custom_id)
        if outcome is None or outcome.outcome != "answered":
            return None
        call.ledger.reused(shared=False)
        if outcome.error is not None:
            raise outcome.error
        return outcome.response

    # -- shards -----------------------------------------------------------------------------

    def _record(self, shard: OpenShard) -> tuple[ShardRecord, list[str], bytes] | None:
        """The manifest record of a closed shard, without the lines nobody waits for."""
        keep = [
            (cid, line, tokens)
            for cid, line, tokens in zip(shard.custom_ids, shard.lines, shard.tokens, strict=True)
            if cid in self._waiting and not self._waiting[cid].future.done()
        ]
        if not keep:
            return None
        content = b"".join(line for _, line, _ in keep)
        now = time.time()
        record = ShardRecord(
            id=new_shard_id(), endpoint=self.endpoint, model=shard.model,
            mode=self.options.mode, stages=shard.stage_names(), step=Step.WRITTEN,
            lines=len(keep), bytes=len(content), written_at=now, updated_at=now,
            tokens=sum(tokens for _, _, tokens in keep),
        )  # fmt: skip
        return record, [cid for cid, _, _ in keep], content

    def _start(self, shard: OpenShard) -> None:
        made = self._record(shard)
        if made is None:
            return
        record, custom_ids, content = made
        for cid in custom_ids:
            self._waiting[cid].shard = record.id
        self._track(self._write_and_run(record, custom_ids, content), record.id)

    async def _write_and_run(self, record: ShardRecord, ids: list[str], content: bytes) -> None:
        await asyncio.to_thread(self.store.add_shard, record, ids, content)
        self._known = True
        self.reporter.shard(record)
        await self._run(record)

    async def _run(self, record: ShardRecord) -> None:
        """Take the shard to its end and deliver what it answered; a permanent error fails
        the calls waiting on it (their lines stay where the manifest has them)."""
        assert self._poller is not None
        try:
            if record.step is not Step.DOWNLOADED:
                record = await self._poller.run(record)
            record, outcomes = await ingest_shard(self.store, record, self._cache)
            self.reporter.shard(record)
            self._deliver(record, outcomes)
        except ShardSplit as split:  # its halves run in its place
            for part, ids in split.parts:
                for cid in ids:
                    waiter = self._waiting.get(cid)
                    if waiter is not None and waiter.shard == record.id:
                        waiter.shard = part.id
                self.reporter.shard(part)
                self._track(self._run(part), part.id)
        except ProviderError as exc:
            self.reporter.note(f"batch {record.id}: {exc}")
            self._fail_waiters(record.id, exc)

    def _deliver(self, record: ShardRecord, outcomes: list[LineOutcome]) -> None:
        """Book and hand over every outcome in one pass; resubmit the lines to retry (those
        of a cancelled batch fail their calls instead, and go out again on a later run)."""
        again: list[_Waiter] = []
        for outcome in outcomes:
            waiter = self._waiting.get(outcome.custom_id)
            live = waiter is not None and not waiter.future.done()
            if outcome.response is not None:
                usage = outcome.response.usage
                cost = self.meter.add(record.model, usage, batch=True)
                if live:
                    waiter.call.ledger.called()
                    waiter.call.ledger.spent(usage, cost)
            elif live and outcome.outcome != "retry":
                waiter.call.ledger.called()
            if not live:
                continue
            if outcome.outcome == "retry" and record.status != "cancelled":
                again.append(waiter)  # a cancelled batch was stopped on purpose: not resent
            elif outcome.response is not None:
                waiter.future.set_result(outcome.response)
            else:
                waiter.future.set_exception(outcome.error or ProviderError("no answer"))
        if again:
            self._resubmit(record, again)

    def _resubmit(self, record: ShardRecord, waiters: list[_Waiter]) -> None:
        writer = self._new_writer()
        for waiter in waiters:
            call = waiter.call
            line = self.store.line(self.endpoint, call.custom_id)
            tries = line.tries if line is not None else 1
            if tries >= self.options.max_submits:
                detail = line.detail if line is not None else "no answer"
                waiter.future.set_exception(
                    ProviderError(f"{call.step}: no answer after {tries} batches: {detail}")
                )
                continue
            closed = writer.add(
                call.request.model, call.custom_id, call.step,
                batch_line(call.custom_id, call.provider.body(call.request)),  # type: ignore[attr-defined]
                estimate_prompt_tokens(call.request),
            )  # fmt: skip
            if closed is not None:
                self._start(closed)
        for shard in writer.close_all():
            self.reporter.note(f"batch {record.id}: {len(shard)} requests go out again")
            self._start(shard)

    def _new_writer(self) -> ShardWriter:
        o = self.options
        learned = self._poller.queue.capacity if self._poller is not None else None
        return ShardWriter(
            max_lines=o.max_lines, max_bytes=o.max_bytes, max_tokens=o.queue_tokens,
            learned=learned,
        )  # fmt: skip

    def _fail_waiters(self, shard_id: str | None, error: BaseException) -> None:
        """Fail the calls waiting on `shard_id` (None: every waiting call)."""
        for waiter in list(self._waiting.values()):
            if shard_id in (None, waiter.shard) and not waiter.future.done():
                waiter.future.set_exception(error)

    async def _write_then_detach(self, shards: list[OpenShard], *, detach: bool = True) -> None:
        """Files mode: write the shards, then end every waiting call with `BatchDetached`."""
        try:
            await self._write_files(shards)
        except Exception as exc:  # the calls must not wait forever on a shard never written
            self._fail_waiters(None, ProviderError(f"batch files: {type(exc).__name__}: {exc}"))
            raise
        if detach:
            self._detach()

    async def _write_files(self, shards: list[OpenShard]) -> None:
        for shard in shards:
            made = self._record(shard)
            if made is not None:
                record, ids, content = made
                for cid in ids:
                    self._waiting[cid].shard = record.id
                await asyncio.to_thread(self.store.add_shard, record, ids, content)
                self._known = True
                self.reporter.shard(record)

    def _detach(self) -> None:
        """End the run: every waiting call waits for batch files answered elsewhere."""
        waiting = [w for w in self._waiting.values() if not w.future.done()]
        if not waiting:
            return
        models = sorted({w.call.request.model for w in waiting})
        error = BatchDetached(
            f"{len(waiting)} requests wait in batch files under {self.store.root}: write them "
            "out with `lvlmva batch export FILE`, answer them with `vllm run-batch -i FILE -o "
            f"OUT --served-model-name {' '.join(models)} --model WEIGHTS`, read the answers "
            "with `lvlmva batch ingest OUT`, then run this command again"
        )
        # One waiter carries it out of the engine's run, which then cancels the others (an
        # exception in every job would be logged as never retrieved, once per job).
        waiting[0].future.set_exception(error)

    def _track(self, coroutine: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._shard_tasks[name] = task
        task.add_done_callback(lambda t, n=name: self._finished(n, t))

    def _finished(self, name: str, task: asyncio.Task[None]) -> None:
        if self._shard_tasks.get(name) is task:
            del self._shard_tasks[name]
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:  # a bug must not leave jobs waiting forever
            log.error("batch shard %s failed: %r", name, error)
            failure = ProviderError(f"batch shard {name}: {type(error).__name__}: {error}")
            self._fail_waiters(name, failure)
