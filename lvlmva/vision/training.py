"""Plain supervised training (Adam, cross-entropy, optional per-sample weights) and prediction."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvlmva.errors import DataError
from lvlmva.progress import progress_bar
from lvlmva.vision.datasets.base import ShortcutDataset
from lvlmva.vision.modes import eval_mode, on_device
from lvlmva.vision.seeding import seeded

_MAX_DEVICE_COPY = 1 << 30  # datasets up to 1 GiB are copied to an accelerator once


@dataclass
class TrainHistory:
    """Per-epoch mean training loss and training accuracy, and the wall time in seconds."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.loss)


class TrainOptions(TypedDict, total=False):
    """Keyword arguments of `train_classifier` that the baselines pass through unchanged
    (absent ones take `train_classifier`'s defaults)."""

    lr: float
    batch_size: int
    device: str | torch.device
    progress: bool


def _as_weights(sample_weight: Sequence[float] | np.ndarray | Tensor, n: int) -> Tensor:
    weights = torch.as_tensor(np.asarray(sample_weight, dtype=np.float32)).flatten()
    if len(weights) != n:
        raise ValueError(f"sample_weight has {len(weights)} entries for {n} training samples")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    if weights.sum() <= 0:
        raise ValueError("sample_weight sums to zero: no sample would be learned from")
    return weights


def train_classifier(
    model: nn.Module,
    train: ShortcutDataset,
    *,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    sample_weight: Sequence[float] | np.ndarray | Tensor | None = None,
    weight_decay: float = 0.0,
    progress: bool = True,
) -> TrainHistory:
    """Train `model` in place with Adam on the cross-entropy of `train`.

    `sample_weight` (one non-negative weight per training sample, scikit-learn style) weights
    each sample's loss; the weights are scaled to mean 1, so uniform weights equal no weights.
    Shuffling and any randomness in the model (dropout) are seeded by `seed` without touching
    the caller's global random state; on CPU two runs from the same weights are identical.
    The model is left on `device`, in the train/eval mode it had.
    """
    if epochs < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}"
        )
    n = len(train)
    if n == 0:
        raise DataError("the training split is empty: nothing to train on")
    device = torch.device(device)
    data = _training_data(train, sample_weight, device)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    order_rng = torch.Generator().manual_seed(seed)
    history = TrainHistory()
    n_batches = (n + batch_size - 1) // batch_size
    was_training = model.training
    start = time.perf_counter()

    bar = progress_bar(
        total=epochs * n_batches, desc="training", unit="batch", disable=not progress
    )
    with seeded(seed, device):
        model.train()
        try:
            for epoch in range(epochs):
                batches = torch.randperm(n, generator=order_rng).split(batch_size)
                loss, accuracy = _train_epoch(
                    model, optimizer, data, batches, bar=bar if progress else None, epoch=epoch
                )
                history.loss.append(loss)
                history.accuracy.append(accuracy)
        finally:
            bar.close()
            model.train(was_training)
    history.seconds = time.perf_counter() - start
    return history


@dataclass(frozen=True)
class _TrainingData:
    """The tensors one training run draws its batches from (on the device when they fit)."""

    images: Tensor
    labels: Tensor
    weights: Tensor | None  # per-sample loss weights, mean 1
    device: torch.device


def _training_data(
    train: ShortcutDataset,
    sample_weight: Sequence[float] | np.ndarray | Tensor | None,
    device: torch.device,
) -> _TrainingData:
    """`train`'s images and labels with the weights scaled to mean 1, copied once to an
    accelerator `device` if they take at most 1 GiB (else batches are copied one by one)."""
    weights = None if sample_weight is None else _as_weights(sample_weight, len(train))
    if weights is not None:
        weights = weights / weights.mean()
    images, labels = train.images, train.labels.long()
    if device.type != "cpu" and images.numel() * images.element_size() <= _MAX_DEVICE_COPY:
        images, labels = images.to(device), labels.to(device)
        weights = None if weights is None else weights.to(device)
    return _TrainingData(images, labels, weights, device)


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: _TrainingData,
    batches: Sequence[Tensor],
    *,
    bar: Any | None,
    epoch: int,
) -> tuple[float, float]:
    """One pass over `batches` (index tensors); the epoch's mean loss and accuracy. With a
    progress `bar`, every step advances it and every 20th shows the loss."""
    device = data.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    for step, batch in enumerate(batches):
        idx = batch.to(data.images.device)
        x = data.images[idx].to(device, non_blocking=True)
        y = data.labels[idx].to(device, non_blocking=True)
        logits = model(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        if data.weights is not None:
            losses = losses * data.weights[idx].to(device)
        loss = losses.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(batch)
        correct += (logits.detach().argmax(dim=1) == y).sum()
        n += len(batch)
        if bar is not None:
            if step % 20 == 0 or step == len(batches) - 1:
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.4f}", refresh=False)
            bar.update(1)
    return float(loss_sum) / n, int(correct) / n


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: Tensor,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Logits [N, K] of `model` for `images` [N, C, H, W], in eval mode, batched, on the CPU."""
    device = torch.device(device)
    with on_device(model, device), eval_mode(model):
        outputs = [model(batch.to(device)).float().cpu() for batch in images.split(batch_size)]
    if not outputs:
        return torch.empty(0, 0)
    return torch.cat(outputs)
