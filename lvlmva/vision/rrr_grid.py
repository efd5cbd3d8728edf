"""RRR for several penalty weights at once: one copy of the start model per lambda, trained in
lockstep on the same batches, so that the validation check that picks one compares models that
differ only in lambda (common random numbers) and one pass over the data serves them all.

The grid is given in units of a scale read off the start model, so that it does not depend on
the input normalisation or the mask area (both change the penalty's size):

    lambda0 = cross-entropy / (align_batch * penalty per sample)

on the first (up to 64) alignment samples of the first stage, at the start model in evaluation
mode: the weight at which the penalty of a batch starts as large as its cross-entropy. Each
member trains with ``lambda = scale * lambda0`` (or with the lambdas given outright).
"""

from __future__ import annotations

import copy
import math
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvlmva.errors import ConfigError, DataError
from lvlmva.vision.datasets.base import ShortcutDataset
from lvlmva.vision.rrr import (
    RRRHistory,
    RRRTrainer,
    epoch_bar,
    rrr_penalty,
)
from lvlmva.vision.schedule import ScheduledPool
from lvlmva.vision.seeding import seeded

__all__ = ["GridMember", "LambdaGridTrainer", "RRRSettings", "penalty_scale"]

SCALE_SAMPLES = 64


@dataclass(frozen=True)
class RRRSettings:
    """How every member of the grid is optimised (the settings `RRRTrainer` takes as keywords,
    but `lam`): weight decay `gamma`, alignment and ordinary samples per step, epochs, Adam's
    learning rate, the seed, the device and whether progress bars show."""

    gamma: float = 0.0
    align_batch: int = 8
    train_batch: int = 64
    epochs: int = 5
    lr: float = 1e-3
    seed: int = 0
    device: str | torch.device = "cpu"
    progress: bool = True


@dataclass
class GridMember:
    """One lambda of the grid: its weight, its scale (None when given outright), the model it
    trains and that model's per-epoch history."""

    lam: float
    scale: float | None
    model: nn.Module
    history: RRRHistory = field(default_factory=RRRHistory)


def penalty_scale(
    model: nn.Module, images: Tensor, masks: Tensor, labels: Tensor, batch: int
) -> float:
    """lambda0 of the module docstring for `model` on these alignment samples, in evaluation
    mode (a freshly initialised batch norm is then the identity: in training mode its batch
    statistics inflate the input gradients of a ResNet-18 at initialisation 2,000-fold, see
    docs/robust.md), as the trained penalty takes it (`lvlmva.vision.rrr_loss`): lambda is in
    the units of the penalty it weighs. 1.0, with a RuntimeWarning, when the masks give no
    (finite) penalty at all."""
    probe = copy.deepcopy(model).eval()
    device = next(probe.parameters()).device
    ce = penalty = 0.0
    for start in range(0, len(images), 8):
        x = images[start : start + 8].to(device)
        m = masks[start : start + 8].to(device)
        y = labels[start : start + 8].to(device)
        ce += float(F.cross_entropy(probe(x), y, reduction="sum").detach())
        penalty += float(rrr_penalty(probe, x, m).detach())
    n = len(images)
    if penalty <= 0.0 or not math.isfinite(penalty):
        empty = int((masks.flatten(1) == 0).all(dim=1).sum()) if n else 0
        why = f"{empty} of the {n} masks are empty" if penalty == 0.0 else "it is not finite"
        warnings.warn(
            f"lambda0 falls back to 1.0: the penalty of the first {n} alignment samples is "
            f"{penalty:g} ({why}), so the grid's scales are used as lambdas outright",
            RuntimeWarning,
            stacklevel=2,
        )
        return 1.0
    return (ce / n) / (batch * penalty / n)


