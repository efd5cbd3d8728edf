"""Files and the Batch API of the OpenAI stand-in, through the official openai SDK: upload and
download, the whole batch lifecycle on a fake clock (validating, in_progress, finalizing,
completed; expiry with partial output; cancel midway), per-line errors, validation failures,
listing, and the ledger of submitted lines."""

from __future__ import annotations

import io
import json

import openai
import pytest
from openai.types import Batch, FileDeleted, FileObject
from standin_support import serve, user

from lvlmva.simulation.answerers import FixedAnswerer
from lvlmva.simulation.batch_api import BatchTiming
from lvlmva.simulation.openai_standin import StandInConfig

URL = "/v1/chat/completions"


def line(custom_id: str, model: str = "gpt-4o", **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": URL,
        "body": {"model": model, "messages": user(f"request {custom_id}"), **body},
    }


def jsonl(items) -> bytes:
    return "".join((i if isinstance(i, str) else json.dumps(i)) + "\n" for i in items).encode()


async def upload(client: openai.AsyncOpenAI, items, name: str = "requests.jsonl") -> FileObject:
    return await client.files.create(file=(name, io.BytesIO(jsonl(items))), purpose="batch")


async def start(client: openai.AsyncOpenAI, items) -> Batch:
    file = await upload(client, items)
    return await client.batches.create(
        input_file_id=file.id, endpoint=URL, completion_window="24h", metadata={"run": "t"}
    )


async def read_lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(x) for x in content.text.splitlines()]


def config(**timing) -> StandInConfig:
    return StandInConfig(batch=BatchTiming(**timing))


async def test_files_upload_retrieve_list_download_delete():
    async with serve() as s:
        data = jsonl([line("a"), "not json at all"])
        file = await s.client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
        assert file.purpose == "batch" and file.bytes == len(data) and file.status == "processed"
        assert file.expires_at == file.created_at + 30 * 24 * 3600  # batch files: 30 days
        _, _, raw = await s.raw("GET", f"/v1/files/{file.id}")
        FileObject.model_validate(raw)
        assert (await s.client.files.retrieve(file.id)).filename == "in.jsonl"
        assert (await s.client.files.content(file.id)).content == data
        other = await s.client.files.create(
            file=("notes.txt", io.BytesIO(b"x")),
            purpose="user_data",
            expires_after={"anchor": "created_at", "seconds": 3600},
        )
        assert other.expires_at == other.created_at + 3600
        listed = await s.client.files.list(purpose="batch")
        assert [f.id for f in listed.data] == [file.id]
        deleted = await s.client.files.delete(file.id)
        assert isinstance(deleted, FileDeleted) and deleted.deleted and deleted.id == file.id
        with pytest.raises(openai.NotFoundError):
            await s.client.files.content(file.id)
        with pytest.raises(openai.BadRequestError, match=r"Must be \.jsonl"):
            await s.client.files.create(file=("in.json", io.BytesIO(data)), purpose="batch")
        with pytest.raises(openai.BadRequestError) as info:
            await s.client.files.create(file=("x.jsonl", io.BytesIO(data)), purpose="batches")
        assert info.value.param == "purpose"
        s.standin.advance(3601)
        with pytest.raises(openai.NotFoundError):  # expired
            await s.client.files.retrieve(other.id)
        records = s.standin.ledger.files
        assert [r.file_id for r in records] == [file.id, other.id] and records[0].lines == 2


