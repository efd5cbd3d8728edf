"""The batch queue: shards kept within a model's enqueued-token limit against the strict
stand-in (which refuses a batch past `queue_tokens` with `token_limit_exceeded`), the gate on
its own, and a manifest of an earlier version."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3

import pytest
from batch_support import answer, batch_engine, job, run_jobs, ticking, verdicts_of
from standin_support import serve

from lvlmva.engine.batch.options import BatchOptions
from lvlmva.engine.batch.progress import describe_shard
from lvlmva.engine.batch.queue import QueueGate
from lvlmva.engine.batch.shards import batch_line, halves
from lvlmva.engine.batch.store import BatchStore, ShardRecord, Step
from lvlmva.engine.types import JobStatus
from lvlmva.simulation.answerers import FixedAnswerer
from lvlmva.simulation.batch_api import BatchTiming
from lvlmva.simulation.openai_standin import StandInConfig

# One Critic line of batch_support's jobs is 278 prompt tokens to the stand-in: two-line
# shards are 556, so a queue of 1,200 holds two of them at a time.
QUEUE = 1_200


def slow(queue_tokens: int) -> StandInConfig:
    """Batches that run for a long time (100 s of fake clock per line) behind a small queue."""
    return StandInConfig(batch=BatchTiming(lines_per_s=0.01, queue_tokens=queue_tokens))


def refused(s) -> int:
    return sum(
        "token_limit_exceeded" in [e["code"] for e in b.errors]
        for b in s.standin.batches._batches.values()
    )


def most_queued(s, model: str = "gpt-4o") -> int:
    """The largest prompt-token total one batch of `model` put in its queue."""
    return max(
        b.queued_tokens for b in s.standin.batches._batches.values() if b.model == model
    )


async def test_a_full_queue_is_waited_out_on_the_runs_own_batches(tmp_path):
    async with serve(FixedAnswerer(answer), slow(QUEUE)) as s, ticking(s, 2):
        engine = batch_engine(s, tmp_path, BatchOptions(poll_s=0.01, max_lines=2))
        results = await run_jobs(engine, [job(i) for i in range(8)], timeout=60)
    assert {k: r.status for k, r in results.items()} == {f"job{i}": JobStatus.OK for i in range(8)}
    assert {k: r.verdicts for k, r in results.items()} == {
        f"job{i}": verdicts_of(i) for i in range(8)
    }
    assert s.standin.ledger.answered_more_than_once() == {}
    # Refused once when the third shard met the two before it; after that the gate knows the
    # queue holds two and creates the next shard only when one has ended.
    assert 1 <= refused(s) <= 2


async def test_with_the_limit_given_shards_are_cut_to_it_and_none_is_refused(tmp_path):
    async with serve(FixedAnswerer(answer), slow(QUEUE)) as s, ticking(s, 2):
        options = BatchOptions(poll_s=0.01, queue_tokens=QUEUE)
        engine = batch_engine(s, tmp_path, options)
        results = await run_jobs(engine, [job(i) for i in range(8)], timeout=60)
    assert all(r.ok for r in results.values())
    assert refused(s) == 0
    assert most_queued(s) <= QUEUE
    with BatchStore(tmp_path / "batches") as store:
        critic = [r for r in store.shards() if r.model == "gpt-4o"]
    assert len(critic) >= 2 and all(0 < r.tokens <= QUEUE for r in critic)


async def test_a_shard_larger_than_the_queue_is_split_until_its_halves_fit(tmp_path):
    """No limit given and one shard of eight lines (2,224 prompt tokens) against a queue of
    600: refused with nothing else queued, it is split in halves, and they again, until the
    two-line shards fit; every job is answered once, and a rerun sends nothing."""
    async with serve(FixedAnswerer(answer), slow(600)) as s, ticking(s, 2):
        options = BatchOptions(poll_s=0.01, max_lines=8)
        results = await run_jobs(batch_engine(s, tmp_path, options), [job(i) for i in range(8)],
                                 timeout=60)  # fmt: skip
        assert {k: r.verdicts for k, r in results.items()} == {
            f"job{i}": verdicts_of(i) for i in range(8)
        }
        assert s.standin.ledger.answered_more_than_once() == {}
        ran = [b for b in s.standin.batches._batches.values() if b.status == "completed"]
        assert ran and all(b.queued_tokens <= 600 for b in ran)
        # 8 lines refused, then 4 (its twin of 4 is split untried), then none: 2 refusals
        assert refused(s) == 2
        created = len(s.standin.batches._batches)
        again = await run_jobs(batch_engine(s, tmp_path, options), [job(i) for i in range(8)])
        assert all(r.ok for r in again.values())
        assert len(s.standin.batches._batches) == created
    with BatchStore(tmp_path / "batches") as store:
        shards = store.shards()
    split = [r for r in shards if r.error and r.error.startswith("split into ")]
    assert split and split[0].lines == 8 and split[0].finished
    assert "refused as too large for the batch queue, split into" in describe_shard(split[0])
    critic = [r for r in shards if r.model == "gpt-4o" and r not in split]
    assert sorted(r.lines for r in critic if r.status == "completed") == [2, 2, 2, 2]


async def test_a_line_the_queue_never_takes_fails_saying_what_to_do_and_a_rerun_resumes(
    tmp_path,
):
    async with serve(FixedAnswerer(answer), slow(200)) as s, ticking(s, 2):
        options = BatchOptions(poll_s=0.001, queue_waits=2)
        (result,) = (await run_jobs(batch_engine(s, tmp_path, options), [job(0)])).values()
        assert result.status is JobStatus.FAILED and "--batch-queue-tokens" in result.error
        assert refused(s) == 3  # the first create and two waits
        s.standin.batches.timing = dataclasses.replace(s.standin.batches.timing, queue_tokens=400)
        again = await run_jobs(batch_engine(s, tmp_path, options), [job(0)])
    assert all(r.ok for r in again.values())
    assert refused(s) == 3


async def test_the_gate_admits_what_fits_and_learns_from_a_refusal():
    gate = QueueGate(limit=10)
    await gate.enter("m", "a", 6)
    await gate.enter("m", "b", 4)
    third = asyncio.ensure_future(gate.enter("m", "c", 3))
    await asyncio.sleep(0)
    assert not third.done()  # 6 + 4 + 3 > 10
    await gate.enter("other", "d", 10)  # another model's queue is its own
    gate.leave("m", "a")
    await asyncio.wait_for(third, 1)
    assert gate.held("m") == 7
    assert gate.refused("m", "c") == 4  # the queue held no more than b's 4 tokens
    assert gate.capacity("m") == 4 and not gate.fits("m", 1)
    gate.leave("m", "b")
    assert gate.fits("m", 1_000)  # nothing of this run queued: always worth a try


def test_a_split_moves_every_line_to_one_half_in_one_step(tmp_path):
    lines = [batch_line(f"c{i}", b'{"x":"' + b"a" * (10 * (i + 1)) + b'"}') for i in range(4)]
    content = b"".join(lines)
    (first_ids, first, t1), (second_ids, second, t2) = halves(content, 1000)
    assert first + second == content and first_ids + second_ids == ["c0", "c1", "c2", "c3"]
    assert abs(len(first) - len(second)) < len(lines[-1]) and t1 + t2 == 1000
    record = ShardRecord(id="s1", endpoint="e", model="m", mode="api", stages="critic",
                         step=Step.POLLED, lines=4, bytes=len(content), written_at=0.0,
                         updated_at=0.0, tokens=1000, status="failed")  # fmt: skip
    with BatchStore(tmp_path / "batches") as store:
        store.add_shard(record, first_ids + second_ids, content)
        parts = [
            (dataclasses.replace(record, id=f"s1{k}", step=Step.WRITTEN, lines=len(ids),
                                 bytes=len(body), tokens=tokens, status=None), ids, body)
            for k, (ids, body, tokens) in zip("ab", halves(content, 1000), strict=True)
        ]  # fmt: skip
        ended = store.split(record, parts)
        assert ended.finished and ended.error.startswith("split into s1a, s1b")
        assert store.read_file("s1a", "input") == first and store.read_file("s1", "input") is None
        assert [line.custom_id for line in store.lines_of("s1b")] == second_ids
        assert {line.tries for line in store.lines_named("c0")} == {1}  # nothing ran
        assert store.lines_of("s1") == []
    with pytest.raises(ValueError, match="one line"):
        halves(lines[0], 10)


def test_a_manifest_of_an_earlier_version_opens_with_its_shards(tmp_path):
    root = tmp_path / "batches"
    with BatchStore(root) as store:
        store.add_shard(
            ShardRecord(id="s1", endpoint="e", model="m", mode="api", stages="critic",
                        step=Step.WRITTEN, lines=1, bytes=3, written_at=0.0, updated_at=0.0),
            ["c1"], b"{}\n",
        )  # fmt: skip
    with sqlite3.connect(root / "manifest.sqlite3") as db:
        db.execute("ALTER TABLE shards DROP COLUMN tokens")  # as written before the column
    with BatchStore(root) as store:
        (shard,) = store.shards()
    assert shard.id == "s1" and shard.tokens == 0


@pytest.mark.parametrize("value", [0, -5])
def test_a_queue_limit_below_one_is_refused(value):
    with pytest.raises(Exception, match="--batch-queue-tokens"):
        BatchOptions(queue_tokens=value)
