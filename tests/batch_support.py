"""Helpers for the batch tests: prompts, jobs with real PNGs, an answerer that critiques and
judges them, and an engine wired with a `BatchDispatcher` against a stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

from standin_support import KEY, Served, png

from lvlmva.cache import VerdictCache
from lvlmva.engine.batch.factory import open_dispatcher
from lvlmva.engine.batch.options import BatchOptions
from lvlmva.engine.engine import Engine, EngineConfig
from lvlmva.engine.providers.openai_compat import OpenAICompatibleProvider
from lvlmva.engine.types import ChatRequest, CritiqueJob, ImagePart, TextPart
from lvlmva.prompts import PromptSet

COLORS = ("red", "blue", "green")


PROMPTS = PromptSet.from_texts("batch-test", {
    "critic_system": "You critique clusters.",
    "critic_user": "job=$job colours: $colors",
    "judge_system": "You turn critiques into JSON.",
    "judge_user": "colours: $colors\ncritique: $critique",
    "fused_system": "You critique and judge.",
    "fused_user": "fused job=$job colours: $colors",
})  # fmt: skip


def job(i: int) -> CritiqueJob:
    images = tuple(
        ImagePart(name, png(8, 8, (i % 256, k * 60, 7)), width=8, height=8)
        for k, name in enumerate(("original", "clusters", "overlay"))
    )
    return CritiqueJob(f"job{i}", images, COLORS, {"job": str(i)})


def verdicts_of(i: int) -> dict[str, bool]:
    return {c: (i + k) % 2 == 0 for k, c in enumerate(COLORS)}


def _text(request: ChatRequest) -> str:
    return "\n".join(
        p.text for m in request.messages for p in m.parts if isinstance(p, TextPart)
    )


def verdict_json(i: int) -> str:
    output = [{"color": c, "verdict": "yes" if v else "no"} for c, v in verdicts_of(i).items()]
    return json.dumps({"output": output})


def answer(request: ChatRequest) -> str:
    """A critique naming the job, a verdict for a critique, or fused verdicts."""
    text = _text(request)
    fused = re.search(r"fused job=(\d+)", text)
    if fused:
        return verdict_json(int(fused.group(1)))
    critic = re.search(r"^job=(\d+)", text, re.M)
    if critic:
        return f"critique of job {critic.group(1)}"
    return verdict_json(int(re.search(r"critique of job (\d+)", text).group(1)))


def engine_config(**overrides) -> EngineConfig:
    values = {"critic_model": "gpt-4o", "judge_model": "gpt-4o-mini", "prompts": PROMPTS,
              "progress": False}  # fmt: skip
    return EngineConfig(**{**values, **overrides})


def batch_engine(
    served: Served, cache_dir: Path, options: BatchOptions | None = None, **config
) -> Engine:
    """An engine whose calls go out as batches to `served`, with its cache in `cache_dir`."""
    cfg = engine_config(**config)
    provider = OpenAICompatibleProvider(base_url=served.server.base_url, api_key=KEY)
    cache = VerdictCache(cache_dir)
    dispatcher = open_dispatcher(
        options or BatchOptions(poll_s=0.01),
        base_url=served.server.base_url,
        api_key=KEY,
        cache=cache,
        online=cfg.online_dispatcher(),
        progress=False,
    )
    return Engine(provider, None, cfg, cache, dispatcher=dispatcher)


async def run_jobs(engine: Engine, jobs, timeout: float = 20) -> dict:
    async def collect() -> dict:
        return {r.job_id: r async for r in engine.run(jobs)}

    try:
        return await asyncio.wait_for(collect(), timeout=timeout)
    finally:
        await engine.aclose()


@contextlib.asynccontextmanager
async def ticking(served: Served, step_s: float, every_s: float = 0.01) -> AsyncIterator[None]:
    """Move the stand-in's fake clock by `step_s` every `every_s` real seconds meanwhile."""

    async def tick() -> None:
        while True:
            await asyncio.sleep(every_s)
            served.standin.advance(step_s)

    task = asyncio.get_running_loop().create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
