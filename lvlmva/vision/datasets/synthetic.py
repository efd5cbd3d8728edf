"""What the synthetic shortcut benchmarks (`synth-lesions`, `synth-knee`) share.

Each benchmark is a `SyntheticTask`: its names, its channel count and a function drawing a chunk
of images with or without the shortcut. `build_synthetic_splits` turns it into seeded splits:
class-balanced labels, the shortcut on `rate[c]` of the training images of class c and on half
of each class in validation and test, groups class x shortcut (``2 * label + shortcut``), the
shortcut's pixels as the spurious mask. Every split has its own generator, so the validation and
test images do not change with `n_train`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from lvlmva.errors import ConfigError
from lvlmva.vision.datasets.base import DatasetSplits, ShortcutDataset, describe_splits

__all__ = [
    "CHUNK",
    "DrawChunk",
    "SyntheticTask",
    "attribute_by_class",
    "balanced_labels",
    "build_synthetic_splits",
    "check_options",
    "generate_split",
    "pixel_grid",
    "smooth_noise",
    "split_seed",
]

CHUNK = 512  # images drawn at once
STAT_DECIMALS = 4  # mean / std rounded (float32 sums, as these datasets always computed them)
EVAL_RATE = (0.5, 0.5)  # shortcut share per class in validation and test

DrawChunk = Callable[[Tensor, Tensor, int, torch.Generator], tuple[Tensor, Tensor]]
"""``draw(labels [n], shortcut [n] bool, size, generator) -> (images [n, C, S, S] in [0, 1],
spurious masks [n, S, S] bool)``."""


@dataclass(frozen=True)
class SyntheticTask:
    """One synthetic benchmark: its dataset and prompt-family names, class and group names,
    channels, the option naming its training shortcut rate, and its chunk drawer.
    `seed_offset` is added to every split's generator seed."""

    name: str
    task: str
    class_names: tuple[str, ...]
    group_names: tuple[str, ...]
    channels: int
    rate_option: str
    draw: DrawChunk
    seed_offset: int = 0


def build_synthetic_splits(
    spec: SyntheticTask,
    *,
    seed: int,
    image_size: int,
    sizes: tuple[int, int, int],
    rate: Sequence[float],
) -> DatasetSplits:
    """Seeded train / val / test splits of `sizes` images of `image_size` px; the shortcut on
    `rate[c]` of the training images of class c, on half of each class elsewhere."""
    rate = check_options(image_size, sizes, rate, spec.rate_option)
    splits = [
        generate_split(
            spec,
            n,
            image_size,
            rate if k == 0 else EVAL_RATE,
            torch.Generator().manual_seed(split_seed(seed, k) + spec.seed_offset),
        )
        for k, n in enumerate(sizes)
    ]
    n_train, n_val, n_test = sizes
    return describe_splits(
        *splits,
        name=spec.name,
        class_names=spec.class_names,
        task=spec.task,
        group_names=spec.group_names,
        options={
            "seed": seed,
            "image_size": image_size,
            "n_train": n_train,
            "n_val": n_val,
            "n_test": n_test,
            spec.rate_option: list(rate),
        },
        decimals=STAT_DECIMALS,
        dtype=torch.float32,
    )


def generate_split(
    spec: SyntheticTask, n: int, size: int, rate: Sequence[float], generator: torch.Generator
) -> ShortcutDataset:
    """`n` images of `size` px: class-balanced labels, the shortcut at `rate` per class, drawn
    `CHUNK` images at a time."""
    labels = balanced_labels(n, generator)
    shortcut = attribute_by_class(labels, rate, generator)
    images = torch.empty(n, spec.channels, size, size)
    masks = torch.empty(n, size, size, dtype=torch.bool)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        images[start:stop], masks[start:stop] = spec.draw(
            labels[start:stop], shortcut[start:stop], size, generator
        )
    return ShortcutDataset(images, labels, labels * 2 + shortcut.long(), masks)


def smooth_noise(n: int, size: int, cells: int, generator: torch.Generator) -> Tensor:
    """Smooth random fields [n, size, size] in [0, 1]: a `cells` x `cells` grid, upsampled."""
    grid = torch.rand(n, 1, cells + 1, cells + 1, generator=generator)
    field = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)
    return field[:, 0].clamp(0.0, 1.0)


def pixel_grid(size: int) -> tuple[Tensor, Tensor]:
    """Row and column coordinates [size, size] of the pixel centres."""
    axis = torch.arange(size, dtype=torch.float32)
    return torch.meshgrid(axis, axis, indexing="ij")


def balanced_labels(n: int, generator: torch.Generator, num_classes: int = 2) -> Tensor:
    """Labels 0 .. num_classes-1 in equal shares (up to rounding), in random order."""
    return (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]


def attribute_by_class(labels: Tensor, rate: Sequence[float], generator: torch.Generator) -> Tensor:
    """A bool attribute that holds for round(rate[c] * n_c) random samples of each class c."""
    out = torch.zeros(len(labels), dtype=torch.bool)
    for c, share in enumerate(rate):
        members = torch.nonzero(labels == c).flatten()
        chosen = members[torch.randperm(len(members), generator=generator)]
        out[chosen[: round(share * len(members))]] = True
    return out


def split_seed(seed: int, split: int) -> int:
    """Independent generator seeds for the train (0), val (1) and test (2) splits."""
    return (seed * 1_000_003 + 7919 * (split + 1)) % (2**63)


def check_options(
    image_size: int, sizes: Sequence[int], rate: Sequence[float], rate_name: str
) -> tuple[float, float]:
    """Validate the shared options of the synthetic datasets; return the rate as a pair."""
    if not 32 <= int(image_size) <= 512:
        raise ConfigError(f"image_size must be between 32 and 512 px, got {image_size}")
    for name, n in zip(("n_train", "n_val", "n_test"), sizes, strict=True):
        if int(n) < 2:
            raise ConfigError(f"{name} must be at least 2 (one image per class), got {n}")
    pair = tuple(float(r) for r in rate)
    if len(pair) != 2 or not all(0.0 <= r <= 1.0 for r in pair):
        raise ConfigError(
            f"{rate_name} must be two shares in [0, 1] (one per class), got {list(rate)}"
        )
    return pair
