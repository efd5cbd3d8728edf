"""Pipeline stage 7: RRR training on the masks as they arrive (or once all are in), in a worker
thread beside the critique; and the RRR weight used when none is given."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import torch
from torch import nn

from lvlmva.errors import DataError
from lvlmva.pipeline.options import TrainOptions
from lvlmva.pipeline.records import SampleRecord
from lvlmva.vision.datasets.base import ShortcutDataset
from lvlmva.vision.rrr import AlignmentPool, RRRHistory, RRRTrainer

__all__ = ["AlignmentTraining", "default_lambda"]

# RRR weights measured per dataset and start mode (inputs in [0, 1]; docs/benchmarks.md).
# Fine-tuning a model that already relies on a shortcut starts with a penalty of 1e3-1e4 against
# a cross-entropy near 0.05, so it needs a far smaller weight than training afresh.
_DEFAULT_LAMBDA = {
    ("decoy-mnist", "retrain"): 0.1,
    ("decoy-digits", "retrain"): 1e-2,
    ("decoy-digits", "finetune"): 1e-4,
    ("decoy-mnist", "finetune"): 1e-4,
}
# Critic masks are noisier than true ones (wrong "no" verdicts on the digit, decoys that never
# got positive attribution), and a weaker penalty suits them: on decoy-mnist the validation
# search chose 0.003 for the simulated critic at 0.87 against 0.1 for true masks
# (docs/bench_align.md).
_CRITIC_MASK_LAMBDA = {("decoy-mnist", "retrain"): 3e-3}


def default_lambda(dataset: str, start: str = "retrain", *, critic_masks: bool = False) -> float:
    """The RRR weight used when none is given, for masks from a critic or the true ones
    (search one with `lvlmva.vision.rrr.search_lambda` for a new dataset)."""
    if critic_masks and (dataset, start) in _CRITIC_MASK_LAMBDA:
        return _CRITIC_MASK_LAMBDA[(dataset, start)]
    return _DEFAULT_LAMBDA.get((dataset, start), 1.0 if start == "retrain" else 1e-4)


class AlignmentTraining:
    """An `RRRTrainer` fed through an `AlignmentPool`. Streaming (`options.streaming`): `start`
    runs `fit` in a thread at once, and it begins when `min_pool_fraction` of `n_samples` masks
    are in; otherwise `finish` trains once every mask is in."""

    def __init__(
        self,
        model: nn.Module,
        train: ShortcutDataset,
        options: TrainOptions,
        *,
        lam: float,
        n_samples: int,
        seed: int,
        device: torch.device,
        progress: bool,
    ) -> None:
        self.train = train
        self.options = options
        self.pool = AlignmentPool()
        streaming = options.streaming
        min_pool = max(1, int(options.min_pool_fraction * n_samples)) if streaming else n_samples
        self.trainer = RRRTrainer(
            model,
            lam=lam,
            gamma=options.gamma,
            epochs=options.epochs,
            lr=options.lr,
            seed=seed,
            device=device,
            progress=progress,
            min_pool=min_pool,
        )
        self._task: asyncio.Future[RRRTrainer] | None = None

    def start(self) -> None:
        """Start training in a worker thread (streaming only)."""
        if self.options.streaming and self._task is None:
            self._task = asyncio.ensure_future(
                asyncio.to_thread(self.trainer.fit, self.train, self.pool)
            )

    def add(self, records: Sequence[SampleRecord]) -> None:
        """Put the records that have a mask into the pool (one addition, in the given order)."""
        with_mask = [r for r in records if r.mask is not None]
        if not with_mask:
            return
        index = torch.tensor([r.index for r in with_mask])
        self.pool.add(
            self.train.images[index],
            torch.stack([r.mask for r in with_mask]),
            self.train.labels[index],
        )

    async def finish(self) -> RRRHistory:
        """No more masks will come: train (or let the streaming run end) and return the
        history. DataError when no mask was produced at all."""
        self.pool.close()
        if len(self.pool) == 0:
            await self.abort()
            raise DataError(
                "no correction masks were produced (every critique failed or was not run); "
                "see the per-sample errors, check the endpoint and budget, and rerun"
            )
        if self._task is None:
            await asyncio.to_thread(self.trainer.fit, self.train, self.pool)
        else:
            await self._task
        return self.trainer.history_

    async def abort(self) -> None:
        """Stop a streaming run (after an error or a cancellation) and wait for its thread."""
        self.pool.close()
        if self._task is not None:
            self.trainer.stop()
            await asyncio.gather(self._task, return_exceptions=True)
