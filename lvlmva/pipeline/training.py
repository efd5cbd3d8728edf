"""Pipeline stage 7: RRR training on the robust masks as they arrive (or once all are in), in a
worker thread beside the critique: one model per lambda of the grid, in lockstep.

The trainer draws from a prefix of the alignment order that grows on a fixed schedule
(`lvlmva.vision.schedule.ScheduledPool`), with the masks of each prefix built by
`lvlmva.pipeline.masking.RobustMasks`: a streamed run starts as soon as the first quarter of the
samples is in and trains while the LVLM answers the rest, and still gives the same models as a
sequential run, whatever order the answers arrive in.

There is no per-dataset table of lambdas: the grid is `TrainOptions.lam_scales` in units of
lambda0, the start model's own cross-entropy / penalty ratio (`lvlmva.vision.rrr_grid`), and
`lvlmva.pipeline.selection` picks a member (or the original) on validation.
"""

from __future__ import annotations

import asyncio

import torch
from torch import nn

from lvlmva.errors import DataError
from lvlmva.pipeline.masking import CritiquedSample, RobustMasks
from lvlmva.pipeline.options import TrainOptions
from lvlmva.vision.datasets.base import ShortcutDataset
from lvlmva.vision.rrr_grid import GridMember, LambdaGridTrainer, RRRSettings
from lvlmva.vision.schedule import ScheduledPool

__all__ = ["AlignmentTraining"]


class AlignmentTraining:
    """A `LambdaGridTrainer` fed through a `ScheduledPool` of `RobustMasks`. Streaming
    (`options.streaming`): `start` runs `fit` in a thread at once; otherwise `finish` trains
    once every sample is in. `add(position, entry)` puts in the sample at that position of the
    alignment order (with or without a mask)."""

    def __init__(
        self,
        model: nn.Module,
        train: ShortcutDataset,
        options: TrainOptions,
        masks: RobustMasks,
        *,
        n_samples: int,
        seed: int,
        device: torch.device,
        progress: bool,
    ) -> None:
        self.train = train
        self.options = options
        self.masks = masks
        epochs = options.epochs
        self.pool = ScheduledPool(
            n_samples,
            masks.stage,
            start_fraction=options.min_pool_fraction,
            ramp_end=(epochs - 1) / epochs if epochs > 0 else 0.0,
        )
        fixed = options.lam is not None
        self.trainer = LambdaGridTrainer(
            model,
            scales=() if fixed else options.lam_scales,
            lams=(options.lam,) if fixed else (),
            settings=RRRSettings(
                gamma=options.gamma,
                epochs=options.epochs,
                lr=options.lr,
                seed=seed,
                device=device,
                progress=progress,
            ),
        )
        self._task: asyncio.Future[LambdaGridTrainer] | None = None

    def start(self) -> None:
        """Start training in a worker thread (streaming only)."""
        if self.options.streaming and self._task is None:
            self._task = asyncio.ensure_future(
                asyncio.to_thread(self.trainer.fit, self.train, self.pool)
            )

    def add(self, position: int, entry: CritiquedSample) -> None:
        """The sample at `position` of the alignment order is in."""
        self.masks.add(position, entry)
        self.pool.arrived(position)

    async def finish(self) -> list[GridMember]:
        """No more samples will come: train (or let the streaming run end), write the final
        masks into the records and return the trained members. DataError when no mask was
        produced at all."""
        self.pool.close()
        if not any(e.voted or e.record.mask is not None for e in self.masks.entries()):
            await self.abort()
            raise DataError(
                "no correction masks were produced (every critique failed or was not run); "
                "see the per-sample errors, check the endpoint and budget, and rerun"
            )
        if self._task is None:
            await asyncio.to_thread(self.trainer.fit, self.train, self.pool)
        else:
            await self._task
        await asyncio.to_thread(self.masks.finalize)
        return self.trainer.members_

    async def abort(self) -> None:
        """Stop a streaming run (after an error or a cancellation) and wait for its thread."""
        self.pool.close()
        if self._task is not None:
            self.trainer.stop()
            await asyncio.gather(self._task, return_exceptions=True)
