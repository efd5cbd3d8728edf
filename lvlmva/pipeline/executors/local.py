"""The local executor: the vision stages in a worker thread of this process, at most
`PREFETCH_BATCHES` batches ahead of the critique (what a critique run has always done)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import torch
from torch import Tensor, nn

from lvlmva.pipeline.executors.base import VisionExecutor
from lvlmva.pipeline.explain import rendered_samples
from lvlmva.pipeline.options import CritiqueOptions
from lvlmva.pipeline.records import RenderedSample
from lvlmva.vision.datasets.base import ShortcutDataset

__all__ = ["LocalExecutor"]


class LocalExecutor(VisionExecutor):
    name = "local"
    summary = "a worker thread of this process (--executor local)"

    def rendered(
        self,
        model: nn.Module,
        split: ShortcutDataset,
        indices: Tensor,
        options: CritiqueOptions,
        *,
        seed: int,
        device: torch.device,
        timings: dict[str, float] | None = None,
    ) -> AsyncIterator[RenderedSample]:
        return rendered_samples(
            model, split, indices, options, seed=seed, device=device, timings=timings
        )
