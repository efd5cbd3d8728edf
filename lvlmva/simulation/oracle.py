"""Where the simulated LVLM gets its "knowledge": the ground-truth spurious region of an image.

An oracle maps the SHA-256 of an ORIGINAL image's PNG bytes (exactly the bytes sent as the
first image of a Critic request) to a boolean mask [H, W] of that image's spurious region, at
any resolution (the simulator resizes it, nearest neighbour, to the cluster map). An image the
oracle does not know is treated as having no spurious region.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from threading import Lock
from typing import Protocol, runtime_checkable

import numpy as np

from lvlmva.errors import ConfigError, DataError

__all__ = ["DictOracle", "DirectoryOracle", "MaskOracle", "image_key", "write_oracle"]

_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")


def image_key(png_bytes: bytes) -> str:
    """The oracle key of an image: the SHA-256 (hex) of its PNG bytes."""
    return hashlib.sha256(png_bytes).hexdigest()


def _as_mask(mask: object, where: str) -> np.ndarray:
    array = np.asarray(mask.numpy() if hasattr(mask, "numpy") else mask)  # torch tensors too
    if array.ndim != 2 or min(array.shape) < 1:
        raise DataError(f"{where}: a spurious mask must be 2-D [H, W], got shape {array.shape}")
    return array.astype(bool, copy=False)


def _key(key: str | bytes) -> str:
    key = image_key(key) if isinstance(key, bytes) else key.lower()
    if not _HEX64.match(key):
        raise DataError(
            f"oracle key {key[:80]!r} is not a SHA-256 hex digest; pass the PNG bytes or "
            "their sha256 hex"
        )
    return key


@runtime_checkable
class MaskOracle(Protocol):
    """Ground-truth spurious masks, keyed by the SHA-256 of the original image's PNG bytes."""

    def lookup(self, image_sha256: str) -> np.ndarray | None: ...


class DictOracle:
    """An in-memory oracle; `add` masks while a run is going (thread-safe)."""

    def __init__(self, masks: Mapping[str | bytes, object] | None = None) -> None:
        self._masks: dict[str, np.ndarray] = {}
        self._lock = Lock()
        for key, mask in (masks or {}).items():
            self.add(key, mask)

    def add(self, key: str | bytes, mask: object) -> None:
        """Record `mask` for the image with SHA-256 `key` (or for the PNG bytes `key`)."""
        k = _key(key)
        array = _as_mask(mask, f"mask for image {k[:12]}")
        with self._lock:
            self._masks[k] = array

    def lookup(self, image_sha256: str) -> np.ndarray | None:
        return self._masks.get(image_sha256.lower())

    def __len__(self) -> int:
        return len(self._masks)

    def __contains__(self, image_sha256: object) -> bool:
        return isinstance(image_sha256, str) and image_sha256.lower() in self._masks


class DirectoryOracle:
    """Masks stored as `<sha256>.npy` files in a folder (see `write_oracle`), loaded on demand
    and kept in a small LRU cache."""

    def __init__(self, path: str | Path, *, cache_size: int = 4096) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ConfigError(
                f"oracle folder {self.path} does not exist; write one with "
                "lvlmva.simulation.write_oracle(path, items)"
            )
        self._cache: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = Lock()

    def lookup(self, image_sha256: str) -> np.ndarray | None:
        key = image_sha256.lower()
        if not _HEX64.match(key):
            return None
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        file = self.path / f"{key}.npy"
        mask = None
        if file.is_file():
            try:
                mask = _as_mask(np.load(file, allow_pickle=False), str(file))
            except (OSError, ValueError) as exc:
                raise DataError(f"oracle file {file} cannot be read: {exc}") from None
        with self._lock:
            self._cache[key] = mask
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return mask

    def __len__(self) -> int:
        return sum(1 for _ in self.path.glob("*.npy"))


def write_oracle(path: str | Path, items: Iterable[tuple[str | bytes, object]]) -> int:
    """Write `(original PNG bytes or their sha256, mask [H, W])` pairs as `<sha256>.npy` files
    in folder `path` (created if needed), each atomically. Returns the number written."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for key, mask in items:
        k = _key(key)
        array = _as_mask(mask, f"mask for image {k[:12]}")
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{k[:12]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(tmp, folder / f"{k}.npy")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        count += 1
    return count
