"""Where the vision stages of a critique run execute, in a registry: `EXECUTORS[kind]` is the
`VisionExecutor` class of an executor kind ("local": a thread of this process; "ray": actors
on a Ray cluster, docs/throughput.md). Adding one is a module and an entry here; the CLI's
`--executor` choices come from this table. Ray is imported only when a Ray executor opens.

    async with open_executor(ExecutorSettings("ray", address="auto")) as executor:
        job = VisionJob(model, split, indices, options, seed=0, device=torch.device("cpu"))
        async for sample in executor.rendered(job):
            ...
"""

from __future__ import annotations

from lvlmva.errors import ConfigError
from lvlmva.pipeline.executors.base import (
    ExecutorSettings,
    VisionExecutor,
    VisionJob,
    index_batches,
)
from lvlmva.pipeline.executors.local import LocalExecutor
from lvlmva.pipeline.executors.ray import RayExecutor

__all__ = [
    "EXECUTORS",
    "ExecutorSettings",
    "LocalExecutor",
    "RayExecutor",
    "VisionExecutor",
    "VisionJob",
    "get_executor",
    "index_batches",
    "open_executor",
]

EXECUTORS: dict[str, type[VisionExecutor]] = {
    executor.name: executor for executor in (LocalExecutor, RayExecutor)
}


def get_executor(kind: str) -> type[VisionExecutor]:
    """The executor class of `kind`; ConfigError naming the known kinds otherwise."""
    try:
        return EXECUTORS[kind]
    except KeyError:
        raise ConfigError(
            f"unknown executor {kind!r}: use one of {', '.join(EXECUTORS)}"
        ) from None


def open_executor(settings: ExecutorSettings | None = None) -> VisionExecutor:
    """The executor `settings` describe (use it with `async with`)."""
    settings = settings or ExecutorSettings()
    return get_executor(settings.kind)(settings)
