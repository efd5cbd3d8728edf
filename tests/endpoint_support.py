"""The engine against the strict OpenAI stand-in: small Critic & Judge jobs the simulated LVLM can
answer (palette cluster maps, a known spurious square), and a stand-in served on loopback with
our own HTTP provider and engine pointed at it."""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lvlmva.cache import VerdictCache
from lvlmva.engine.engine import Engine, EngineConfig
from lvlmva.engine.providers.openai_compat import OpenAICompatibleProvider
from lvlmva.engine.retry import RetryPolicy
from lvlmva.engine.types import CritiqueJob, ImagePart
from lvlmva.prompts import load_prompt_set, load_spec
from lvlmva.simulation import DictOracle, SimulatedLVLM
from lvlmva.simulation.answerers import SimulatedAnswerer
from lvlmva.simulation.clock import FakeClock
from lvlmva.simulation.openai_faults import Faults
from lvlmva.simulation.openai_server import StandInServer, start_openai_standin
from lvlmva.simulation.openai_standin import OpenAIStandIn, StandInConfig
from lvlmva.vision.render import PALETTE

KEY = "sk-test-0123456789abcdef"
GRID, CLUSTERS = 8, 5


def _png(array: np.ndarray, size: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).resize((size, size), Image.NEAREST).save(out, format="PNG")
    return out.getvalue()


def decoy_jobs(n: int, *, size: int = 32, seed: int = 0) -> tuple[list[CritiqueJob], DictOracle]:
    """`n` jobs: a random grey original, a cluster map of CLUSTERS palette colours in vertical
    bands, an overlay; the top-left 2 x 2 cells are spurious (told to the returned oracle)."""
    spec = load_spec("decoy-digits")
    colors = tuple(PALETTE)[:CLUSTERS]
    rgb = np.array([PALETTE[c] for c in colors], dtype=np.uint8)
    oracle, jobs = DictOracle(), []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        original = rng.integers(0, 256, (GRID, GRID, 3), dtype=np.uint8)
        labels = (np.arange(GRID)[None, :].repeat(GRID, 0) * CLUSTERS // GRID + i) % CLUSTERS
        overlay = (0.5 * rgb[labels] + 0.5 * original).astype(np.uint8)
        images = (
            ImagePart("original", _png(original, size)),
            ImagePart("clusters", _png(rgb[labels], size)),
            ImagePart("overlay", _png(overlay, size)),
        )
        mask = np.zeros((GRID, GRID), dtype=bool)
        mask[:2, :2] = True
        oracle.add(images[0].data, mask)
        present = tuple(c for k, c in enumerate(colors) if (labels == k).any())
        variables = spec.variables(spec.class_names[i % len(spec.class_names)])
        jobs.append(CritiqueJob(f"job{i}", images, present, variables))
    return jobs, oracle


@dataclass
class Endpoint:
    standin: OpenAIStandIn
    server: StandInServer

    @property
    def ledger(self):
        return self.standin.ledger

    def provider(self, **options) -> OpenAICompatibleProvider:
        return OpenAICompatibleProvider(base_url=self.server.base_url, api_key=KEY, **options)

    def engine(
        self, cache: VerdictCache | None = None, provider_options: dict | None = None, **config
    ) -> Engine:
        settings = dict(
            critic_model="gpt-5-mini",
            judge_model="gpt-5-nano",
            prompts=load_prompt_set("decoy-digits"),
            max_in_flight=32,
            retry=RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.01),
            progress=False,
        )
        settings.update(config)
        provider = self.provider(**(provider_options or {}))
        return Engine(provider, None, EngineConfig(**settings), cache=cache)


@contextlib.asynccontextmanager
async def serve_endpoint(
    oracle: DictOracle,
    faults: Faults | None = None,
    config: StandInConfig | None = None,
    clock=None,
    **sim,
) -> AsyncIterator[Endpoint]:
    """The stand-in answering with the simulated LVLM (verdict accuracy 1 unless given)."""
    lvlm = SimulatedLVLM(oracle=oracle, palette=PALETTE, **{"verdict_accuracy": 1.0, **sim})
    standin = OpenAIStandIn(
        SimulatedAnswerer(lvlm), config or StandInConfig(api_keys=(KEY,)),
        clock=clock or FakeClock(), faults=faults,
    )  # fmt: skip
    server = await start_openai_standin(standin)
    try:
        yield Endpoint(standin, server)
    finally:
        await server.close()


async def run_all(engine: Engine, jobs) -> list:
    try:
        return [result async for result in engine.run(jobs)]
    finally:
        await engine.aclose()
