"""`decoy-digits`: scikit-learn's embedded 8x8 digits, upscaled to 28x28, with decoys.

The default dataset: it needs no download. The 1,797 images (16 grey levels) are scaled to
[0, 1], upscaled bilinearly to 28x28 and clipped to [0, 1], then split (seeded) 60% train /
20% validation / 20% test before the decoys of `decoy.py` are painted.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from lvlmva.vision.datasets.base import DatasetSplits
from lvlmva.vision.datasets.decoy import build_decoy_splits

IMAGE_SIZE = 28
FRACTIONS = (0.6, 0.2, 0.2)  # train, val, test


def load_decoy_digits(*, data_dir: str | os.PathLike | None = None, seed: int = 0) -> DatasetSplits:
    """The decoy construction on `sklearn.datasets.load_digits` (`data_dir` is not used)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
    images = images.clamp_(0.0, 1.0)
    labels = torch.as_tensor(digits.target, dtype=torch.long)

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    n_train = round(len(order) * FRACTIONS[0])
    n_val = round(len(order) * FRACTIONS[1])
    parts = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    train, val, test = ((images[idx], labels[idx]) for idx in parts)
    return build_decoy_splits(
        "decoy-digits", train, val, test, generator=generator, options={"seed": seed}
    )