async def test_batch_lifecycle_on_the_clock_with_a_per_line_error():
    timing = {"validation_s": 60, "lines_per_s": 1, "finalizing_s": 30}
    async with serve(FixedAnswerer("done and done"), config(**timing)) as s:  # 4 tokens
        bad = line("d", max_tokens=10)
        bad["body"]["top_k"] = 3  # the endpoint refuses this body, not the batch
        batch = await start(s.client, [line("a"), line("b"), line("c", max_tokens=2), bad])
        assert batch.status == "validating" and batch.request_counts.total == 0
        assert batch.expires_at == batch.created_at + 24 * 3600
        s.standin.advance(59)
        assert (await s.client.batches.retrieve(batch.id)).status == "validating"
        s.standin.advance(1)
        running = await s.client.batches.retrieve(batch.id)
        assert running.status == "in_progress" and running.in_progress_at == batch.created_at + 60
        assert running.request_counts.total == 4 and running.model == "gpt-4o"
        s.standin.advance(2)
        running = await s.client.batches.retrieve(batch.id)
        assert running.request_counts.completed + running.request_counts.failed == 2
        s.standin.advance(2)
        assert (await s.client.batches.retrieve(batch.id)).status == "finalizing"
        s.standin.advance(30)
        _, _, raw = await s.raw("GET", f"/v1/batches/{batch.id}")
        done = Batch.model_validate(raw)
        assert done.status == "completed" and done.completed_at == done.finalizing_at + 30
        assert (done.request_counts.completed, done.request_counts.failed) == (3, 1)
        assert done.metadata == {"run": "t"}
        outputs = await read_lines(s.client, done.output_file_id)
        errors = await read_lines(s.client, done.error_file_id)
        assert sorted(o["custom_id"] for o in outputs) == ["a", "b", "c"]
        by_id = {o["custom_id"]: o for o in outputs}
        assert by_id["c"]["response"]["body"]["choices"][0]["finish_reason"] == "length"
        assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in outputs)
        assert [e["custom_id"] for e in errors] == ["d"]
        with pytest.raises(openai.BadRequestError) as info:  # the same body, synchronously
            known = {k: v for k, v in bad["body"].items() if k != "top_k"}
            await s.client.chat.completions.create(**known, extra_body={"top_k": 3})
        assert errors[0]["response"] == {
            "status_code": 400,
            "request_id": errors[0]["response"]["request_id"],
            "body": {"error": info.value.body},
        }
        usage = done.usage
        totals = s.standin.ledger.by_model("batch")["gpt-4o"]
        assert usage.input_tokens == totals.prompt_tokens and usage.output_tokens == 4 + 4 + 2
        meta = await s.client.files.retrieve(done.output_file_id)
        assert meta.purpose == "batch_output" and meta.filename == f"{batch.id}_output.jsonl"


async def test_batch_output_order_is_not_the_input_order():
    async with serve() as s:
        batch = await start(s.client, [line(f"r{i:02d}") for i in range(20)])
        done = await s.client.batches.retrieve(batch.id)
        order = [o["custom_id"] for o in await read_lines(s.client, done.output_file_id)]
        assert sorted(order) == [f"r{i:02d}" for i in range(20)] and order != sorted(order)


async def test_batch_expires_at_24_hours_with_partial_output():
    async with serve(config=config(lines_per_s=1 / 3600)) as s:  # one line an hour
        batch = await start(s.client, [line(f"r{i}") for i in range(30)])
        s.standin.advance(10 * 3600)
        assert (await s.client.batches.retrieve(batch.id)).request_counts.completed == 10
        s.standin.advance(14 * 3600)
        expired = await s.client.batches.retrieve(batch.id)
        assert expired.status == "expired" and expired.expired_at == expired.expires_at
        assert expired.request_counts.completed == 24 and expired.request_counts.failed == 0
        outputs = await read_lines(s.client, expired.output_file_id)
        errors = await read_lines(s.client, expired.error_file_id)
        assert len(outputs) == 24 and len(errors) == 6
        assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in errors)
        assert {o["custom_id"] for o in outputs} | {e["custom_id"] for e in errors} == {
            f"r{i}" for i in range(30)
        }
        with pytest.raises(openai.BadRequestError, match="Cannot cancel a batch with status"):
            await s.client.batches.cancel(batch.id)


async def test_batch_cancel_midway_keeps_partial_output():
    async with serve(config=config(lines_per_s=1, cancel_s=600)) as s:
        batch = await start(s.client, [line(f"r{i}") for i in range(10)])
        s.standin.advance(3)
        cancelling = await s.client.batches.cancel(batch.id)
        assert (
            cancelling.status == "cancelling" and cancelling.cancelling_at == batch.created_at + 3
        )
        s.standin.advance(599)
        assert (await s.client.batches.retrieve(batch.id)).status == "cancelling"
        s.standin.advance(1)
        cancelled = await s.client.batches.retrieve(batch.id)
        assert cancelled.status == "cancelled" and cancelled.request_counts.completed == 3
        assert len(await read_lines(s.client, cancelled.output_file_id)) == 3
        assert cancelled.error_file_id is None
        assert (await s.client.batches.cancel(batch.id)).status == "cancelled"


