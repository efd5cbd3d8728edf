"""`decoy-mnist`: MNIST read from its original gzipped IDX files, with Ross et al.'s decoys.

The four files live in ``<data_dir>/mnist/`` (or directly in ``<data_dir>``), where `data_dir`
is the argument or the environment variable ``LVLMVA_DATA_DIR``. The training file is split
(seeded) into 80% train / 20% validation (48,000 / 12,000); the test file gives the test split.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lvlmva.errors import DataError
from lvlmva.vision.datasets.base import DatasetSplits
from lvlmva.vision.datasets.decoy import build_decoy_splits

ENV_DATA_DIR = "LVLMVA_DATA_DIR"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049  # 0x00000803 (ubyte, 3 dims), 0x00000801 (1 dim)
VAL_FRACTION = 0.2


def read_idx(path: Path, magic: int | None = None) -> np.ndarray:
    """An IDX file (gzipped or not) of unsigned bytes as a numpy array of its declared shape.

    `magic` is the expected magic number (2051 for MNIST images, 2049 for labels)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4:
        raise DataError(f"{path} is not an IDX file: only {len(data)} bytes")
    zero, dtype_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    found = int.from_bytes(data[:4], "big")
    if zero != 0 or dtype_code != 0x08 or ndim == 0 or (magic is not None and found != magic):
        wanted = "" if magic is None else f", expected {magic:#010x}"
        raise DataError(
            f"{path} is not an IDX file of unsigned bytes of the right kind (magic number "
            f"{found:#010x}{wanted}); use the original MNIST files"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: its header needs {header} bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(
            f"{path} holds {len(data) - header} data bytes but its header declares shape "
            f"{shape} ({expected} bytes); the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read_images(path: Path) -> Tensor:
    array = read_idx(path, _IMAGES_MAGIC)
    if array.ndim != 3 or array.shape[1] != array.shape[2]:
        raise DataError(f"{path}: expected square images [N, H, W], got shape {array.shape}")
    return torch.from_numpy(array.copy()).unsqueeze(1).float().div_(255.0)


def _read_labels(path: Path, n_images: int, images_path: Path) -> Tensor:
    array = read_idx(path, _LABELS_MAGIC)
    if array.ndim != 1:
        raise DataError(f"{path}: expected a 1-d label file, got shape {array.shape}")
    if len(array) != n_images:
        raise DataError(f"{path} has {len(array)} labels but {images_path} has {n_images} images")
    if array.max(initial=0) > 9:
        raise DataError(f"{path}: labels must be digits 0-9, found {int(array.max())}")
    return torch.from_numpy(array.astype(np.int64))


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """`data_dir`, else ``$LVLMVA_DATA_DIR``; DataError if neither is set."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_DATA_DIR) or None
    if data_dir is None:
        raise DataError(
            "decoy-mnist needs the MNIST IDX files: pass --data-dir DIR (data_dir=...) or set "
            f"{ENV_DATA_DIR} to a folder holding mnist/ with {', '.join(FILES.values())}"
        )
    return Path(data_dir).expanduser()


def find_mnist_folder(data_dir: Path) -> Path:
    """``data_dir/mnist`` if it holds the files, else `data_dir` itself if it does."""
    for folder in (data_dir / "mnist", data_dir):
        if all((folder / name).is_file() for name in FILES.values()):
            return folder
    folder = data_dir / "mnist"
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    raise DataError(
        f"MNIST files missing in {folder}: {', '.join(missing)}; put the four IDX gz files "
        f"there (--data-dir / {ENV_DATA_DIR} name the folder holding mnist/), or when online "
        "load with download=True (torchvision's MNIST(root, download=True) fetches them)"
    )


def download_mnist(data_dir: Path) -> Path:
    """Fetch the IDX files with torchvision into ``data_dir/mnist`` (needs network access)."""
    from torchvision.datasets import MNIST

    folder = data_dir / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        dataset = MNIST(root=str(data_dir), download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(f"cannot download MNIST into {data_dir}: {exc}") from exc
    raw = Path(dataset.raw_folder)
    for name in FILES.values():
        target = folder / name
        if not target.is_file():
            source = raw / name
            if not source.is_file():
                raise DataError(f"torchvision's MNIST download did not produce {source}")
            shutil.copyfile(source, target)
    return folder


def load_decoy_mnist(
    *, data_dir: str | os.PathLike | None = None, seed: int = 0, download: bool = False
) -> DatasetSplits:
    """DecoyMNIST: 48,000 train / 12,000 val (seeded split of the training file), 10,000 test."""
    root = resolve_data_dir(data_dir)
    if download:
        try:
            folder = find_mnist_folder(root)
        except DataError:
            folder = download_mnist(root)
    else:
        folder = find_mnist_folder(root)
    train_images = _read_images(folder / FILES["train_images"])
    train_labels = _read_labels(
        folder / FILES["train_labels"], len(train_images), folder / FILES["train_images"]
    )
    test_images = _read_images(folder / FILES["test_images"])
    test_labels = _read_labels(
        folder / FILES["test_labels"], len(test_images), folder / FILES["test_images"]
    )
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"MNIST training images are {tuple(train_images.shape[2:])} px but test images are "
            f"{tuple(test_images.shape[2:])} px in {folder}"
        )
    if len(train_images) < 2:
        raise DataError(f"{folder / FILES['train_images']} holds fewer than 2 images")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_images), generator=generator)
    n_val = max(1, round(len(order) * VAL_FRACTION))
    train_idx, val_idx = order[n_val:], order[:n_val]
    return build_decoy_splits(
        "decoy-mnist",
        (train_images[train_idx], train_labels[train_idx]),
        (train_images[val_idx], train_labels[val_idx]),
        (test_images, test_labels),
        generator=generator,
        options={"seed": seed},
    )
