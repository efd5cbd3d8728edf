"""Global test-time corruptions (gamma, defocus blur, contrast) and the accuracy drop they cause.

Severities run from 1 (mild) to 5 (strong). Everything works on batches [N, C, H, W] in [0, 1],
on whatever device the images are on. Blur radii are given for 64 px images and scale with the
image size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lvlmva.errors import ConfigError, DataError
from lvlmva.vision.datasets.base import ShortcutDataset
from lvlmva.vision.modes import eval_mode, on_device

CORRUPTIONS = ("gamma", "defocus", "contrast")
SEVERITIES = (1, 2, 3, 4, 5)
GAMMA = (1.5, 2.0, 2.5, 3.0, 4.0)  # x ** gamma: darker mid-tones
DEFOCUS_RADIUS = (0.75, 1.0, 1.5, 2.0, 3.0)  # disk radius in px at 64 px
CONTRAST = (0.75, 0.6, 0.45, 0.3, 0.15)  # share of the contrast around the image mean kept


def _check(kind: str, severity: int) -> None:
    if kind not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTIONS)}")
    if int(severity) not in SEVERITIES:
        raise ConfigError(f"corruption severity must be 1 to 5, got {severity}")


def disk_kernel(radius: float, supersample: int = 8) -> Tensor:
    """A normalised defocus kernel [K, K]: the share of each pixel covered by a disk of `radius`
    px centred on the middle pixel (anti-aliased by `supersample`^2 sub-pixel samples)."""
    half = max(1, math.ceil(radius))
    size = 2 * half + 1
    steps = (torch.arange(size * supersample, dtype=torch.float32) + 0.5) / supersample - half - 0.5
    yy, xx = torch.meshgrid(steps, steps, indexing="ij")
    inside = (yy**2 + xx**2 <= radius**2).float()
    kernel = inside.reshape(size, supersample, size, supersample).mean(dim=(1, 3))
    kernel[half, half] = kernel[half, half].clamp(min=1e-6)
    return kernel / kernel.sum()


def gamma(images: Tensor, value: float) -> Tensor:
    """Gamma correction x ** value (value > 1 darkens the mid-tones)."""
    return images.clamp(0.0, 1.0) ** value


def defocus(images: Tensor, radius: float) -> Tensor:
    """Defocus blur: every channel convolved with a disk of `radius` px (reflected borders)."""
    kernel = disk_kernel(radius).to(images.device, images.dtype)
    c = images.shape[1]
    half = kernel.shape[0] // 2
    weight = kernel.expand(c, 1, *kernel.shape).contiguous()
    padded = F.pad(images, (half, half, half, half), mode="replicate")
    return F.conv2d(padded, weight, groups=c).clamp(0.0, 1.0)


def contrast(images: Tensor, keep: float) -> Tensor:
    """Contrast reduction towards each image's mean grey value, keeping `keep` of it."""
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + (images - mean) * keep).clamp(0.0, 1.0)


def corrupt(images: Tensor, kind: str, severity: int) -> Tensor:
    """`images` [N, C, H, W] in [0, 1] with corruption `kind` at `severity` (1-5)."""
    _check(kind, severity)
    if images.ndim != 4:
        raise DataError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    i = int(severity) - 1
    if kind == "gamma":
        return gamma(images, GAMMA[i])
    if kind == "defocus":
        return defocus(images, DEFOCUS_RADIUS[i] * images.shape[-1] / 64)
    return contrast(images, CONTRAST[i])


@dataclass(frozen=True)
class CorruptionAccuracy:
    """Clean accuracy and the accuracy under every corruption kind and severity."""

    clean_accuracy: float
    accuracy: dict[str, dict[int, float]]

    @property
    def drop(self) -> dict[str, dict[int, float]]:
        """Clean accuracy minus corrupted accuracy, per kind and severity."""
        return {
            kind: {s: self.clean_accuracy - acc for s, acc in by_severity.items()}
            for kind, by_severity in self.accuracy.items()
        }

    def mean_drop(self) -> dict[str, float]:
        """The drop of each kind averaged over its severities."""
        return {k: sum(v.values()) / len(v) for k, v in self.drop.items()}

    def to_dict(self) -> dict:
        return {
            "clean_accuracy": self.clean_accuracy,
            "accuracy": {k: {str(s): a for s, a in v.items()} for k, v in self.accuracy.items()},
            "drop": {k: {str(s): d for s, d in v.items()} for k, v in self.drop.items()},
            "mean_drop": self.mean_drop(),
        }


@torch.no_grad()
def corruption_accuracy(
    model: nn.Module,
    dataset: ShortcutDataset,
    *,
    kinds: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> CorruptionAccuracy:
    """Accuracy of `model` on `dataset` clean and under each corruption (applied per batch on
    `device`, so no corrupted copy of the dataset is kept)."""
    for kind in kinds:
        for severity in severities:
            _check(kind, severity)
    if len(dataset) == 0:
        raise DataError("cannot measure corruption robustness on an empty dataset")
    device = torch.device(device)
    settings = [(None, 0)] + [(k, int(s)) for k in kinds for s in severities]
    correct = torch.zeros(len(settings))
    with on_device(model, device), eval_mode(model):
        for start in range(0, len(dataset), batch_size):
            x = dataset.images[start : start + batch_size].to(device)
            y = dataset.labels[start : start + batch_size].to(device).long()
            for j, (kind, severity) in enumerate(settings):
                inputs = x if kind is None else corrupt(x, kind, severity)
                correct[j] += float((model(inputs).argmax(dim=1) == y).sum())
    acc = (correct / len(dataset)).tolist()
    by_kind: dict[str, dict[int, float]] = {}
    for (kind, severity), a in zip(settings[1:], acc[1:], strict=True):
        by_kind.setdefault(kind, {})[severity] = a
    return CorruptionAccuracy(clean_accuracy=acc[0], accuracy=by_kind)

