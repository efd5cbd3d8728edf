"""A sample's files on disk: sharded folders, atomic writes, lazy reads.

Sample `i` lives in `samples/<i // 1000>/`, so 100,000 samples make 100 folders of at most
1,000 samples each. Its files carry a generation number (`000000042.g0.overlay.png`, `.npz`
for the arrays): a re-critiqued sample gets new files next to the old ones, and the database
row, committed last, says which generation is current. Every file is written to a temporary
name, flushed and renamed, so a reader never sees half a file, and a crash leaves at worst
unreferenced files of a generation no row points to (`CritiqueRun.add` overwrites them).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from lvlmva.errors import DataError
from lvlmva.runs.records import ARRAY_NAMES, IMAGE_NAMES, SampleArrays

SHARD_SIZE = 1000
SAMPLES_DIR = "samples"


def shard_dir(root: Path, index: int) -> Path:
    return root / SAMPLES_DIR / f"{index // SHARD_SIZE:06d}"


def image_path(root: Path, index: int, generation: int, name: str) -> Path:
    return shard_dir(root, index) / f"{index:09d}.g{generation}.{name}.png"


def arrays_path(root: Path, index: int, generation: int) -> Path:
    return shard_dir(root, index) / f"{index:09d}.g{generation}.npz"


def write_atomic(path: Path, data: bytes, *, sync: bool) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_sample_files(
    root: Path, index: int, generation: int, arrays: SampleArrays, *, sync: bool
) -> list[str]:
    """Write the images and arrays of one sample; returns the names stored."""
    folder = shard_dir(root, index)
    folder.mkdir(parents=True, exist_ok=True)
    stored = []
    for name in IMAGE_NAMES:
        if name in arrays.images:
            write_atomic(image_path(root, index, generation, name), arrays.images[name], sync=sync)
            stored.append(name)
    present = {n: getattr(arrays, n) for n in ARRAY_NAMES if getattr(arrays, n) is not None}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **present)
    write_atomic(arrays_path(root, index, generation), buffer.getvalue(), sync=sync)
    stored.extend(present)
    if sync:
        _sync_dir(folder)
    return stored


def remove_generation(root: Path, index: int, generation: int) -> None:
    """Delete the files of one generation of a sample (those that exist)."""
    for name in IMAGE_NAMES:
        image_path(root, index, generation, name).unlink(missing_ok=True)
    arrays_path(root, index, generation).unlink(missing_ok=True)


class StoredArrays:
    """The stored files of one sample, read on first access (`labels`, `responsibilities`,
    `attribution`, `mask` as numpy arrays or None; `image(name)` as PNG bytes)."""

    def __init__(self, root: Path, index: int, generation: int, names: list[str]) -> None:
        self.index = index
        self.generation = generation
        self._root = root
        self._generation = generation
        self._names = frozenset(names)
        self._cache: dict[str, np.ndarray | None] = {}

    @property
    def names(self) -> frozenset[str]:
        """The images and arrays this sample has."""
        return self._names

    def image_path(self, name: str) -> Path:
        if name not in IMAGE_NAMES or name not in self._names:
            raise DataError(f"sample {self.index} has no image {name!r}")
        return image_path(self._root, self.index, self._generation, name)

    def image(self, name: str) -> bytes:
        return self.image_path(name).read_bytes()

    def _array(self, name: str) -> np.ndarray | None:
        if name not in self._cache:
            if name not in self._names:
                self._cache[name] = None
            else:
                path = arrays_path(self._root, self.index, self._generation)
                with np.load(path) as archive:
                    self._cache[name] = archive[name]
        return self._cache[name]

    @property
    def labels(self) -> np.ndarray:
        labels = self._array("labels")
        if labels is None:
            raise DataError(f"sample {self.index} has no cluster labels stored")
        return labels

    @property
    def responsibilities(self) -> np.ndarray | None:
        return self._array("responsibilities")

    @property
    def attribution(self) -> np.ndarray | None:
        return self._array("attribution")

    @property
    def mask(self) -> np.ndarray | None:
        return self._array("mask")