async def _failed_with(s, items) -> list:
    batch = await start(s.client, items)
    failed = await s.client.batches.retrieve(batch.id)
    assert failed.status == "failed" and failed.failed_at is not None
    assert failed.output_file_id is None and failed.error_file_id is None
    return [(e.code, e.line) for e in failed.errors.data]


async def test_batch_validation_fails_the_batch_with_line_numbers():
    async with serve(config=config(max_lines=3, queue_tokens=100)) as s:
        no_method = line("m")
        del no_method["method"]
        wrong_url = {**line("u"), "url": "/v1/embeddings"}
        found = await _failed_with(
            s, [line("a"), "{broken", line("a"), no_method, wrong_url, line("z")]
        )
        assert found == [
            ("invalid_json_line", 2),
            ("duplicate_custom_id", 3),
            ("missing_required_parameter", 4),
            ("url_mismatch", 5),
        ]
        found = await _failed_with(s, [line("a"), line("b", model="gpt-4.1")])
        assert found == [("model_mismatch", 2)]
        assert await _failed_with(s, [line("a", model="gpt-7")]) == [("model_not_found", None)]
        assert await _failed_with(s, [line(str(i)) for i in range(4)]) == [("too_many_tasks", None)]
        assert await _failed_with(s, ["", "  "]) == [("empty_file", None)]
        # Only prompt tokens count ("no limits for output tokens"): a large max_tokens fits ...
        fits = await start(s.client, [line("fits", max_tokens=10_000)])
        s.standin.batches.tick()
        assert (await s.client.batches.retrieve(fits.id)).status != "failed"
        s.standin.advance(3600)
        # ... a long prompt does not
        big = {**line("big"), "body": {"model": "gpt-4o", "messages": user("word " * 200)}}
        assert await _failed_with(s, [big]) == [("token_limit_exceeded", None)]


async def test_batch_create_refuses_what_the_api_refuses_at_once():
    async with serve() as s:
        file = await upload(s.client, [line("a")])
        create = s.client.batches.create
        with pytest.raises(openai.BadRequestError) as info:
            await create(input_file_id=file.id, endpoint=URL, completion_window="48h")  # type: ignore[arg-type]
        assert info.value.param == "completion_window"
        with pytest.raises(openai.BadRequestError) as info:
            await create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
        assert info.value.code == "not_served_by_stand_in"
        with pytest.raises(openai.NotFoundError):
            await create(input_file_id="file-nope", endpoint=URL, completion_window="24h")
        notes = await s.client.files.create(
            file=("n.jsonl", io.BytesIO(b"{}")), purpose="user_data"
        )
        with pytest.raises(openai.BadRequestError, match="purpose 'batch'"):
            await create(input_file_id=notes.id, endpoint=URL, completion_window="24h")
        with pytest.raises(openai.NotFoundError):
            await s.client.batches.retrieve("batch_nope")


async def test_batch_list_pages_newest_first():
    async with serve() as s:
        ids = []
        for i in range(5):
            ids.append((await start(s.client, [line(f"r{i}")])).id)
            s.standin.advance(1)
        first = await s.client.batches.list(limit=2)
        assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
        everything = [b.id async for b in await s.client.batches.list(limit=2)]
        assert everything == ids[::-1]
        after = await s.client.batches.list(after=ids[2], limit=10)
        assert [b.id for b in after.data] == ids[:2][::-1] and not after.has_more
        with pytest.raises(openai.BadRequestError):
            await s.client.batches.list(limit=101)


async def test_ledger_sees_a_line_submitted_twice():
    async with serve() as s:
        await start(s.client, [line("a"), line("b")])
        await start(s.client, [line("b"), line("c")])  # "b" again: the same body
        repeated = s.standin.ledger.batch_lines_submitted_more_than_once()
        assert list(repeated.values()) == [2]
        s.standin.batches.tick()
        assert list(s.standin.ledger.answered_more_than_once().values()) == [2]
        assert s.standin.ledger.sync_calls == 0
