"""A simulated LVLM for offline runs, tests and benchmarks: a documented simulation that answers
Critic and Judge requests from ground-truth spurious masks, never a model.

- `SimulatedLVLM`: in-process `Provider` (see `simulator` for exactly how it answers).
- `start_sim_server` / `build_app`: the same behind an OpenAI-compatible HTTP API
  (`lvlmva serve-sim`).
- Oracles (`DictOracle`, `DirectoryOracle`, `write_oracle`): the ground-truth masks, keyed by
  the SHA-256 of the original image's PNG bytes.
- `OpenAIStandIn` / `build_openai_app` / `start_openai_standin`: a strict stand-in of the OpenAI
  API (chat completions, files, batches; OpenAI's request rules, usage, rate limits, faults, on
  a clock tests control), answering with a `SimulatedAnswerer` or `FixedAnswerer`; the default
  of `lvlmva serve-sim` (docs/openai_standin.md).
"""

from lvlmva.simulation.answerers import Answerer, CannotAnswer, FixedAnswerer, SimulatedAnswerer
from lvlmva.simulation.batch_api import BatchTiming
from lvlmva.simulation.clock import Clock, FakeClock, SystemClock
from lvlmva.simulation.openai_chat import ChatSettings
from lvlmva.simulation.openai_faults import Faults
from lvlmva.simulation.openai_ratelimit import RateLimits
from lvlmva.simulation.openai_server import StandInServer, build_openai_app, start_openai_standin
from lvlmva.simulation.openai_standin import OpenAIStandIn, StandInConfig
from lvlmva.simulation.openai_usage import ReasoningLengths
from lvlmva.simulation.oracle import (
    DictOracle,
    DirectoryOracle,
    MaskOracle,
    image_key,
    write_oracle,
)
from lvlmva.simulation.server import SimServer, build_app, parse_chat_request, start_sim_server
from lvlmva.simulation.simulator import SimOutcome, SimStats, SimulatedLVLM, request_hash

__all__ = [
    "Answerer",
    "BatchTiming",
    "CannotAnswer",
    "ChatSettings",
    "Clock",
    "DictOracle",
    "DirectoryOracle",
    "FakeClock",
    "Faults",
    "FixedAnswerer",
    "MaskOracle",
    "OpenAIStandIn",
    "RateLimits",
    "ReasoningLengths",
    "SimOutcome",
    "SimServer",
    "SimStats",
    "SimulatedAnswerer",
    "SimulatedLVLM",
    "StandInConfig",
    "StandInServer",
    "SystemClock",
    "build_app",
    "build_openai_app",
    "image_key",
    "parse_chat_request",
    "request_hash",
    "start_openai_standin",
    "start_sim_server",
    "write_oracle",
]
