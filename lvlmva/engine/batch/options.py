"""What a batch run may do: `BatchOptions`, and the Batch API's limits it keeps to.

Limits (OpenAI's `CreateBatchRequest` and the Files API, openai/openai-openapi; the SDK's
`batches.create` docstring): an input file holds at most 50,000 requests and 200 MB, is
uploaded with purpose `batch`, takes one model, and its batch runs within the `24h` window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lvlmva.errors import ConfigError

__all__ = [
    "COMPLETION_WINDOW",
    "ENDPOINT",
    "MAX_FILE_BYTES",
    "MAX_FILE_LINES",
    "BatchOptions",
]

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
MAX_FILE_LINES = 50_000
MAX_FILE_BYTES = 200_000_000  # "200 MB": the smaller reading (10^6, not 2^20) is always safe


@dataclass(frozen=True)
class BatchOptions:
    """How Critic & Judge requests go out in batches.

    - `mode`: `"api"` uploads each shard and runs it through the OpenAI Batch API (Files +
      Batches), waiting for its answers; `"files"` only writes the shards into the batch
      manifest and stops, for `lvlmva batch export` / `vllm run-batch` / `lvlmva batch ingest`.
    - `max_jobs`: jobs held at once, so the most requests one stage puts in its shards (each
      held job keeps its three images in memory until its Judge answer).
    - `reasks`: where Judge answers that failed validation are asked again: `"sync"` (the
      synchronous API, at full price, in seconds) or `"batch"` (in the next shard, half price,
      one more batch round trip). See docs/batch.md for the measured trade-off.
    - `poll_s`: the first wait between two polls of a batch; waits grow by `poll_growth` up to
      `poll_max_s` (default 12 times `poll_s`) while nothing changes.
    - `max_lines` / `max_bytes`: the shard limits (the API's by default).
    - `max_submits`: how often one request is submitted (expired or failed lines are
      resubmitted) before its job fails with the last reason.
    - `queue_tokens`: the model's batch queue limit (enqueued prompt tokens; the limits page
      of the API's settings): shards are cut to it and created only while this run's queued
      batches of the model leave room (`lvlmva.engine.batch.queue`). None: learned from
      `token_limit_exceeded` refusals.
    - `queue_waits`: how often a one-line shard refused for a full queue, with none of this
      run's batches of its model queued to end and make room, is created again after a wait
      (growing from `longest_poll_s` to 30 times it) before its job fails (a shard of several
      lines is split in two instead).
    """

    mode: Literal["api", "files"] = "api"
    max_jobs: int = 10_000
    reasks: Literal["sync", "batch"] = "sync"
    poll_s: float = 5.0
    poll_growth: float = 1.5
    poll_max_s: float | None = None
    max_lines: int = MAX_FILE_LINES
    max_bytes: int = MAX_FILE_BYTES
    max_submits: int = 3
    queue_tokens: int | None = None
    queue_waits: int = 8

    def __post_init__(self) -> None:
        if self.mode not in ("api", "files"):
            raise ConfigError(f"batch mode must be 'api' or 'files', got {self.mode!r}")
        if self.reasks not in ("sync", "batch"):
            raise ConfigError(f"batch re-asks go 'sync' or 'batch', got {self.reasks!r}")
        if self.max_jobs < 1:
            raise ConfigError(f"--batch-jobs must be at least 1, got {self.max_jobs}")
        if not self.poll_s > 0 or self.poll_growth < 1:
            raise ConfigError(
                f"--batch-poll-s must be positive (got {self.poll_s}) and poll_growth at "
                f"least 1 (got {self.poll_growth})"
            )
        if not 1 <= self.max_lines <= MAX_FILE_LINES:
            raise ConfigError(f"max_lines must be in 1..{MAX_FILE_LINES}, got {self.max_lines}")
        if not 1 <= self.max_bytes <= MAX_FILE_BYTES:
            raise ConfigError(f"max_bytes must be in 1..{MAX_FILE_BYTES}, got {self.max_bytes}")
        if self.max_submits < 1:
            raise ConfigError(f"max_submits must be at least 1, got {self.max_submits}")
        if self.queue_tokens is not None and self.queue_tokens < 1:
            raise ConfigError(f"--batch-queue-tokens must be at least 1, got {self.queue_tokens}")
        if self.queue_waits < 0:
            raise ConfigError(f"queue_waits must not be negative, got {self.queue_waits}")

    @property
    def longest_poll_s(self) -> float:
        return self.poll_max_s if self.poll_max_s is not None else 12 * self.poll_s

    def queue_wait_s(self, waits: int) -> float:
        """The wait before creating a shard again after its `waits`-th full-queue refusal."""
        return min(30.0, 2.0 ** (waits - 1)) * self.longest_poll_s

    def next_poll_s(self, wait: float) -> float:
        """The wait after one of `wait` seconds that saw no change."""
        return min(self.longest_poll_s, max(wait, self.poll_s) * self.poll_growth)