class LambdaGridTrainer:
    """Trains one copy of `model` per lambda on batches of `settings.train_batch` ordinary samples
    and `settings.align_batch` samples of a `ScheduledPool` (scikit-learn style: `fit` returns
    self, the trained members are `members_`, the scale `lambda0_`). Deterministic for a seed."""

    def __init__(
        self,
        model: nn.Module,
        *,
        scales: Sequence[float] = (),
        lams: Sequence[float] = (),
        settings: RRRSettings | None = None,
    ) -> None:
        if bool(scales) == bool(lams):
            raise ConfigError("give the lambda grid either as scales of lambda0 or as lambdas")
        for value in (*scales, *lams):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"lambda values must be finite and >= 0, got {value}")
        self.model = model
        self.scales = tuple(float(s) for s in scales)
        self.lams = tuple(float(v) for v in lams)
        self.settings = RRRSettings() if settings is None else settings
        self.device = torch.device(self.settings.device)
        self._stop = threading.Event()
        self.members_: list[GridMember] = []
        self.lambda0_: float | None = None

    def stop(self) -> None:
        """Ask a running `fit` (in another thread) to return after its current step."""
        self._stop.set()

    def fit(self, train: ShortcutDataset, pool: ScheduledPool) -> LambdaGridTrainer:
        if len(train) == 0:
            raise DataError("the RRR training set is empty")
        try:
            first = pool.stage(0.0, self._stop)
            if first is None:
                return self
            start = self.model.to(self.device)
            if self.scales:
                batch = first.head(SCALE_SAMPLES)
                self.lambda0_ = penalty_scale(
                    start, batch.images, batch.masks, batch.labels, self.settings.align_batch
                )
                grid = [(s * self.lambda0_, s) for s in self.scales]
            else:
                grid = [(lam, None) for lam in self.lams]
            self.members_ = [GridMember(lam, s, copy.deepcopy(start)) for lam, s in grid]
            with seeded(self.settings.seed, self.device):
                self._train(train, pool)
        finally:
            self._stop.clear()
        return self

    def _train(self, train: ShortcutDataset, pool: ScheduledPool) -> None:
        s = self.settings
        generator = torch.Generator().manual_seed(s.seed)
        steppers = [
            RRRTrainer(m.model, lam=m.lam, gamma=s.gamma, align_batch=s.align_batch)
            for m in self.members_
        ]
        optimizers = [torch.optim.Adam(m.model.parameters(), lr=s.lr) for m in self.members_]
        n = len(train)
        per_epoch = math.ceil(n / s.train_batch)
        total = max(1, per_epoch * s.epochs)
        for epoch in range(s.epochs):
            for m in self.members_:
                m.model.train()
            order = torch.randperm(n, generator=generator)
            sums = [[0.0, 0.0, 0.0] for _ in self.members_]
            seconds, done = 0.0, 0
            desc = f"RRR epoch {epoch + 1}/{s.epochs} ({len(self.members_)} lambdas)"
            bar = epoch_bar(per_epoch, desc, s.progress)
            for step in bar:
                stage = pool.stage((epoch * per_epoch + step) / total, self._stop)
                if stage is None or self._stop.is_set():
                    break
                idx = order[step * s.train_batch : (step + 1) * s.train_batch]
                x, y = train.images[idx].to(self.device), train.labels[idx].to(self.device)
                batch = stage.draw(s.align_batch, generator)
                started = time.perf_counter()
                for i, (m, stepper, opt) in enumerate(
                    zip(self.members_, steppers, optimizers, strict=True)
                ):
                    result = stepper.step(m.model, opt, x, y, batch)
                    for j, value in enumerate((result.loss, result.ce, result.penalty)):
                        sums[i][j] += value
                seconds += time.perf_counter() - started
                done += 1
            bar.close()
            if done == 0 or stage is None:
                break
            for m, totals in zip(self.members_, sums, strict=True):
                m.history.add_epoch(done, totals, seconds / len(self.members_), len(stage))
            if self._stop.is_set():
                break
        for m in self.members_:
            m.model.eval()
