"""Right for the right reasons (pipeline stage 7): the RRR penalty, a streaming pool of
alignment samples, the trainer on mixed batches, and the lambda search.

Loss of one step, over `train_batch` ordinary samples and `align_batch` alignment samples:

    cross-entropy over all of them
    + lam * sum over alignment samples and pixels of (A * d/dx sum_k log p_k(x))^2
    + gamma * ||theta||^2

The double backward of the penalty runs over the alignment samples only: they get a forward
pass of their own, so a step costs one ordinary forward/backward plus a second-order pass
over `align_batch` images (batch norm on its running statistics: `lvlmva.vision.rrr_loss`).
Streaming: `fit` waits until the pool holds `min_pool` samples (or is closed), then trains
and draws from whatever the pool holds at each step, so masks that arrive while training runs
are taken in.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from torch import Tensor, nn

from lvlmva.errors import ConfigError, DataError
from lvlmva.progress import progress_bar
from lvlmva.vision.datasets.base import DatasetInfo, ShortcutDataset
from lvlmva.vision.modes import eval_mode
from lvlmva.vision.rrr_loss import UNKNOWN_LABEL, step_terms
from lvlmva.vision.rrr_loss import rrr_penalty as rrr_penalty  # re-exported
from lvlmva.vision.seeding import seeded


@dataclass(frozen=True)
class AlignmentBatch:
    """Alignment samples drawn from a pool: images [k, C, H, W], masks [k, H, W] float and
    labels [k] (UNKNOWN_LABEL where the sample was added without one)."""

    images: Tensor
    masks: Tensor
    labels: Tensor


class AlignmentPool:
    """Thread-safe, growing store of (image [C, H, W], mask [H, W]) alignment pairs.

    One thread `add`s pairs (and finally `close`s the pool) while the trainer `sample`s from
    it in another. Labels are optional: samples added with labels also enter the trainer's
    cross-entropy term; those without only enter the penalty.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._chunks: list[tuple[Tensor, Tensor, Tensor]] = []
        self._cache: tuple[Tensor, Tensor, Tensor] | None = None
        self._size = 0
        self._closed = False

    def add(self, images: Tensor, masks: Tensor, labels: Tensor | None = None) -> None:
        """Add images [n, C, H, W] with masks [n, H, W] (bool or float) and optional labels [n]."""
        if images.ndim != 4:
            raise DataError(f"pool images must be [n, C, H, W], got shape {tuple(images.shape)}")
        n, _, h, w = images.shape
        if masks.shape != (n, h, w):
            raise DataError(
                f"pool masks must be [n, H, W] = {(n, h, w)} for images of shape "
                f"{tuple(images.shape)}, got {tuple(masks.shape)}"
            )
        if labels is None:
            labels = torch.full((n,), UNKNOWN_LABEL, dtype=torch.long)
        elif labels.shape != (n,):
            raise DataError(f"pool labels must be [{n}], got shape {tuple(labels.shape)}")
        chunk = (
            images.detach().to("cpu", torch.float32),
            masks.detach().to("cpu", torch.float32),
            labels.detach().to("cpu", torch.long),
        )
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot add to a closed AlignmentPool")
            if self._chunks and self._chunks[0][0].shape[1:] != chunk[0].shape[1:]:
                raise DataError(
                    f"pool images of shape {tuple(chunk[0].shape[1:])} differ from the "
                    f"{tuple(self._chunks[0][0].shape[1:])} already in the pool"
                )
            if n:
                self._chunks.append(chunk)
                self._size += n
            self._cond.notify_all()

    def close(self) -> None:
        """No more samples will come; wakes every waiter."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def __len__(self) -> int:
        with self._cond:
            return self._size

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the pool is closed or `timeout` seconds pass; returns whether it is."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed, timeout)

    def wait_for(self, n: int, timeout: float | None = None) -> bool:
        """Block until the pool holds at least `n` samples, it is closed, or `timeout` seconds
        pass. Returns whether it holds at least `n`."""
        with self._cond:
            self._cond.wait_for(lambda: self._size >= n or self._closed, timeout)
            return self._size >= n

    def draw(self, k: int, generator: torch.Generator | None = None) -> AlignmentBatch:
        """`k` samples drawn uniformly: without replacement when the pool holds at least `k`,
        with replacement otherwise."""
        images, masks, labels = self._snapshot()
        size = len(images)
        if size == 0:
            raise DataError("the alignment pool is empty: add masks before sampling from it")
        if size >= k:
            idx = torch.randperm(size, generator=generator)[:k]
        else:
            idx = torch.randint(size, (k,), generator=generator)
        return AlignmentBatch(images[idx], masks[idx], labels[idx])

    def head(self, k: int) -> AlignmentBatch:
        """The first `k` samples in the order they were added (all of them if fewer)."""
        images, masks, labels = self._snapshot()
        return AlignmentBatch(images[:k], masks[:k], labels[:k])

    def sample(self, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """`(images [k, C, H, W], masks [k, H, W])`, drawn as in `draw`."""
        batch = self.draw(k, generator)
        return batch.images, batch.masks

    def _snapshot(self) -> tuple[Tensor, Tensor, Tensor]:
        with self._cond:
            if len(self._chunks) > 1:
                merged = tuple(torch.cat(parts) for parts in zip(*self._chunks, strict=True))
                self._chunks = [merged]  # type: ignore[list-item]
            if not self._chunks:
                return torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.long)
            return self._chunks[0]


@dataclass
class RRRHistory:
    """Per-epoch means of the loss terms, the pool size at the end of the epoch, validation
    accuracy / WGA (when a validation set is given) and the mean wall time of a step."""

    loss: list[float] = field(default_factory=list)
    ce: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    val_wga: list[float] = field(default_factory=list)
    step_time_s: list[float] = field(default_factory=list)
    pool_size: list[int] = field(default_factory=list)
    steps: int = 0

    def add_epoch(
        self, steps: int, totals: Sequence[float], step_time_s: float, pool_size: int
    ) -> None:
        """Record an epoch of `steps` steps: `totals` are the summed (loss, ce, penalty) of its
        steps, `step_time_s` their summed wall time, `pool_size` the pool at its end."""
        loss, ce, penalty = totals
        self.steps += steps
        self.loss.append(loss / steps)
        self.ce.append(ce / steps)
        self.penalty.append(penalty / steps)
        self.step_time_s.append(step_time_s / steps)
        self.pool_size.append(pool_size)


@dataclass(frozen=True)
class StepResult:
    loss: float
    ce: float
    penalty: float


class RRRTrainer(BaseEstimator):
    """Trains `model` with RRR on mixed batches of ordinary and alignment samples: pass a
    trained model to fine-tune it, or a freshly initialised one to retrain from scratch.

    On decoy-mnist (MLP, Adam, [0, 1] inputs) retraining from scratch with lam = 1 (the default,
    chosen by `search_lambda`) reaches 0.96, while fine-tuning the shortcut model collapses it
    to chance for lam = 1 and 1e3 alike: its input gradients on the decoy are so large that the
    penalty dominates, and Adam's per-parameter step sizes then shrink every weight, not only
    those reading the decoy (see docs/bench_decoy_mnist.md).

    scikit-learn style: settings in the constructor, `fit(train, pool)` returns self; the
    trained model is `model_` (the given model itself, trained in place, unless
    `copy_model=True`) and per-epoch figures are in `history_`. Training starts once the
    pool holds `min_pool` samples (or is closed) and takes in later samples as they arrive;
    with `last_epoch_waits` (default) the last epoch starts only once the pool is closed, so
    every mask that arrives is trained on even when the critique is slower than training.
    Deterministic for a seed when the pool does not change during training. A scikit-learn
    `BaseEstimator`: `get_params`, `set_params` and `sklearn.base.clone` (which copies the
    model) work, so a grid over `lam` needs no code of its own.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lam: float = 1.0,
        gamma: float = 0.0,
        align_batch: int = 8,
        train_batch: int = 64,
        epochs: int = 5,
        lr: float = 1e-3,
        seed: int = 0,
        device: str | torch.device = "cpu",
        progress: bool = True,
        min_pool: int = 1,
        pool_timeout: float | None = None,
        last_epoch_waits: bool = True,
        copy_model: bool = False,
        info: DatasetInfo | None = None,
    ) -> None:
        self.model = model
        self.lam = lam
        self.gamma = gamma
        self.align_batch = align_batch
        self.train_batch = train_batch
        self.epochs = epochs
        self.lr = lr
        self.seed = seed
        self.device = device
        self.progress = progress
        self.min_pool = min_pool
        self.pool_timeout = pool_timeout
        self.last_epoch_waits = last_epoch_waits
        self.copy_model = copy_model
        self.info = info
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask a running `fit` (in another thread) to return after its current step; a `fit`
        that has not started yet returns at once. The request ends with that `fit`."""
        self._stop.set()

    def _check(self) -> None:
        for name in ("align_batch", "train_batch", "min_pool"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"RRRTrainer {name} must be at least 1, got {getattr(self, name)}"
                )
        if self.epochs < 0:
            raise ConfigError(f"RRRTrainer epochs must be >= 0, got {self.epochs}")
        for name in ("lam", "gamma", "lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"RRRTrainer {name} must be a finite number >= 0, got {value}")

    def fit(
        self, train: ShortcutDataset, pool: AlignmentPool, *, val: ShortcutDataset | None = None
    ) -> RRRTrainer:
        """Train for `epochs` passes over `train`, each step with `train_batch` samples of
        `train` and `align_batch` samples of `pool`; evaluate on `val` after every epoch."""
        self._check()
        if len(train) == 0:
            raise DataError("the RRR training set is empty")
        device = torch.device(self.device)
        model = copy.deepcopy(self.model) if self.copy_model else self.model
        model.to(device)
        self.model_ = model
        self.history_ = RRRHistory()
        try:
            if not self._wait_for_pool(pool):
                return self
            with seeded(self.seed, device):
                self._train(model, train, pool, val, device)
        finally:
            self._stop.clear()
        return self

    def _wait_for_pool(self, pool: AlignmentPool) -> bool:
        deadline = None if self.pool_timeout is None else time.monotonic() + self.pool_timeout
        while not self._stop.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if pool.wait_for(self.min_pool, timeout=0.2 if left is None else min(0.2, left)):
                return True
            if pool.closed:
                if len(pool) == 0:
                    raise DataError(
                        "the alignment pool was closed without any masks: there is nothing "
                        "to align with (check that the critique produced masks)"
                    )
                return True
            if deadline is not None and time.monotonic() >= deadline:
                raise DataError(
                    f"only {len(pool)} of the {self.min_pool} alignment masks needed to start "
                    f"arrived within {self.pool_timeout} s"
                )
        return False

    def _wait_until_closed(self, pool: AlignmentPool) -> None:
        """Block (stop-aware) until no more masks will come."""
        while not self._stop.is_set() and not pool.wait_closed(timeout=0.2):
            pass

    def _train(
        self,
        model: nn.Module,
        train: ShortcutDataset,
        pool: AlignmentPool,
        val: ShortcutDataset | None,
        device: torch.device,
    ) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        n = len(train)
        steps_per_epoch = math.ceil(n / self.train_batch)
        for epoch in range(self.epochs):
            if epoch == self.epochs - 1 and self.last_epoch_waits:
                self._wait_until_closed(pool)
            model.train()
            order = torch.randperm(n, generator=generator)
            totals = [0.0, 0.0, 0.0]
            step_time = 0.0
            done = 0
            bar = epoch_bar(steps_per_epoch, f"RRR epoch {epoch + 1}/{self.epochs}", self.progress)
            for step in bar:
                if self._stop.is_set():
                    break
                idx = order[step * self.train_batch : (step + 1) * self.train_batch]
                batch = pool.draw(self.align_batch, generator)
                started = time.perf_counter()
                result = self.step(
                    model,
                    optimizer,
                    train.images[idx].to(device),
                    train.labels[idx].to(device),
                    batch,
                )
                step_time += time.perf_counter() - started
                done += 1
                for i, value in enumerate((result.loss, result.ce, result.penalty)):
                    totals[i] += value
                if self.progress and step % 50 == 0:
                    bar.set_postfix(  # shown with the next refresh: an immediate one would
                        loss=f"{result.loss:.3f}", pen=f"{result.penalty:.2e}", pool=len(pool),
                        refresh=False,  # print a stale count (tqdm updates n when it draws)
                    )
            bar.close()
            if done == 0:
                break
            self.history_.add_epoch(done, totals, step_time, len(pool))
            if val is not None:
                from lvlmva.vision.metrics import evaluate

                metrics = evaluate(model, val, self.info, device=device)
                self.history_.val_accuracy.append(metrics.test_accuracy)
                if metrics.wga is not None:
                    self.history_.val_wga.append(metrics.wga)
            if self._stop.is_set():
                break
        model.eval()

    def step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        images: Tensor,
        labels: Tensor,
        batch: AlignmentBatch,
    ) -> StepResult:
        """One optimisation step on ordinary samples (`images`, `labels`) plus `batch` (the loss
        terms of `lvlmva.vision.rrr_loss.step_terms`)."""
        device = images.device
        a_images = batch.images.to(device)
        a_labels = batch.labels.to(device)
        a_masks = batch.masks.to(device)
        count = len(labels) + int((a_labels != UNKNOWN_LABEL).sum())
        align = (a_images, a_masks, a_labels)
        ce_sum, penalty = step_terms(model, images, labels, align, self.lam)
        ce = ce_sum / max(count, 1)
        loss = ce + self.lam * penalty
        if self.gamma > 0:
            loss = loss + self.gamma * sum(p.pow(2).sum() for p in model.parameters())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return StepResult(float(loss.detach()), float(ce.detach()), float(penalty.detach()))

    @torch.no_grad()
    def predict_proba(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Class probabilities [N, K] of the trained model."""
        model = self.model_
        device = next(model.parameters()).device
        with eval_mode(model):
            out = [
                F.softmax(model(images[i : i + batch_size].to(device)), dim=1).cpu()
                for i in range(0, len(images), batch_size)
            ]
        return torch.cat(out) if out else torch.empty(0, 0)

    def predict(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Predicted class indices [N] of the trained model."""
        return self.predict_proba(images, batch_size).argmax(dim=1)


def epoch_bar(steps: int, desc: str, show: bool) -> Any:
    """A progress bar over the `steps` steps of one epoch that clears itself when done."""
    return progress_bar(range(steps), desc=desc, disable=not show, leave=False)


@dataclass(frozen=True)
class LambdaSearchResult:
    """The chosen lambda, the validation score of every lambda tried and its full metrics."""

    best_lambda: float
    scores: dict[float, float]
    criterion: str
    metrics: dict = field(default_factory=dict)  # lambda -> lvlmva.vision.metrics.Metrics


def search_lambda(
    make_model: Callable[[], nn.Module],
    train: ShortcutDataset,
    pool: AlignmentPool,
    val: ShortcutDataset,
    *,
    grid: Sequence[float] = (1, 10, 100, 1e3, 1e4, 1e5),
    criterion: Literal["auto", "accuracy", "wga"] = "auto",
    info: DatasetInfo | None = None,
    **trainer_kwargs,
) -> LambdaSearchResult:
    """Train one model per lambda in `grid` (`make_model()` gives each its starting model)
    and pick the lambda with the best validation score: accuracy, or worst-group accuracy
    (`"auto"` uses WGA when `val` has groups that can reveal a shortcut,
    `lvlmva.vision.metrics.usable_groups`: not groups that follow the class one to one, whose
    accuracy the shortcut earns). WGA is taken over those usable groups (large enough for
    their accuracy to mean something; `align`'s model check scores the same ones), over every
    group when there are none. Ties go to the smaller lambda."""
    from lvlmva.vision.metrics import evaluate, predict_labels, usable_groups, worst_of_groups

    if not grid:
        raise ConfigError("the lambda grid is empty; give at least one value")
    usable = usable_groups(val)
    if criterion == "auto":
        criterion = "wga" if usable else "accuracy"
    if criterion not in ("accuracy", "wga"):
        raise ConfigError(f"unknown lambda criterion {criterion!r}; use 'accuracy' or 'wga'")
    if criterion == "wga" and val.groups is None:
        raise ConfigError("criterion 'wga' needs a validation set with groups; use 'accuracy'")
    device = trainer_kwargs.get("device", "cpu")
    scores: dict[float, float] = {}
    metrics: dict = {}
    for lam in sorted(float(v) for v in grid):
        trainer = RRRTrainer(make_model(), lam=lam, info=info, **trainer_kwargs).fit(train, pool)
        m = evaluate(trainer.model_, val, info, device=device)
        metrics[lam] = m
        if criterion == "accuracy" or not usable:
            scores[lam] = m.test_accuracy if criterion == "accuracy" else float(m.wga)
        else:
            assert val.groups is not None
            correct = predict_labels(trainer.model_, val.images, device=device).eq(val.labels.cpu())
            scores[lam] = worst_of_groups(correct, val.groups, usable)
    best = max(scores, key=lambda lam: (scores[lam], -lam))
    return LambdaSearchResult(best, scores, criterion, metrics)
