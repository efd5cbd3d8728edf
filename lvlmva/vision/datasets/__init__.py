"""Dataset registry: `load_dataset(name, ...)` builds seeded train/val/test splits by name.

`DATASETS` maps each name to its loader, a function called as
``loader(data_dir=..., seed=..., **options) -> DatasetSplits``. To add a dataset, add an entry
(a function, or a ``LazyLoader("module", "function")`` so its module is imported on first use).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

from lvlmva.errors import ConfigError
from lvlmva.vision.datasets.base import DatasetInfo, DatasetSplits, ShortcutDataset

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetSplits",
    "LazyLoader",
    "ShortcutDataset",
    "load_dataset",
]


@dataclass(frozen=True)
class LazyLoader:
    """A loader named by module and function, imported when first needed."""

    module: str
    function: str

    def resolve(self) -> Callable[..., DatasetSplits]:
        return getattr(importlib.import_module(self.module), self.function)

    def __call__(self, **kwargs) -> DatasetSplits:
        return self.resolve()(**kwargs)


DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "decoy-digits": LazyLoader("lvlmva.vision.datasets.digits", "load_decoy_digits"),
    "decoy-mnist": LazyLoader("lvlmva.vision.datasets.mnist_idx", "load_decoy_mnist"),
    "image-folder": LazyLoader("lvlmva.vision.datasets.image_folder", "load_image_folder"),
    "synth-lesions": LazyLoader("lvlmva.vision.datasets.synth_lesions", "load_synth_lesions"),
    "synth-knee": LazyLoader("lvlmva.vision.datasets.synth_knee", "load_synth_knee"),
}


def _check_options(name: str, loader: Callable[..., DatasetSplits], options: dict) -> None:
    parameters = inspect.signature(loader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [p for p in parameters if p not in ("data_dir", "seed")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise ConfigError(
            f"dataset {name} does not take option(s) {', '.join(unknown)}; it takes: {takes}"
        )


def load_dataset(
    name: str, *, data_dir: str | os.PathLike | None = None, seed: int = 0, **options
) -> DatasetSplits:
    """Build dataset `name` (one of `DATASETS`) with seeded splits.

    `data_dir` is where its files are (if it has any); `options` are the dataset's own keyword
    arguments (e.g. ``csv=``, ``image_size=`` for image-folder). The returned
    ``info.options`` rebuild the same data: ``load_dataset(info.name, **info.options)``.
    """
    entry = DATASETS.get(name)
    if entry is None:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    try:
        loader = entry.resolve() if isinstance(entry, LazyLoader) else entry
    except ImportError as exc:
        raise ConfigError(f"dataset {name} is not available in this installation: {exc}") from exc
    _check_options(name, loader, options)
    return loader(data_dir=data_dir, seed=seed, **options)
