"""Datasets: the decoy construction, the MNIST IDX reader, image folders / CSVs, the registry."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lvlmva.errors import ConfigError, DataError
from lvlmva.vision.datasets import DATASETS, load_dataset
from lvlmva.vision.datasets.decoy import corner_masks, decoy_shade
from lvlmva.vision.datasets.digits import TEST_COPIES, TRAIN_COPIES, augment, layout
from lvlmva.vision.datasets.mnist_idx import FILES, read_idx

REAL_MNIST = Path("/work/shared/data")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("decoy-digits", seed=0)


def _check_decoys(split, *, size: int = 4) -> torch.Tensor:
    """Every mask is one 4x4 square touching a corner, painted in one shade; returns the
    digit each square's shade encodes."""
    masks = split.spurious_masks
    assert masks.dtype == torch.bool and masks.shape == (len(split), *split.images.shape[-2:])
    assert (masks.sum(dim=(1, 2)) == size * size).all()
    corners = corner_masks(split.images.shape[-1], size)
    matches = (masks[:, None] == corners[None]).flatten(2).all(dim=2)
    assert (matches.sum(dim=1) == 1).all()  # exactly one corner, touching the border
    shades = split.images[:, 0][masks].view(len(split), -1)
    assert (shades == shades[:, :1]).all()
    digits = torch.round((255.0 - shades[:, 0] * 255.0) / 25.0).long()
    assert torch.allclose(decoy_shade(digits), shades[:, 0])
    return digits


def test_decoy_digits_shapes_splits_and_range(digits):
    info = digits.info
    assert (info.name, info.task, info.channels, info.image_size) == (
        "decoy-digits",
        "decoy-digits",
        1,
        28,
    )
    assert info.class_names == tuple("0123456789") and info.num_classes == 10
    # 1,078 / 359 / 360 source digits; augmented copies of each training and test digit
    sizes = [len(digits.train), len(digits.val), len(digits.test)]
    assert sizes == [1078 * TRAIN_COPIES, 359, 360 * TEST_COPIES]
    assert sizes[0] // TRAIN_COPIES + sizes[1] + sizes[2] // TEST_COPIES == 1797
    for split in (digits.train, digits.val, digits.test):
        assert split.images.shape[1:] == (1, 28, 28) and split.images.dtype == torch.float32
        assert split.images.min() >= 0 and split.images.max() <= 1
        assert split.labels.dtype == torch.long
        assert torch.bincount(split.labels, minlength=10).min() > 0.05 * len(split)


def test_decoy_shade_encodes_the_label_in_train_and_val_only(digits):
    for split in (digits.train, digits.val):
        assert torch.equal(_check_decoys(split), split.labels)
        assert torch.equal(split.groups, split.labels * 2 + 1)
    shade_digits = _check_decoys(digits.test)
    assert (shade_digits != digits.test.labels).float().mean() > 0.7  # random digits
    assert torch.equal(
        digits.test.groups, digits.test.labels * 2 + (shade_digits == digits.test.labels)
    )
    names = digits.info.group_names
    assert len(names) == 20 and names[7] == "3/decoy-matches" and names[6] == "3/decoy-random"
    # the four corners are all used
    corners = corner_masks(28)
    used = {
        int(i)
        for m in digits.train.spurious_masks[:200]
        for i in range(4)
        if torch.equal(m, corners[i])
    }
    assert used == {0, 1, 2, 3}


def test_decoy_digits_training_copies_are_augmented_with_their_own_corners(digits):
    n = len(digits.train) // TRAIN_COPIES
    labels = digits.train.labels.view(TRAIN_COPIES, n)
    assert (labels == labels[:1]).all()  # copy c of digit i is at c * n + i
    images = digits.train.images.view(TRAIN_COPIES, n, 28, 28)
    masks = digits.train.spurious_masks.view(TRAIN_COPIES, n, 28, 28)
    outside = ~(masks[0] | masks[1])
    diff = ((images[0] - images[1]).abs() * outside).flatten(1).amax(dim=1)
    assert (diff > 0.05).float().mean() > 0.95  # copies differ (rotated / shifted)
    same_corner = (masks[0] == masks[1]).flatten(1).all(dim=1).float().mean()
    assert 0.1 < same_corner < 0.45  # corners drawn independently (1/4 expected)
    # val and test are single copies of distinct source digits: no two images are equal
    for split in (digits.val, digits.test):
        flat = split.images.flatten(1)
        assert len(torch.unique(flat, dim=0)) == len(split)


