"""Batch mode benchmark: Critic & Judge jobs through `BatchDispatcher` against the strict OpenAI
stand-in (in this process, on a fake clock), with a share of Judge answers that do not
validate, re-asked synchronously or in a later batch; and the same jobs synchronously.

    python bench/batch.py --jobs 1000 --invalid 0.05 --json

The answers are a fixed function of the request (a stand-in answerer, not a model). The batch
lifecycle runs on the stand-in's clock: `--validation-s`, `--lines-per-s` and
`--finalizing-s` set how long a batch takes in simulated seconds (OpenAI's own turnaround is
anything from minutes to 24 h); the clock moves `--clock-speed` simulated seconds per real
second. Figures per mode (one JSON line each):

- `ok`, `failed`: jobs with validated verdicts, jobs failed.
- `batches`: batches created; `rounds`: batches one after another on the critical path.
- `sync_calls`: synchronous chat requests; `reasks`: Judge answers asked again.
- `cost_usd`: what the client reports; `list_cost_usd`: the same tokens at the synchronous price.
- `critique_sim_s`: simulated seconds from the first batch's creation to the last one's end.
- `answered_twice`, `lines_twice`: request bodies answered / batch lines submitted twice.
- `wall_s`, `cpu_ms_per_job`: real time and client CPU per job.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from lvlmva.cache import VerdictCache
from lvlmva.engine.batch.factory import open_dispatcher
from lvlmva.engine.batch.options import BatchOptions
from lvlmva.engine.engine import Engine, EngineConfig
from lvlmva.engine.providers.openai_compat import OpenAICompatibleProvider
from lvlmva.engine.types import ChatRequest, CritiqueJob, ImagePart, TextPart
from lvlmva.prompts import PromptSet
from lvlmva.simulation.answerers import FixedAnswerer
from lvlmva.simulation.batch_api import BatchTiming
from lvlmva.simulation.clock import FakeClock
from lvlmva.simulation.openai_server import start_openai_standin
from lvlmva.simulation.openai_standin import OpenAIStandIn, StandInConfig

COLORS = ("red", "blue", "green", "yellow")
PRICES = {"gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60)}  # list prices per 1M tokens


PROMPTS = PromptSet.from_texts("batch-bench", {
    "critic_system": "You critique the coloured clusters of an explanation.",
    "critic_user": "job=$job colours: $colors",
    "judge_system": "You turn a critique into one verdict per colour.",
    "judge_user": "colours: $colors\ncritique: $critique",
    "fused_system": "You critique and judge.",
    "fused_user": "fused job=$job colours: $colors",
})  # fmt: skip


def _png(i: int, k: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (i % 251, (i // 251) % 251, 60 * k)).save(buffer, format="PNG")
    return buffer.getvalue()


def jobs(n: int) -> list[CritiqueJob]:
    names = ("original", "clusters", "overlay")
    return [
        CritiqueJob(
            f"job{i}",
            tuple(ImagePart(name, _png(i, k), width=64, height=64) for k, name in enumerate(names)),
            COLORS,
            {"job": str(i)},
        )
        for i in range(n)
    ]


def answerer(invalid: float) -> FixedAnswerer:
    """Critiques naming their job; verdicts for them, except that the first Judge answer of a
    seeded `invalid` share of jobs breaks the schema."""

    def answer(request: ChatRequest) -> str:
        text = "\n".join(p.text for m in request.messages for p in m.parts
                         if isinstance(p, TextPart))  # fmt: skip
        critic = re.search(r"^job=(\d+)", text, re.M)
        if critic:
            return f"critique of job {critic.group(1)}: the red cluster is on the digit."
        i = int(re.search(r"critique of job (\d+)", text).group(1))
        draw = int(hashlib.sha256(f"invalid:{i}".encode()).hexdigest(), 16) % 10_000 / 10_000
        if len(request.messages) == 2 and draw < invalid:
            return '{"output": [{"color": "red"}]}'
        output = [{"color": c, "verdict": "yes" if (i + k) % 3 else "no"}
                  for k, c in enumerate(COLORS)]  # fmt: skip
        return json.dumps({"output": output})

    return FixedAnswerer(answer)


def _config() -> EngineConfig:
    return EngineConfig(critic_model="gpt-4o", judge_model="gpt-4o-mini", prompts=PROMPTS,
                        progress=False, max_in_flight=64)  # fmt: skip


async def _ticking(standin: OpenAIStandIn, speed: float) -> None:
    while True:
        await asyncio.sleep(0.01)
        standin.advance(speed * 0.01)


async def run_mode(args: argparse.Namespace, mode: str, work: Path) -> dict:
    timing = BatchTiming(validation_s=args.validation_s, lines_per_s=args.lines_per_s,
                         finalizing_s=args.finalizing_s)  # fmt: skip
    standin = OpenAIStandIn(answerer(args.invalid), StandInConfig(batch=timing), clock=FakeClock())
    server = await start_openai_standin(standin)
    ticker = asyncio.get_running_loop().create_task(_ticking(standin, args.clock_speed))
    config = _config()
    provider = OpenAICompatibleProvider(base_url=server.base_url, api_key="sk-bench")
    cache = VerdictCache(work / mode)
    dispatcher = None
    if mode != "sync":
        dispatcher = open_dispatcher(
            BatchOptions(poll_s=0.01, reasks=mode.removeprefix("batch-")),  # type: ignore[arg-type]
            base_url=server.base_url, api_key="sk-bench", cache=cache,
            online=config.online_dispatcher(), progress=False,
        )  # fmt: skip
    engine = Engine(provider, None, config, cache, dispatcher=dispatcher)
    cpu0, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    try:
        results = [r async for r in engine.run(jobs(args.jobs))]
    finally:
        await engine.aclose()
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await server.close()
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return _figures(mode, args, results, engine, standin, wall, cpu0, cpu1)


def _figures(mode, args, results, engine, standin, wall, cpu0, cpu1) -> dict:
    ledger = standin.ledger
    batches = list(standin.batches._batches.values())
    ends = [max(b.times.values()) for b in batches]
    list_cost = sum(
        (t.prompt_tokens * PRICES[m][0] + t.completion_tokens * PRICES[m][1]) / 1e6
        for m, t in ledger.by_model().items()
    )
    return {
        "mode": mode,
        "jobs": args.jobs,
        "invalid_share": args.invalid,
        "ok": sum(r.ok for r in results),
        "failed": sum(not r.ok for r in results),
        "batches": len(batches),
        "rounds": _rounds(batches),
        "sync_calls": ledger.sync_calls,
        "reasks": engine.stats.reasks,
        "cost_usd": round(engine.cost.spent_usd, 6),
        "list_cost_usd": round(list_cost, 6),
        "critique_sim_s": round(max(ends) - min(b.created_at for b in batches), 1) if batches
        else 0.0,
        "answered_twice": len(ledger.answered_more_than_once()),
        "lines_twice": len(ledger.batch_lines_submitted_more_than_once()),
        "wall_s": round(wall, 2),
        "cpu_ms_per_job": round(1000 * _cpu_s(cpu0, cpu1) / args.jobs, 3),
    }


def _cpu_s(before, after) -> float:
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _rounds(batches) -> int:
    """Batches on the critical path: each one starts after the previous one ended."""
    rounds, end = 0, float("-inf")
    for batch in sorted(batches, key=lambda b: b.created_at):
        if batch.created_at >= end:
            rounds += 1
            end = max(batch.times.values())
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--invalid", type=float, default=0.05, help="Judge answers to re-ask")
    parser.add_argument("--validation-s", type=float, default=120.0)
    parser.add_argument("--lines-per-s", type=float, default=20.0)
    parser.add_argument("--finalizing-s", type=float, default=120.0)
    parser.add_argument("--clock-speed", type=float, default=3000.0, help="sim s per real s")
    parser.add_argument("--modes", default="sync,batch-sync,batch-batch")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for mode in args.modes.split(","):
            row = asyncio.run(run_mode(args, mode, Path(work)))
            print(json.dumps(row) if args.json else row, flush=True)


if __name__ == "__main__":
    sys.exit(main())
