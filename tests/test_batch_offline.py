"""Batch files for `vllm run-batch`: a `--batch files` run writes its shards and detaches,
`lvlmva batch export` writes their lines, an output file in vLLM's line format (answers and
its two error shapes) is read back by `lvlmva batch ingest`, and the same run then goes on
stage by stage to every verdict. Also `lvlmva batch status` and `cancel`, and the readers of
OpenAI's and vLLM's output lines."""

from __future__ import annotations

import asyncio
import json

import pytest
from batch_support import answer, batch_engine, job, run_jobs, verdicts_of
from standin_support import serve

from lvlmva.cache import VerdictCache
from lvlmva.cli import main
from lvlmva.engine.batch.dispatcher import BatchDetached
from lvlmva.engine.batch.ingest import read_outcomes
from lvlmva.engine.batch.options import BatchOptions
from lvlmva.engine.batch.store import BatchStore, Step
from lvlmva.engine.errors import AuthenticationFailed, BadRequest, ServerError
from lvlmva.simulation.answerers import FixedAnswerer

FILES = BatchOptions(mode="files", poll_s=0.01)


def vllm_run_batch(standin, requests: bytes, refuse: set[str] = frozenset()) -> bytes:
    """What `vllm run-batch` writes for `requests`: each body answered (here by the stand-in's
    chat rules), in vLLM's `BatchRequestOutput` lines; the `refuse`d custom_ids answered with
    vLLM's error shape (status 400, no body, the message as a string)."""
    out = []
    for k, raw in enumerate(requests.splitlines()):
        line = json.loads(raw)
        if line["custom_id"] in refuse:
            response = {"status_code": 400, "request_id": f"vllm-batch-{k}", "body": None}
            error = "This model's maximum context length is 4096 tokens."
        else:
            outcome = standin.engine.run(line["body"])
            response = {"status_code": 200, "request_id": f"vllm-batch-{k}", "body": outcome.body}
            error = None
        out.append({"id": f"vllm-{k}", "custom_id": line["custom_id"], "response": response,
                    "error": error})  # fmt: skip
    return "".join(json.dumps(o) + "\n" for o in out).encode()


async def _detached(served, cache_dir, jobs) -> list:
    results = []
    with pytest.raises(BatchDetached, match="lvlmva batch export"):
        engine = batch_engine(served, cache_dir, FILES)
        try:
            async for result in engine.run(jobs):
                results.append(result)
        finally:
            await engine.aclose()
    return results


async def cli(*argv: str) -> int:
    """`lvlmva argv` (it runs its own event loop, so in a thread here)."""
    return await asyncio.to_thread(main, list(argv))


async def _round(standin, tmp_path, name: str, models, refuse=frozenset()) -> None:
    """Export (one file per model), answer as vllm run-batch would, ingest: a stage done
    offline."""
    cache = str(tmp_path / "cache")
    for model in models:
        requests, answers = tmp_path / f"{name}-{model}.jsonl", tmp_path / f"{name}-{model}.out"
        code = await cli("batch", "export", str(requests), "--model", model, "--cache-dir", cache)
        assert code == 0
        answers.write_bytes(vllm_run_batch(standin, requests.read_bytes(), refuse))
        assert await cli("batch", "ingest", str(answers), "--cache-dir", cache) == 0


async def test_batch_files_go_out_and_come_back_stage_by_stage(tmp_path, capsys):
    jobs = [job(i) for i in range(4)]
    cache = tmp_path / "cache"
    async with serve(FixedAnswerer(answer)) as s:
        assert await _detached(s, cache, jobs) == []
        assert s.standin.ledger.calls == [] and s.standin.ledger.files == []  # nothing sent
        await _round(s.standin, tmp_path, "critic", ["gpt-4o"], refuse={_custom_id(tmp_path, 2)})
        out = capsys.readouterr().out
        assert "wrote 4 gpt-4o requests" in out and "3 answered, 1 failed" in out
        await _detached(s, cache, jobs)  # Judge lines for 3, the refused Critic line again
        await _round(s.standin, tmp_path, "second", ["gpt-4o", "gpt-4o-mini"])
        assert "3 answered" in capsys.readouterr().out
        await _detached(s, cache, jobs)  # the last Judge line
        await _round(s.standin, tmp_path, "last", ["gpt-4o-mini"])
        results = await run_jobs(batch_engine(s, cache, FILES), jobs)
    assert {k: r.verdicts for k, r in results.items()} == {f"job{i}": verdicts_of(i) for i in
                                                          range(4)}  # fmt: skip
    with BatchStore(cache / "batches") as store:
        made = store.shards()
    assert sorted((m.stages, m.lines) for m in made) == [
        ("critic", 1), ("critic", 4), ("judge", 1), ("judge", 3)
    ]  # the refused Critic line was written again by the next run
    assert {m.step for m in made} == {Step.INGESTED}