def test_decoy_digits_layout_and_augmentation():
    ones = torch.ones(1, 1, 8, 8)
    placed = layout(ones)
    assert placed.shape == (1, 1, 28, 28)
    box = torch.zeros(28, 28, dtype=torch.bool)
    box[4:24, 4:24] = True  # a 20 px box, centred
    assert torch.allclose(placed[0, 0], box.float(), atol=1e-5)
    generator = torch.Generator().manual_seed(0)
    moved = augment(placed.repeat(64, 1, 1, 1), generator)
    assert moved.shape == (64, 1, 28, 28) and moved.min() >= 0 and moved.max() <= 1
    # rotated / shifted by at most 15 degrees / 3 px: the centre stays inside the digit box,
    # the 4x4 corners (where the decoys go) stay nearly empty
    assert moved[:, 0, 11:17, 11:17].gt(0.99).all()
    assert moved[:, 0][corner_masks(28).any(dim=0).expand(64, 28, 28)].mean() < 0.05
    mass = moved[:, 0].sum(dim=1)  # column profiles: shifts differ between images
    assert len(torch.unique(mass.argmax(dim=1))) > 1 or not torch.allclose(mass[0], mass[1])
    no_change = augment(placed, generator, max_rotation_deg=0.0, max_shift_px=0.0)
    assert torch.allclose(no_change, placed, atol=1e-5)


def test_decoy_digits_is_seeded_and_rebuilds_from_its_options(digits):
    again = load_dataset(digits.info.name, **digits.info.options)
    assert torch.equal(again.train.images, digits.train.images)
    assert torch.equal(again.train.spurious_masks, digits.train.spurious_masks)
    assert torch.equal(again.test.images, digits.test.images)
    assert torch.equal(again.test.groups, digits.test.groups)
    other = load_dataset("decoy-digits", seed=1)
    assert not torch.equal(other.train.labels, digits.train.labels)
    assert digits.info.options == {"seed": 0}


def test_mean_and_std_come_from_the_train_split(digits):
    images = digits.train.images
    assert digits.info.mean[0] == pytest.approx(float(images.mean()), abs=1e-5)
    assert digits.info.std[0] == pytest.approx(float(images.std()), abs=1e-5)


def test_unknown_dataset_and_option_are_config_errors():
    with pytest.raises(ConfigError, match="decoy-mnist") as exc:
        load_dataset("fashion")
    assert "fashion" in str(exc.value) and "decoy-digits" in str(exc.value)
    with pytest.raises(ConfigError, match=r"does not take option.*colour"):
        load_dataset("decoy-digits", colour=True)
    assert {"decoy-mnist", "decoy-digits", "image-folder"} <= set(DATASETS)


# --- MNIST IDX ------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _fake_mnist(folder: Path, n_train: int = 30, n_test: int = 10, size: int = 12) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = {
        "train_images": rng.integers(0, 256, (n_train, size, size)),
        "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(0, 256, (n_test, size, size)),
        "test_labels": (np.arange(n_test) * 3) % 10,
    }
    for key, array in data.items():
        _write_idx(folder / FILES[key], array, 2051 if "images" in key else 2049)
    return data


