"""The simulated critic: `lvlmva.simulation.SimulatedLVLM`, an offline simulation that answers
Critic and Judge requests from the dataset's ground-truth spurious masks with a chosen verdict
accuracy. It is a documented stand-in for tests, benchmarks and runs without an API key, never
a real model's output; every description of it says so."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from lvlmva.critics.base import CliOption, CriticBackend, CriticConnection
from lvlmva.critics.settings import (
    SIMULATED_CRITIC_MODEL,
    SIMULATED_JUDGE_MODEL,
    CriticSettings,
    SimulationSettings,
)
from lvlmva.errors import ConfigError

VERDICT_ACCURACY = CliOption(
    ("--verdict-accuracy",),
    {
        "type": float,
        "default": 0.87,
        "help": "simulated critic: share of spurious clusters it marks 'no' (default 0.87, "
        "GPT-4o's figure)",
    },
)
ERROR_MODEL = CliOption(
    ("--error-model",),
    {
        "choices": ("independent", "ambiguity"),
        "default": "independent",
        "help": "simulated critic: how its errors fall: independent (default; the same rate on "
        "every cluster, the pessimistic bound) or ambiguity (more on mixed and small clusters, "
        "calibrated on a fixed reference at J = 7)",
    },
)
SIM_SYSTEMATIC = CliOption(
    ("--sim-systematic",),
    {
        "type": float,
        "default": 0.5,
        "help": "simulated critic: share of its error rate that repeats on every sample of the "
        "same question (default 0.5; the rest is redrawn per sample, e.g. per colour order)",
    },
)
SIM_LATENCY = CliOption(
    ("--sim-latency-ms",),
    {"type": float, "default": 0.0, "help": "simulated critic: latency per request"},
)
SIM_HTTP = CliOption(
    ("--sim-http",),
    {
        "action": "store_true",
        "help": "simulated critic: serve it on loopback and use the real HTTP client",
    },
)


class SimulatedCritic(CriticBackend):
    name = "simulated"
    summary = "offline simulation answering from the dataset's ground-truth masks (no API key)"
    answers_from_ground_truth = True
    cli_options = (VERDICT_ACCURACY, ERROR_MODEL, SIM_SYSTEMATIC, SIM_LATENCY, SIM_HTTP)

    def configure(self, settings: CriticSettings, args: argparse.Namespace) -> CriticSettings:
        if not 0.0 <= args.verdict_accuracy <= 1.0:
            raise ConfigError(f"--verdict-accuracy must be in [0, 1], got {args.verdict_accuracy}")
        if args.sim_latency_ms < 0:
            raise ConfigError(f"--sim-latency-ms must not be negative, got {args.sim_latency_ms}")
        if not 0.0 <= args.sim_systematic <= 1.0:
            raise ConfigError(f"--sim-systematic must be in [0, 1], got {args.sim_systematic}")
        return settings.replace(
            critic_model=SIMULATED_CRITIC_MODEL,
            judge_model=SIMULATED_JUDGE_MODEL,
            simulation=SimulationSettings(
                verdict_accuracy=args.verdict_accuracy,
                error_model=args.error_model,
                systematic=args.sim_systematic,
                latency_ms=args.sim_latency_ms,
                transport="http" if args.sim_http else "in-process",
            ),
        )

    def describe(self, settings: CriticSettings) -> str:
        sim = settings.simulation
        return (
            "Critic: SIMULATED LVLM (offline simulation answering from ground-truth masks with "
            f"verdict accuracy {sim.verdict_accuracy:.2f}, {sim.error_model} errors; not a "
            "real model)"
        )

    def price_overrides(self, settings: CriticSettings) -> Mapping[str, Any]:
        from lvlmva.engine.cost import ModelPrice

        free = ModelPrice(0.0, 0.0)  # a simulation costs nothing: no "no price" warning
        return {settings.critic_model: free, settings.judge_model: free}

    async def connect(self, settings: CriticSettings) -> CriticConnection:
        from lvlmva.simulation import DictOracle, SimulatedLVLM
        from lvlmva.vision.render import PALETTE

        sim_settings = settings.simulation
        oracle = DictOracle()
        sim = SimulatedLVLM(
            oracle=oracle,
            palette=PALETTE,
            verdict_accuracy=sim_settings.verdict_accuracy,
            relevant_accuracy=sim_settings.relevant_accuracy,
            error_model=sim_settings.error_model,
            systematic=sim_settings.systematic,
            latency_ms=sim_settings.latency_ms,
            seed=settings.seed,
        )
        identity = _cache_identity(sim)
        if sim_settings.transport != "http":
            if not hasattr(type(sim), "identity"):
                sim.identity = identity  # the engine keys the cache by it
            return CriticConnection(sim, sim, truth=oracle)
        return await _over_http(sim, oracle, identity)


def _cache_identity(sim: Any) -> Any:
    """The cache identity of a `SimulatedLVLM`: every setting that changes its answers, so a
    run at another verdict accuracy (or seed, overlap rule, content faults) never reuses them.
    The simulator's own `identity` when it has one; until then it is built here, and only here,
    from the fields it has. It starts with "simulated", which marks the answers as a
    simulation's (`lvlmva cache stats`)."""
    from lvlmva.engine.keys import SIMULATED_PREFIX, ProviderIdentity

    own = getattr(type(sim), "identity", None)
    if own is not None:
        value = sim.identity
        name = value.name if isinstance(value, ProviderIdentity) else str(value)
        if not name.startswith(SIMULATED_PREFIX):
            name = f"{SIMULATED_PREFIX}:{name}"
        return ProviderIdentity(name)
    faults = getattr(sim, "faults", None)
    content_faults = [
        getattr(faults, field, 0.0)
        for field in ("rate_malformed_json", "rate_schema_violation", "rate_wrong_colors")
    ]
    parts = [
        f"verdict_accuracy={sim.verdict_accuracy!r}",
        f"relevant_accuracy={sim.relevant_accuracy!r}",
        f"min_overlap={getattr(sim, 'min_overlap', 0.0)!r}",
        f"seed={sim.seed!r}",
        f"content_faults={content_faults!r}",
    ]
    return ProviderIdentity(f"{SIMULATED_PREFIX}:" + ",".join(parts))


async def _over_http(sim: Any, oracle: Any, identity: Any) -> CriticConnection:
    """Serve the simulation on loopback and reach it through the real OpenAI HTTP client
    (the cache identity is the simulation's, not the loopback port's)."""
    from lvlmva.engine.providers.openai_compat import OpenAICompatibleProvider
    from lvlmva.simulation import start_sim_server

    server = await start_sim_server(sim, host="127.0.0.1", port=0)
    provider = OpenAICompatibleProvider(base_url=server.base_url, api_key="sim", identity=identity)
    return CriticConnection(provider, provider, truth=oracle, closers=[server.close])
