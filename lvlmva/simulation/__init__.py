"""A simulated LVLM for offline runs, tests and benchmarks: a documented simulation that answers
Critic and Judge requests from ground-truth spurious masks, never a model.

- `SimulatedLVLM`: in-process `Provider` (see `simulator` for exactly how it answers).
- `start_sim_server` / `build_app`: the same behind an OpenAI-compatible HTTP API
  (`lvlmva serve-sim`).
- Oracles (`DictOracle`, `DirectoryOracle`, `write_oracle`): the ground-truth masks, keyed by
  the SHA-256 of the original image's PNG bytes.
"""

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
    "DictOracle",
    "DirectoryOracle",
    "MaskOracle",
    "SimOutcome",
    "SimServer",
    "SimStats",
    "SimulatedLVLM",
    "build_app",
    "image_key",
    "parse_chat_request",
    "request_hash",
    "start_sim_server",
    "write_oracle",
]
