"""RRR for several penalty weights at once: one copy of the start model per lambda, trained in
lockstep on the same batches, so that the validation check that picks one compares models that
differ only in lambda (common random numbers) and one pass over the data serves them all.

The grid is given in units of a scale read off the start model, so that it does not depend on
the input normalisation or the mask area (both change the penalty's size):

    lambda0 = cross-entropy / (align_batch * penalty per sample)

on the first (up to 64) alignment samples of the first stage, at the start model in evaluation
mode: the weight at which the penalty of a batch starts as large as its cross-entropy. Each
member trains with ``lambda = scale * lambda0`` (or with the lambdas given outright).

Successive halving (Jamieson & Talwalkar, 2016; `reduction_factor`, as in Ray Tune's ASHA):
given a `scorer` (the validation criterion that will choose among the members in the end),
after every epoch but the last the members are scored and only the best
``ceil(alive / reduction_factor)`` train on; with 5 members, 5 epochs and a factor of 2 that is
5 + 3 + 2 + 1 + 1 = 12 member-epochs instead of 25. Ties go to the smaller lambda. A pruned
member keeps the weights it had when it was dropped, with `pruned_after` (its last epoch) and
`rung_scores` saying when and why.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvlmva.errors import ConfigError, DataError
from lvlmva.vision.datasets.base import ShortcutDataset
from lvlmva.vision.rrr import (
    RRRHistory,
    RRRTrainer,
    _cuda_devices,
    epoch_bar,
    rrr_penalty,
)
from lvlmva.vision.schedule import ScheduledPool

__all__ = ["GridMember", "LambdaGridTrainer", "RRRSettings", "halving_schedule", "penalty_scale"]

Scorer = Callable[[Sequence[nn.Module]], Sequence[float] | None]
"""Scores models on validation (higher is better), or None to prune none this time."""

SCALE_SAMPLES = 64


@dataclass(frozen=True)
class RRRSettings:
    """How every member of the grid is optimised (the settings `RRRTrainer` takes as keywords,
    but `lam`): weight decay `gamma`, alignment and ordinary samples per step, epochs, Adam's
    learning rate, the seed, the device, whether progress bars show, and the successive-halving
    `reduction_factor` (1: every member trains every epoch)."""

    gamma: float = 0.0
    align_batch: int = 8
    train_batch: int = 64
    epochs: int = 5
    lr: float = 1e-3
    seed: int = 0
    device: str | torch.device = "cpu"
    progress: bool = True
    reduction_factor: int = 1

    def __post_init__(self) -> None:
        if self.reduction_factor < 1:
            raise ConfigError(f"reduction_factor must be 1 or more, got {self.reduction_factor}")


def halving_schedule(members: int, epochs: int, reduction_factor: int) -> list[int]:
    """How many members train in each epoch: all in the first, then after every epoch but the
    last ``ceil(alive / reduction_factor)`` of them (at least one)."""
    alive, out = members, []
    for _ in range(epochs):
        out.append(alive)
        alive = max(1, math.ceil(alive / reduction_factor))
    return out


@dataclass
class GridMember:
    """One lambda of the grid: its weight, its scale (None when given outright), the model it
    trains and that model's per-epoch history."""

    lam: float
    scale: float | None
    model: nn.Module
    history: RRRHistory = field(default_factory=RRRHistory)
    rung_scores: list[float] = field(default_factory=list)  # validation, after each rung
    pruned_after: int | None = None  # the last epoch it trained, when halving dropped it


def penalty_scale(
    model: nn.Module, images: Tensor, masks: Tensor, labels: Tensor, batch: int
) -> float:
    """lambda0 of the module docstring for `model` on these alignment samples, in evaluation
    mode (a freshly initialised batch norm is then the identity: in training mode its batch
    statistics inflate the input gradients of a ResNet-18 at initialisation 2,000-fold, see
    docs/robust.md). 1.0 when the masks give no penalty at all."""
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

    @property
    def survivors_(self) -> list[GridMember]:
        """The members that trained every epoch (all of them without halving)."""
        return [m for m in self.members_ if m.pruned_after is None]

    def fit(
        self, train: ShortcutDataset, pool: ScheduledPool, scorer: Scorer | None = None
    ) -> LambdaGridTrainer:
        """Train every member (`scorer`: see the module docstring on successive halving)."""
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
            with torch.random.fork_rng(devices=_cuda_devices(self.device)):
                torch.manual_seed(self.settings.seed)
                self._train(train, pool, scorer)
        finally:
            self._stop.clear()
        return self

    def _train(self, train: ShortcutDataset, pool: ScheduledPool, scorer: Scorer | None) -> None:
        s = self.settings
        generator = torch.Generator().manual_seed(s.seed)
        trainers = [
            (m, RRRTrainer(m.model, lam=m.lam, gamma=s.gamma, align_batch=s.align_batch),
             torch.optim.Adam(m.model.parameters(), lr=s.lr))
            for m in self.members_
        ]  # fmt: skip
        n = len(train)
        per_epoch = math.ceil(n / s.train_batch)
        total = max(1, per_epoch * s.epochs)
        for epoch in range(s.epochs):
            for m, _, _ in trainers:
                m.model.train()
            order = torch.randperm(n, generator=generator)
            sums = [[0.0, 0.0, 0.0] for _ in trainers]
            seconds, done = 0.0, 0
            desc = f"RRR epoch {epoch + 1}/{s.epochs} ({len(trainers)} lambdas)"
            bar = epoch_bar(per_epoch, desc, s.progress)
            for step in bar:
                stage = pool.stage((epoch * per_epoch + step) / total, self._stop)
                if stage is None or self._stop.is_set():
                    break
                idx = order[step * s.train_batch : (step + 1) * s.train_batch]
                x, y = train.images[idx].to(self.device), train.labels[idx].to(self.device)
                batch = stage.draw(s.align_batch, generator)
                started = time.perf_counter()
                for i, (m, stepper, opt) in enumerate(trainers):
                    result = stepper.step(m.model, opt, x, y, batch)
                    for j, value in enumerate((result.loss, result.ce, result.penalty)):
                        sums[i][j] += value
                seconds += time.perf_counter() - started
                done += 1
            bar.close()
            if done == 0 or stage is None:
                break
            for (m, _, _), totals in zip(trainers, sums, strict=True):
                m.history.add_epoch(done, totals, seconds / len(trainers), len(stage))
            if self._stop.is_set():
                break
            if epoch < s.epochs - 1:
                trainers = self._rung(trainers, epoch, scorer)
        for m in self.members_:
            m.model.eval()

    def _rung(self, trainers: list, epoch: int, scorer: Scorer | None) -> list:
        """Successive halving after `epoch`: the best ``ceil(alive / factor)`` go on."""
        keep = max(1, math.ceil(len(trainers) / self.settings.reduction_factor))
        if scorer is None or keep >= len(trainers):
            return trainers
        for m, _, _ in trainers:
            m.model.eval()
        scores = scorer([m.model for m, _, _ in trainers])
        if scores is None:
            return trainers
        for (m, _, _), score in zip(trainers, scores, strict=True):
            m.rung_scores.append(float(score))
        ranked = sorted(range(len(trainers)), key=lambda i: (-scores[i], trainers[i][0].lam))
        kept = sorted(ranked[:keep])
        for i in ranked[keep:]:
            trainers[i][0].pruned_after = epoch + 1
        return [trainers[i] for i in kept]
