"""The extension point for where the vision stages of a critique run execute: one
`VisionExecutor` subclass per kind, in its own module, with one entry in
`lvlmva.pipeline.executors.EXECUTORS`.

An executor turns sample indices into `RenderedSample`s (explain, segment, render, and the
prediction and confidence the run stores) and nothing else: the LVLM side (rate limits, budget,
answer cache) stays with the one engine of the driver, which is fed the samples as they come.
A batch of indices must give the same samples wherever and however often it is computed (the
explanation depends on the seed, never on the batch or the worker), so an executor may rerun a
lost batch; it yields each index at most once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from lvlmva.errors import ConfigError
from lvlmva.pipeline.options import CritiqueOptions
from lvlmva.pipeline.records import RenderedSample
from lvlmva.vision.datasets.base import ShortcutDataset

__all__ = ["ExecutorSettings", "VisionExecutor", "VisionJob", "index_batches"]


@dataclass(frozen=True)
class ExecutorSettings:
    """Where the vision stages run. `kind`: a key of `EXECUTORS` ("local": a worker thread of
    this process; "ray": actors on a Ray cluster). The rest is read by the Ray executor only:
    `address` of the cluster (None: `ray.init()`'s own rule, `RAY_ADDRESS` or else a new local
    cluster), `workers` (vision actors; None: as many as the cluster's CPUs, or GPUs, allow),
    `cpus_per_worker` / `gpus_per_worker` (Ray resources of one actor; a GPU share makes it
    compute on CUDA), `batches_ahead` (batches queued per actor, so none waits for work) and
    `max_restarts` (how often Ray restarts a dead actor and reruns its batches)."""

    kind: str = "local"
    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batches_ahead: int = 2
    max_restarts: int = 3

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--ray-workers must be at least 1, got {self.workers}")
        if self.cpus_per_worker < 0 or self.gpus_per_worker < 0:
            raise ConfigError(
                f"Ray resources per worker must not be negative, got {self.cpus_per_worker} "
                f"CPUs and {self.gpus_per_worker} GPUs"
            )
        if self.cpus_per_worker == 0 and self.gpus_per_worker == 0:
            raise ConfigError("a Ray vision worker needs some CPUs or GPUs; give either")
        if self.batches_ahead < 1:
            raise ConfigError(f"batches_ahead must be at least 1, got {self.batches_ahead}")
        if self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be 0 or more, got {self.max_restarts}")


@dataclass(frozen=True, eq=False)
class VisionJob:
    """Stages 1-3 of a critique run to compute: the samples `indices` of `split`, explained
    with `model` (left as it is) under `options`, seeded with `seed`, on the driver's `device`."""

    model: nn.Module
    split: ShortcutDataset
    indices: Tensor
    options: CritiqueOptions
    seed: int
    device: torch.device


def index_batches(indices: Tensor, size: int) -> list[Tensor]:
    """`indices` cut into consecutive batches of at most `size`."""
    return [indices[start : start + size] for start in range(0, len(indices), size)]


class VisionExecutor(ABC):
    """Runs stages 1-3 for a critique run; an async context manager (`aclose` releases what
    `open` took: threads, a Ray connection, actors)."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings

    @abstractmethod
    def rendered(
        self, job: VisionJob, timings: dict[str, float] | None = None
    ) -> AsyncIterator[RenderedSample]:
        """The samples of `job`, in completion order, each exactly once; the seconds spent
        computing them are added to `timings["vision_s"]` (summed over workers). An error that
        cannot be retried ends the stream with that error."""

    def describe(self) -> str:
        """One line for the log: where the vision stages run."""
        return f"vision: {self.summary}"

    def preflight(self) -> None:
        """Fail early, before any work, when the executor cannot run here (a ConfigError)."""
        return None

    async def open(self) -> None:
        """Acquire what the executor needs (nothing for local threads)."""
        return None

    async def aclose(self) -> None:
        """Release it; safe to call twice."""
        return None

    async def __aenter__(self) -> VisionExecutor:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