def _custom_id(tmp_path, index: int) -> str:
    """The custom_id of job `index`'s Critic line in the open file shard."""
    with BatchStore(tmp_path / "cache" / "batches") as store:
        [shard] = [s for s in store.shards() if s.step is Step.WRITTEN]
        lines = (store.read_file(shard.id, "input") or b"").splitlines()
    for raw in lines:
        line = json.loads(raw)
        if f"job={index} " in json.dumps(line["body"]["messages"]):
            return line["custom_id"]
    raise AssertionError(f"no line for job {index}")


async def test_export_needs_one_model_and_ingest_needs_a_free_manifest(tmp_path):
    async with serve(FixedAnswerer(answer)) as s:
        await _detached(s, tmp_path / "cache", [job(0)])
        engine = batch_engine(s, tmp_path / "cache", FILES)  # a run holds the manifest
        try:
            code = await cli("batch", "ingest", str(tmp_path / "x"), "--cache-dir",
                             str(tmp_path / "cache"))  # fmt: skip
            assert code == 2
        finally:
            await engine.aclose()
    code = await cli("batch", "export", str(tmp_path / "x"), "--model", "gpt-5", "--cache-dir",
                     str(tmp_path / "cache"))  # fmt: skip
    assert code == 2


async def test_status_and_cancel_through_the_cli(tmp_path, capsys, monkeypatch):
    from standin_support import KEY

    from lvlmva.simulation.batch_api import BatchTiming
    from lvlmva.simulation.openai_standin import StandInConfig

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cache = tmp_path / "cache"
    async with serve(FixedAnswerer(answer), StandInConfig(batch=BatchTiming(lines_per_s=1))) as s:
        run = asyncio.ensure_future(run_jobs(batch_engine(s, cache), [job(i) for i in range(5)]))
        while not s.standin.batches._batches:
            await asyncio.sleep(0.01)
        s.standin.advance(3.5)  # three Critic lines done
        await asyncio.sleep(0.1)
        run.cancel()  # Ctrl-C: the batch runs on at the API
        await asyncio.gather(run, return_exceptions=True)
        args = ["--cache-dir", str(cache)]
        assert await cli("batch", "status", *args) == 0
        out = capsys.readouterr().out
        assert "critic gpt-4o: in_progress 3/5 done, 0 failed" in out and "1 unfinished" in out
        assert await cli("batch", "cancel", "--all", *args) == 0
        assert "cancelled, ingested, 3/5 done" in capsys.readouterr().out
    with BatchStore(cache / "batches") as store:
        [shard] = store.shards()
        outcomes = sorted(line.outcome for line in store.lines_of(shard.id))
    assert outcomes == ["answered"] * 3 + ["retry"] * 2
    with VerdictCache(cache) as answers:
        assert len(answers) == 3  # the partial output is in the answer cache


def test_output_lines_of_openai_and_vllm_read_as_outcomes():
    ok_body = {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                            "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 5, "completion_tokens": 1}}  # fmt: skip
    error = {"error": {"message": "bad key", "type": "invalid_request_error", "code": None}}
    lines = [
        {"custom_id": "a-0", "response": {"status_code": 200, "body": ok_body}, "error": None},
        {"custom_id": "b-0", "response": {"status_code": 401, "body": error}, "error": None},
        {"custom_id": "c-0", "response": None,
         "error": {"code": "batch_expired", "message": "not run in time"}},
        {"custom_id": "d-0", "response": {"status_code": 400, "body": None}, "error": "too long"},
        {"custom_id": "e-0", "response": {"status_code": 500, "body": None},
         "error": {"error": {"message": "engine died", "code": 500}}},
        {"custom_id": "f-0", "response": {"status_code": 200, "body": {"choices": []}}},
        {"no": "custom id"},
    ]  # fmt: skip
    content = b"\n".join(json.dumps(x).encode() for x in lines) + b"\nnot json\n"
    outcomes, unreadable = read_outcomes(content, model="m", where="batch x")
    by_id = {o.custom_id: o for o in outcomes}
    assert unreadable == 2
    assert by_id["a-0"].outcome == "answered" and by_id["a-0"].response.text == "hi"
    assert by_id["a-0"].response.usage.prompt_tokens == 5
    assert isinstance(by_id["b-0"].error, AuthenticationFailed) and "bad key" in by_id["b-0"].detail
    assert by_id["c-0"].outcome == "retry" and "batch_expired" in by_id["c-0"].detail
    assert isinstance(by_id["d-0"].error, BadRequest) and by_id["d-0"].outcome == "failed"
    assert "too long" in by_id["d-0"].detail
    assert isinstance(by_id["e-0"].error, ServerError) and by_id["e-0"].outcome == "retry"
    assert "engine died" in by_id["e-0"].detail
    assert by_id["f-0"].outcome == "retry" and "no choices" in by_id["f-0"].detail
