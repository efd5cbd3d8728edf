"""A model's train/eval mode, its normalisation layers' mode, or its device switched for one
block of code and restored afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["eval_mode", "frozen_norms", "is_on", "module_device", "on_device", "running_norms"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def running_norms(model: nn.Module) -> list[_NormBase]:
    """The normalisation layers of `model` (batch and instance norm) in training mode that keep
    running statistics: those whose outputs mix the samples of a batch, and differ from eval."""
    return [
        m
        for m in model.modules()
        if isinstance(m, _NormBase) and m.training and m.track_running_stats
    ]


@contextlib.contextmanager
def frozen_norms(model: nn.Module) -> Iterator[list[_NormBase]]:
    """`running_norms(model)` in eval mode for the block, on copies of their running statistics:
    every sample's output is its own, nothing is updated, and a graph made in the block keeps
    the statistics it used when later training-mode passes move them. Yields those layers;
    restores their mode and statistics afterwards. A no-op for models without them."""
    norms = running_norms(model)
    saved = [(m.running_mean, m.running_var) for m in norms]
    for m in norms:
        m.eval()
        m.running_mean = m.running_mean.clone()
        m.running_var = m.running_var.clone()
    try:
        yield norms
    finally:
        for m, (mean, var) in zip(norms, saved, strict=True):
            m.train()
            m.running_mean, m.running_var = mean, var


def module_device(model: nn.Module) -> torch.device | None:
    """The device of `model`'s first parameter (else buffer); None when it has neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return None


def _resolved(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def is_on(model: nn.Module, device: str | torch.device) -> bool:
    """Whether `model` (its first tensor) is on `device`; one without tensors is anywhere."""
    home = module_device(model)
    return home is None or _resolved(home) == _resolved(torch.device(device))


@contextlib.contextmanager
def on_device(model: nn.Module, device: str | torch.device) -> Iterator[nn.Module]:
    """`model` moved to `device` for the block and back to where it was afterwards."""
    home = module_device(model)
    if home is None or is_on(model, device):
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)
