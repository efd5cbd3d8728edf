"""`image-folder`: a user's own images, as class sub-folders or listed in a CSV file.

Folder layout: ``<root>/<class name>/<image>`` (classes sorted by name; no groups or masks).
CSV layout (option ``csv=PATH``): columns ``path,label`` and optionally ``group`` (the sample's
group name, e.g. class x spurious attribute), ``mask_path`` (a mask image whose non-zero pixels
are spurious; empty = no spurious pixels) and ``split`` (train / val / test). Paths are relative
to the CSV's folder. Without a ``split`` column the samples are split 70/15/15 (seeded).

Images (8-bit or 16-bit grey, RGB, palette...) are converted to `channels` (1 or 3; by default
1 if every image is grey, else 3) and resized to `image_size` x `image_size` (bilinear; masks
nearest-neighbour).
"""

from __future__ import annotations

import csv as csv_module
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lvlmva.errors import ConfigError, DataError
from lvlmva.vision.datasets.base import DatasetSplits, ShortcutDataset, describe_splits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("group", "mask_path", "split")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F")


@dataclass(frozen=True)
class ImageRecord:
    """One sample before loading: where its image (and mask) is and what it is."""

    path: Path
    label: str
    group: str | None = None
    mask_path: Path | None = None
    split: str | None = None


def _shown(items: Sequence[object], limit: int = 3) -> str:
    text = ", ".join(str(item) for item in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def scan_class_folders(root: Path) -> list[ImageRecord]:
    """One record per image file in each sub-folder of `root` (the sub-folder is the label)."""
    if not root.is_dir():
        raise DataError(
            f"image folder {root} does not exist; pass --data-dir DIR holding one sub-folder "
            "per class, or --csv FILE listing path,label"
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"image folder {root} has no class sub-folders (one per class expected)")
    records = []
    for folder in folders:
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DataError(
                f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}); "
                "add images or remove the folder"
            )
        records += [ImageRecord(path, folder.name) for path in files]
    return records