def test_idx_reader_round_trips(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    _write_idx(tmp_path / "x.gz", array, 2051)
    assert np.array_equal(read_idx(tmp_path / "x.gz", 2051), array)
    with pytest.raises(DataError, match="magic number 0x00000803, expected 0x00000801"):
        read_idx(tmp_path / "x.gz", 2049)


def test_decoy_mnist_from_idx_files(tmp_path):
    data = _fake_mnist(tmp_path / "mnist")
    splits = load_dataset("decoy-mnist", data_dir=tmp_path, seed=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 10)
    assert splits.info.image_size == 12 and splits.info.options == {"seed": 3}
    assert torch.equal(splits.test.labels, torch.as_tensor(data["test_labels"]))
    # images outside the decoy square are the file's bytes / 255
    expected = torch.as_tensor(data["test_images"], dtype=torch.float32) / 255
    outside = ~splits.test.spurious_masks
    assert torch.allclose(splits.test.images[:, 0][outside], expected[outside])
    assert torch.equal(_check_decoys(splits.train), splits.train.labels)
    _check_decoys(splits.test)
    # train + val are a permutation of the training file
    train_val = torch.cat([splits.train.labels, splits.val.labels]).sort().values
    assert torch.equal(train_val, torch.as_tensor(data["train_labels"]).sort().values)


def test_decoy_mnist_data_dir_from_env_or_flat_folder(tmp_path, monkeypatch):
    _fake_mnist(tmp_path)  # files directly in the folder, no mnist/ sub-folder
    monkeypatch.setenv("LVLMVA_DATA_DIR", str(tmp_path))
    assert len(load_dataset("decoy-mnist").test) == 10


def test_missing_mnist_files_name_the_files_and_the_remedies(tmp_path, monkeypatch):
    monkeypatch.delenv("LVLMVA_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("decoy-mnist")
    _fake_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / FILES["test_labels"]).unlink()
    with pytest.raises(DataError) as exc:
        load_dataset("decoy-mnist", data_dir=tmp_path)
    message = str(exc.value)
    assert FILES["test_labels"] in message and FILES["train_images"] not in message
    assert str(tmp_path / "mnist") in message and "download=True" in message
    assert "\n" not in message


def test_corrupt_mnist_files_are_data_errors(tmp_path):
    folder = tmp_path / "mnist"
    _fake_mnist(folder)
    (folder / FILES["train_images"]).write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read IDX file"):
        load_dataset("decoy-mnist", data_dir=tmp_path)
    _fake_mnist(folder)
    _write_idx(folder / FILES["train_labels"], np.zeros(29), 2049)
    with pytest.raises(DataError, match="29 labels but"):
        load_dataset("decoy-mnist", data_dir=tmp_path)
    _fake_mnist(folder)
    with gzip.open(folder / FILES["test_images"], "wb") as handle:
        handle.write((2051).to_bytes(4, "big") + b"\x00\x00\x00\x05" + bytes(8) + bytes(3))
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("decoy-mnist", data_dir=tmp_path)


def test_download_option_uses_torchvision_only_when_asked(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeMNIST:
        def __init__(self, root, download):
            calls.append((root, download))
            self.raw_folder = str(Path(root) / "MNIST" / "raw")
            _fake_mnist(Path(self.raw_folder))

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    with pytest.raises(DataError):
        load_dataset("decoy-mnist", data_dir=tmp_path)
    assert calls == []
    splits = load_dataset("decoy-mnist", data_dir=tmp_path, download=True)
    assert calls == [(str(tmp_path), True)] and len(splits.test) == 10
    assert all((tmp_path / "mnist" / name).is_file() for name in FILES.values())
    assert "download" not in splits.info.options


@pytest.mark.skipif(not (REAL_MNIST / "mnist").is_dir(), reason="real MNIST not on this machine")
def test_real_mnist_loads_with_the_reference_split():
    splits = load_dataset("decoy-mnist", data_dir=REAL_MNIST, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (48000, 12000, 10000)
    assert splits.test.labels[:3].tolist() == [7, 2, 1]  # the first t10k labels
    assert torch.equal(splits.train.groups % 2, torch.ones(48000, dtype=torch.long))


# --- image folders and CSVs -----------------------------------------------------------------


def _png(path: Path, size=(10, 8), mode="RGB", value=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    channels = {"RGB": 3, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    if value is not None:
        array[:] = value
    Image.fromarray(array[..., 0] if channels == 1 else array, mode).save(path)
    return path


def test_class_folders(tmp_path):
    for cls, n in (("cat", 4), ("dog", 3)):
        for i in range(n):
            _png(tmp_path / cls / f"{i}.png")
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    splits = load_dataset("image-folder", data_dir=tmp_path, image_size=16, seed=1)
    info = splits.info
    assert info.class_names == ("cat", "dog") and info.channels == 3 and info.image_size == 16
    assert sum(len(s) for s in (splits.train, splits.val, splits.test)) == 7
    assert splits.train.images.shape[1:] == (3, 16, 16)
    assert splits.train.groups is None and splits.train.spurious_masks is None
    assert info.options["root"] == str(tmp_path.resolve()) and info.options["channels"] == 3
    again = load_dataset(info.name, **info.options)
    assert torch.equal(again.train.images, splits.train.images)
    grey = load_dataset("image-folder", data_dir=tmp_path, image_size=16, channels=1)
    assert grey.info.channels == 1 and grey.train.images.shape[1] == 1


def test_grey_images_default_to_one_channel_and_16_bit_is_scaled(tmp_path):
    _png(tmp_path / "a" / "0.png", mode="L", value=255)
    _png(tmp_path / "a" / "1.png", mode="L", value=0)
    (tmp_path / "b").mkdir()
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "b" / "0.png")
    splits = load_dataset("image-folder", data_dir=tmp_path, image_size=8, seed=0)
    assert splits.info.channels == 1
    full = torch.cat([splits.train.images, splits.val.images, splits.test.images])
    labels = torch.cat([splits.train.labels, splits.val.labels, splits.test.labels])
    assert torch.allclose(full[labels == 1], torch.ones(1))  # the 16-bit white image is 1.0


def test_csv_with_groups_masks_and_splits(tmp_path):
    rows = ["path,label,group,mask_path,split"]
    for i in range(6):
        label = "benign" if i % 2 else "malignant"
        _png(tmp_path / "img" / f"{i}.png", size=(12, 12))
        mask = ""
        if i < 3:
            array = np.zeros((12, 12), dtype=np.uint8)
            array[:6, :6] = 200
            Image.fromarray(array, "L").save(tmp_path / "img" / f"{i}_mask.png")
            mask = f"img/{i}_mask.png"
        split = ("train", "train", "train", "val", "test", "test")[i]
        rows.append(f"img/{i}.png,{label},{label}/{'bandage' if i < 3 else 'none'},{mask},{split}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    splits = load_dataset("image-folder", csv=str(tmp_path / "data.csv"), image_size=8)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 1, 2)
    assert splits.info.class_names == ("benign", "malignant")
    assert splits.info.group_names == (
        "benign/bandage",
        "benign/none",
        "malignant/bandage",
        "malignant/none",
    )
    assert splits.train.labels.tolist() == [1, 0, 1] and splits.train.groups.tolist() == [2, 0, 2]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:4, :4] = True
    assert all(torch.equal(m, expected) for m in splits.train.spurious_masks)
    assert not splits.test.spurious_masks.any()
    assert splits.info.options["csv"] == str((tmp_path / "data.csv").resolve())
    # a relative CSV path is looked up in data_dir
    again = load_dataset("image-folder", data_dir=tmp_path, csv="data.csv", image_size=8)
    assert torch.equal(again.val.images, splits.val.images)


def test_csv_without_split_column_is_split_70_15_15(tmp_path):
    rows = ["path,label"] + [f"{i}.png,{i % 2}" for i in range(20)]
    for i in range(20):
        _png(tmp_path / f"{i}.png", mode="L")
    (tmp_path / "x.csv").write_text("\n".join(rows))
    splits = load_dataset("image-folder", csv=tmp_path / "x.csv", image_size=8, seed=2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (14, 3, 3)
    assert splits.info.class_names == ("0", "1")


def _one_line_data_error(match: str, **kwargs) -> None:
    with pytest.raises(DataError, match=match) as exc:
        load_dataset("image-folder", **kwargs)
    assert "\n" not in str(exc.value)


def test_image_folder_errors(tmp_path):
    _one_line_data_error("does not exist", data_dir=tmp_path / "nowhere")
    _one_line_data_error("needs --data-dir")
    (tmp_path / "root" / "empty").mkdir(parents=True)
    _png(tmp_path / "root" / "full" / "0.png")
    _one_line_data_error("class folder .*empty has no images", data_dir=tmp_path / "root")
    (tmp_path / "root" / "empty" / "0.png").write_bytes(b"garbage")
    _one_line_data_error(r"cannot read image .*0\.png", data_dir=tmp_path / "root")

    _png(tmp_path / "a.png")
    csv = tmp_path / "bad.csv"
    csv.write_text("path,label,colour\na.png,x,red\n")
    _one_line_data_error("unknown columns colour", csv=csv)
    csv.write_text("path,label\na.png,x\nm1.png,y\nm2.png,y\nm3.png,y\nm4.png,y\n")
    _one_line_data_error("4 missing file.*m1.png.*m3.png and 1 more", csv=csv)
    csv.write_text("path,label,split\na.png,x,train\na.png,y,holdout\n")
    _one_line_data_error("split 'holdout'", csv=csv)
    csv.write_text("path,label\na.png,x\n")
    _one_line_data_error("need at least 2", csv=csv)
    _one_line_data_error("CSV file .* does not exist", csv=tmp_path / "none.csv")
    _png(tmp_path / "m.png", size=(5, 5), mode="L")
    csv.write_text("path,label,mask_path\na.png,x,m.png\na.png,y,\n")
    _one_line_data_error("mask .*m.png is 5x5 px but image", csv=csv)
    with pytest.raises(ConfigError, match="channels"):
        load_dataset("image-folder", csv=csv, channels=2)
