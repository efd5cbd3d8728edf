"""The ground truth a simulated LVLM served over HTTP (`lvlmva serve-sim`) answers from: each
image's spurious mask, keyed by the SHA-256 of the original PNG exactly as the pipeline renders
it for the Critic (`lvlmva.simulation.oracle`).

In-process runs tell the simulation each mask as the job is sent (`CriticSession.register_truth`);
a separate server cannot be told, so it gets the whole dataset's masks up front.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lvlmva.errors import DataError
from lvlmva.vision.datasets.base import DatasetSplits, ShortcutDataset

__all__ = ["dataset_oracle", "oracle_items", "write_dataset_oracle"]


def oracle_items(split: ShortcutDataset) -> Iterator[tuple[bytes, np.ndarray]]:
    """(original PNG as the Critic receives it, spurious mask [H, W] bool) of every image."""
    from lvlmva.vision.render import original_png

    if split.spurious_masks is None:
        raise DataError(
            "this dataset has no ground-truth spurious masks, so the simulated critic has "
            "nothing to answer from; use a real LVLM (--critic openai or litellm)"
        )
    for image, mask in zip(split.images, split.spurious_masks, strict=True):
        yield original_png(image), mask.bool().numpy()


def _splits(dataset: DatasetSplits, names: Iterable[str]) -> Iterator[ShortcutDataset]:
    for name in names:
        split = getattr(dataset, name)
        if len(split):
            yield split


def dataset_oracle(dataset: DatasetSplits, splits: Iterable[str] = ("train", "val", "test")):
    """A `DictOracle` with the masks of every image of `splits`."""
    from lvlmva.simulation import DictOracle

    oracle = DictOracle()
    for split in _splits(dataset, splits):
        for png, mask in oracle_items(split):
            oracle.add(png, mask)
    return oracle


def write_dataset_oracle(
    folder: str | Path, dataset: DatasetSplits, splits: Iterable[str] = ("train", "val", "test")
) -> int:
    """Write the masks of every image of `splits` as `<sha256>.npy` files into `folder` (for
    `lvlmva serve-sim --oracle-dir`); returns how many."""
    from lvlmva.simulation import write_oracle

    return sum(write_oracle(folder, oracle_items(s)) for s in _splits(dataset, splits))