def read_csv(path: Path) -> tuple[list[ImageRecord], tuple[str, ...]]:
    """Records from a CSV with columns path,label[,group][,mask_path][,split], and its columns."""
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv_module.DictReader(handle)
            columns = tuple((name or "").strip() for name in reader.fieldnames or ())
            rows = [
                {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv_module.Error) as exc:
        raise DataError(f"cannot read CSV file {path}: {exc}") from exc
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise DataError(
            f"CSV {path} has unknown columns {_shown(unknown)}; allowed: "
            f"{', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}"
        )
    missing_columns = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing_columns:
        raise DataError(f"CSV {path} lacks the column(s) {', '.join(missing_columns)}")
    if not rows:
        raise DataError(f"CSV {path} lists no images")
    base = path.parent
    records = []
    for line, row in enumerate(rows, start=2):
        if not row.get("path") or not row.get("label"):
            raise DataError(f"CSV {path} line {line}: path and label must not be empty")
        if "group" in columns and not row.get("group"):
            raise DataError(f"CSV {path} line {line}: the group column is empty")
        split = row.get("split", "").lower() or None
        if "split" in columns and split not in SPLITS:
            raise DataError(
                f"CSV {path} line {line}: split {row.get('split')!r} is not one of "
                f"{', '.join(SPLITS)}"
            )
        mask = row.get("mask_path") or None
        records.append(
            ImageRecord(
                path=base / row["path"],
                label=row["label"],
                group=row.get("group") or None,
                mask_path=None if mask is None else base / mask,
                split=split,
            )
        )
    missing = [str(r.path) for r in records if not r.path.is_file()]
    missing += [str(r.mask_path) for r in records if r.mask_path and not r.mask_path.is_file()]
    if missing:
        raise DataError(f"CSV {path} names {len(missing)} missing file(s): {_shown(missing)}")
    return records, columns


def _sorted_names(values: set[str]) -> tuple[str, ...]:
    """Names in numeric order if they are all integers, else in text order."""
    try:
        return tuple(sorted(values, key=int))
    except ValueError:
        return tuple(sorted(values))


def _open(path: Path, what: str):
    """The decoded PIL image at `path`; DataError if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy() if image.mode != "P" else image.convert("RGBA")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from exc


def _probe_mode(path: Path) -> str:
    """The mode of the image at `path`, read from its header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.mode
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def _to_array(image, channels: int, size: int) -> np.ndarray:
    """A PIL image as float32 [channels, size, size] in [0, 1]."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16L", "I;16B", "F"):
        scale = 1.0 if image.mode == "F" else 65535.0
        grey = image.convert("F").resize((size, size), Image.Resampling.BILINEAR)
        array = np.clip(np.asarray(grey, dtype=np.float32) / scale, 0.0, 1.0)[None]
        return np.repeat(array, channels, axis=0)
    mode = "L" if channels == 1 else "RGB"
    resized = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _mask_array(mask, record: ImageRecord, image_size: tuple[int, int], size: int) -> np.ndarray:
    """A mask image as bool [size, size]: True where it is non-zero (spurious)."""
    from PIL import Image

    if mask.size != image_size:
        raise DataError(
            f"mask {record.mask_path} is {mask.size[0]}x{mask.size[1]} px but image "
            f"{record.path} is "
            f"{image_size[0]}x{image_size[1]} px; masks must match their images"
        )
    grey = mask.convert("F") if mask.mode in ("I", "I;16", "I;16L", "I;16B") else mask
    if grey.mode not in ("F", "L"):
        grey = grey.convert("L")
    resized = grey.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(resized) > 0


def _split_indices(records: list[ImageRecord], seed: int) -> list[torch.Tensor]:
    if records[0].split is not None:
        return [
            torch.tensor([i for i, r in enumerate(records) if r.split == s], dtype=torch.long)
            for s in SPLITS
        ]
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))
    n_train = max(1, round(len(order) * SPLIT_FRACTIONS[0]))
    n_val = round(len(order) * SPLIT_FRACTIONS[1])
    return [order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]]


def load_image_folder(
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    csv: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    image_size: int = 64,
    channels: int | None = None,
    task: str = "image-folder",
) -> DatasetSplits:
    """Load user images; `data_dir` (or `root`) is the class-folder root, `csv` a CSV file.

    A relative `csv` is looked up in `data_dir` first, then in the working directory.
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"image_size must be an integer of at least 8, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels!r}")
    records, columns, source = find_records(data_dir if data_dir is not None else root, csv)
    class_names = _sorted_names({r.label for r in records})
    if len(class_names) < 2:
        raise DataError(f"image-folder found only the class {class_names[0]!r}; need at least 2")
    if channels is None:
        grey = all(_probe_mode(r.path) in _GREY_MODES for r in records)
        channels = 1 if grey else 3
    images, masks = read_images(records, channels, image_size)
    class_index = {name: i for i, name in enumerate(class_names)}
    labels = torch.tensor([class_index[r.label] for r in records], dtype=torch.long)
    group_names = groups = None
    if "group" in columns:
        group_names = _sorted_names({r.group for r in records if r.group is not None})
        group_index = {name: i for i, name in enumerate(group_names)}
        groups = torch.tensor([group_index[r.group] for r in records], dtype=torch.long)
    full = ShortcutDataset(images, labels, groups, masks if "mask_path" in columns else None)
    train, val, test = (full.subset(idx) for idx in _split_indices(records, seed))
    if len(train) == 0:
        raise DataError("image-folder: the train split is empty; mark some CSV rows split=train")
    return describe_splits(
        train,
        val,
        test,
        name="image-folder",
        class_names=class_names,
        task=task,
        group_names=group_names,
        options={
            "seed": seed,
            "image_size": image_size,
            "task": task,
            **source,
            "channels": channels,
        },
    )


def find_records(
    folder: str | os.PathLike | None, csv: str | os.PathLike | None
) -> tuple[list[ImageRecord], tuple[str, ...], dict[str, str]]:
    """The records listed by `csv` (a relative path is looked up in `folder` first) or else
    found in the class folders under `folder`; their columns; the option naming the source
    (``{"csv": ...}`` or ``{"root": ...}``, resolved)."""
    if csv is not None:
        csv_path = Path(csv).expanduser()
        if (
            not csv_path.is_absolute()
            and folder is not None
            and (Path(folder) / csv_path).is_file()
        ):
            csv_path = Path(folder) / csv_path
        csv_path = csv_path.resolve()
        records, columns = read_csv(csv_path)
        return records, columns, {"csv": str(csv_path)}
    if folder is not None:
        root_path = Path(folder).expanduser().resolve()
        return scan_class_folders(root_path), ("path", "label"), {"root": str(root_path)}
    raise DataError(
        "image-folder needs --data-dir DIR (one sub-folder per class) or --csv FILE "
        "(columns path,label[,group][,mask_path][,split])"
    )


def read_images(
    records: Sequence[ImageRecord], channels: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, channels, size, size] in [0, 1] and spurious masks [N, size, size] (bool; all
    False for a record without a mask) of `records`."""
    arrays, mask_arrays = [], []
    for record in records:
        image = _open(record.path, "image")
        arrays.append(_to_array(image, channels, size))
        if record.mask_path is not None:
            mask = _open(record.mask_path, "mask")
            mask_arrays.append(_mask_array(mask, record, image.size, size))
        else:
            mask_arrays.append(np.zeros((size, size), dtype=bool))
    return torch.from_numpy(np.stack(arrays)), torch.from_numpy(np.stack(mask_arrays))
