"""In-memory datasets whose samples carry a label, a group and a ground-truth spurious mask, and
the normalisation statistics (`channel_stats`) every dataset computes on its training split
(`describe_splits` puts them in the splits' `DatasetInfo`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Dataset


@dataclass(frozen=True)
class DatasetInfo:
    """What a model trained on a dataset needs to know about it; stored in checkpoints.

    `task` names the prompt family ("decoy-digits", "skin-lesions", "knee-radiographs" or a
    user's own). `mean`/`std` are the normalisation the model applies to [0, 1] inputs.
    `options` are the keyword arguments that rebuild the dataset with `load_dataset`.
    """

    name: str
    class_names: tuple[str, ...]
    channels: int
    image_size: int
    task: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    group_names: tuple[str, ...] | None = None
    options: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class ShortcutDataset(Dataset):
    """Images in [0, 1] as one tensor [N, C, H, W], with labels [N], optional groups [N]
    (class x spurious attribute) and optional ground-truth spurious masks [N, H, W] (bool)."""

    images: Tensor
    labels: Tensor
    groups: Tensor | None = None
    spurious_masks: Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(self.images.shape)}")
        for name in ("labels", "groups", "spurious_masks"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries for {n} images")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        return self.images[index], self.labels[index], index

    def subset(self, indices: Sequence[int] | Tensor) -> ShortcutDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ShortcutDataset(
            self.images[idx],
            self.labels[idx],
            None if self.groups is None else self.groups[idx],
            None if self.spurious_masks is None else self.spurious_masks[idx],
        )


@dataclass(frozen=True)
class DatasetSplits:
    info: DatasetInfo
    train: ShortcutDataset
    val: ShortcutDataset
    test: ShortcutDataset


def channel_stats(
    images: Tensor, *, decimals: int | None = None, dtype: torch.dtype = torch.float64
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of [N, C, H, W] images, summed in `dtype`.

    The std is at least 1e-3 (1 when there is a single value per channel); both are rounded to
    `decimals` when given.
    """
    x = images.to(dtype)
    mean = x.mean(dim=(0, 2, 3))
    single = x[:, 0].numel() <= 1
    std = torch.ones_like(mean) if single else x.std(dim=(0, 2, 3)).clamp_min(1e-3)

    def values(stat: Tensor) -> tuple[float, ...]:
        return tuple(float(v) if decimals is None else round(float(v), decimals) for v in stat)

    return values(mean), values(std)


def describe_splits(
    train: ShortcutDataset,
    val: ShortcutDataset,
    test: ShortcutDataset,
    *,
    name: str,
    class_names: tuple[str, ...],
    task: str,
    group_names: tuple[str, ...] | None,
    options: dict,
    decimals: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> DatasetSplits:
    """The splits with their `DatasetInfo`: channel count, image size and normalisation
    (`channel_stats` with `decimals` and `dtype`) read off the training images."""
    mean, std = channel_stats(train.images, decimals=decimals, dtype=dtype)
    _, channels, _, size = train.images.shape
    info = DatasetInfo(
        name, class_names, channels, size, task, mean, std, group_names, options=dict(options)
    )
    return DatasetSplits(info, train, val, test)
