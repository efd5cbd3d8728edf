"""The local executor: the vision stages in a worker thread of this process, at most
`PREFETCH_BATCHES` batches ahead of the critique (what a critique run has always done)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from lvlmva.pipeline.executors.base import VisionExecutor, VisionJob
from lvlmva.pipeline.explain import rendered_samples
from lvlmva.pipeline.records import RenderedSample

__all__ = ["LocalExecutor"]


class LocalExecutor(VisionExecutor):
    name = "local"
    summary = "a worker thread of this process (--executor local)"

    def rendered(
        self, job: VisionJob, timings: dict[str, float] | None = None
    ) -> AsyncIterator[RenderedSample]:
        return rendered_samples(
            job.model, job.split, job.indices, job.options,
            seed=job.seed, device=job.device, timings=timings,
        )  # fmt: skip
