"""The DecoyMNIST construction of Ross et al. (2017), shared by `decoy-mnist` and `decoy-digits`.

Every image gets a 4x4 square in one of its four corners (chosen at random, seeded). The square
touches the image border (no margin), as in the original construction. Its shade is
``255 - 25 * d`` grey levels (scaled to [0, 1]), where ``d`` is the image's own label in the
training and validation splits (a perfect shortcut) and a random digit in the test split (so the
shortcut no longer works). The square's pixels are the ground-truth spurious mask.

Groups are class x "does the square's shade match the label": group ``2 * label + 1`` is
"<label>/decoy-matches", group ``2 * label`` is "<label>/decoy-random".
"""

from __future__ import annotations

import torch
from torch import Tensor

from lvlmva.vision.datasets.base import DatasetSplits, ShortcutDataset, describe_splits

DECOY_SIZE = 4
TASK = "decoy-digits"


def decoy_shade(digits: Tensor) -> Tensor:
    """The square's shade in [0, 1] for each digit: (255 - 25 * digit) / 255."""
    return (255.0 - 25.0 * digits.float()) / 255.0


def corner_masks(image_size: int, size: int = DECOY_SIZE) -> Tensor:
    """Boolean masks [4, H, W] of a `size` x `size` square in each corner (TL, TR, BL, BR)."""
    masks = torch.zeros(4, image_size, image_size, dtype=torch.bool)
    masks[0, :size, :size] = True
    masks[1, :size, -size:] = True
    masks[2, -size:, :size] = True
    masks[3, -size:, -size:] = True
    return masks


def add_decoys(
    images: Tensor, shade_digits: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Paint a decoy square of shade `decoy_shade(shade_digits)` in a random corner of each image.

    `images` is [N, C, H, W] in [0, 1] (H == W); returns the painted copy and the masks
    [N, H, W] (bool). The corners are drawn from `generator`.
    """
    n, _, height, width = images.shape
    if height != width:
        raise ValueError(f"decoy images must be square, got {height}x{width}")
    corners = torch.randint(0, 4, (n,), generator=generator)
    masks = corner_masks(height)[corners]
    shades = decoy_shade(shade_digits).view(n, 1, 1, 1).to(images.dtype)
    painted = torch.where(masks[:, None], shades, images)
    return painted, masks


def _decoy_split(
    images: Tensor, labels: Tensor, generator: torch.Generator, *, random_shade: bool
) -> ShortcutDataset:
    if random_shade:
        shade_digits = torch.randint(0, 10, (len(labels),), generator=generator)
    else:
        shade_digits = labels
    painted, masks = add_decoys(images, shade_digits, generator)
    groups = labels * 2 + (shade_digits == labels).long()
    return ShortcutDataset(painted, labels, groups, masks)


def build_decoy_splits(
    name: str,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    generator: torch.Generator,
    options: dict,
) -> DatasetSplits:
    """Decoyed train/val (shade of the label) and test (shade of a random digit) splits.

    Each split is ``(images [N, 1, H, W] in [0, 1], labels [N] int64)`` with digits 0-9.
    """
    splits = [
        _decoy_split(images, labels.long(), generator, random_shade=name_ == "test")
        for name_, (images, labels) in (("train", train), ("val", val), ("test", test))
    ]
    class_names = tuple(str(d) for d in range(10))
    group_names = tuple(
        f"{digit}/decoy-{kind}" for digit in class_names for kind in ("random", "matches")
    )
    return describe_splits(
        *splits,
        name=name,
        class_names=class_names,
        task=TASK,
        group_names=group_names,
        options=options,
    )
