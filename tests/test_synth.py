"""The synthetic shortcut benchmarks: shapes, determinism, shortcut rates, masks."""

from __future__ import annotations

import pytest
import torch

from lvlmva.errors import ConfigError
from lvlmva.vision.datasets import load_dataset
from lvlmva.vision.datasets.synth_knee import load_synth_knee
from lvlmva.vision.datasets.synth_lesions import (
    _BANDAGE_COLOURS,
    load_synth_lesions,
    rounded_box_sdf,
)

SMALL = {"n_train": 40, "n_val": 20, "n_test": 20}


@pytest.fixture(scope="module")
def lesions():
    return load_synth_lesions(seed=3, n_train=200, n_val=20, n_test=100)


@pytest.fixture(scope="module")
def knees():
    return load_synth_knee(seed=3, n_train=200, n_val=20, n_test=100)


@pytest.mark.parametrize(
    "loader, channels", [(load_synth_lesions, 3), (load_synth_knee, 1)], ids=["lesions", "knee"]
)
def test_shapes_and_ranges(loader, channels):
    splits = loader(seed=0, image_size=32, **SMALL)
    assert splits.info.channels == channels and splits.info.image_size == 32
    assert splits.info.group_names is not None and len(splits.info.group_names) == 4
    for split, n in ((splits.train, 40), (splits.val, 20), (splits.test, 20)):
        assert split.images.shape == (n, channels, 32, 32)
        assert split.images.dtype == torch.float32
        assert float(split.images.min()) >= 0.0 and float(split.images.max()) <= 1.0
        assert split.spurious_masks.shape == (n, 32, 32)
        assert split.spurious_masks.dtype == torch.bool
        assert torch.bincount(split.labels, minlength=2).tolist() == [n // 2, n // 2]
        # the group is class x attribute: its upper bit is the label
        assert torch.equal(split.groups // 2, split.labels)
    assert len(splits.info.mean) == len(splits.info.std) == channels


@pytest.mark.parametrize("loader", [load_synth_lesions, load_synth_knee], ids=["lesions", "knee"])
def test_seeded_and_deterministic(loader):
    a, b, c = loader(seed=1, **SMALL), loader(seed=1, **SMALL), loader(seed=2, **SMALL)
    assert torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.test.spurious_masks, b.test.spurious_masks)
    assert torch.equal(a.val.groups, b.val.groups)
    assert not torch.equal(a.train.images, c.train.images)
    assert not torch.equal(a.train.images[:20], a.test.images)  # splits are independent draws


def _attribute_rate(split, label):
    groups = split.groups[split.labels == label]
    return float((groups % 2 == 1).float().mean())


def test_lesion_bandage_rates_train_vs_test(lesions):
    assert _attribute_rate(lesions.train, 0) == pytest.approx(0.9)  # benign with bandage
    assert _attribute_rate(lesions.train, 1) == pytest.approx(0.1)
    for split in (lesions.val, lesions.test):
        assert _attribute_rate(split, 0) == pytest.approx(0.5)
        assert _attribute_rate(split, 1) == pytest.approx(0.5)


def test_knee_marker_rates_train_vs_test(knees):
    assert _attribute_rate(knees.train, 0) == pytest.approx(0.02)  # healthy marked "R"
    assert _attribute_rate(knees.train, 1) == pytest.approx(0.98)
    assert _attribute_rate(knees.test, 0) == pytest.approx(0.5)
    assert _attribute_rate(knees.test, 1) == pytest.approx(0.5)


def test_rates_are_options():
    splits = load_synth_lesions(seed=0, bandage_rate=(0.5, 0.5), **SMALL)
    assert _attribute_rate(splits.train, 0) == pytest.approx(0.5)
    assert splits.info.options["bandage_rate"] == [0.5, 0.5]


def test_lesion_masks_cover_the_bandage(lesions):
    split = lesions.train
    has = split.groups % 2 == 1
    areas = split.spurious_masks.flatten(1).sum(1)
    assert (areas[~has] == 0).all()
    assert (areas[has] > 120).all() and (areas[has] < 600).all()
    palette = torch.tensor(_BANDAGE_COLOURS)
    for i in torch.nonzero(has).flatten()[:40].tolist():
        inside = split.images[i][:, split.spurious_masks[i]]  # [3, P]
        median = inside.median(dim=1).values
        # the bandage's tape colour (or its lighter pad) dominates the masked pixels
        tape = torch.cdist(median[None], palette).min()
        pad = torch.cdist(median[None], palette + 0.55 * (1 - palette)).min()
        assert min(tape, pad) < 0.15, (i, median)
        # and the lesion (dark, at the centre) is not under the mask
        assert not split.spurious_masks[i, 30:34, 30:34].any()


def test_knee_masks_cover_the_letter(knees):
    split = knees.train
    masks, images = split.spurious_masks, split.images[:, 0]
    assert (masks.flatten(1).sum(1) > 0).all()
    # no bone reaches the outer columns: every bright pixel there is a letter pixel
    edge = torch.zeros(64, dtype=torch.bool)
    edge[:8] = edge[56:] = True
    bright = (images > 0.8) & edge[None, None, :]
    assert bright.any()
    assert not (bright & ~masks).any()
    # the letter is drawn bright inside its (dilated) mask
    assert float((images[masks] > 0.8).float().mean()) > 0.3
    # "R" has more ink than "L": the mask area tells the two groups apart
    areas = masks.flatten(1).sum(1)
    right = split.groups % 2 == 1
    assert areas[right].min() > areas[~right].max()


def test_knee_gap_narrows_with_osteoarthritis(knees):
    # the joint gap is dark: a vertical profile through the centre has fewer dark rows with OA
    images = knees.test.images[:, 0, :, 28:36].mean(dim=2)  # [N, H]
    middle = images[:, 16:48]
    dark_rows = (middle < 0.3).sum(dim=1).float()
    healthy = dark_rows[knees.test.labels == 0].mean()
    oa = dark_rows[knees.test.labels == 1].mean()
    assert healthy > oa + 1.0


def test_lesions_larger_when_malignant(lesions):
    # lesion pixels are much darker than skin; malignant lesions cover more of them
    grey = lesions.test.images.mean(dim=1)
    dark = (grey < 0.45).flatten(1).sum(1).float()
    assert dark[lesions.test.labels == 1].mean() > 1.3 * dark[lesions.test.labels == 0].mean()


def test_registry_and_options_rebuild_the_data():
    a = load_dataset("synth-knee", seed=4, **SMALL)
    b = load_dataset(a.info.name, **a.info.options)
    assert torch.equal(a.train.images, b.train.images)
    assert a.info.task == "knee-radiographs"
    c = load_dataset("synth-lesions", seed=4, **SMALL)
    assert c.info.task == "skin-lesions" and c.info.class_names == ("benign", "malignant")


@pytest.mark.parametrize(
    "options, match",
    [
        ({"image_size": 16}, "image_size"),
        ({"n_train": 1}, "n_train"),
        ({"bandage_rate": (0.9,)}, "bandage_rate"),
        ({"bandage_rate": (1.5, 0.1)}, "bandage_rate"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ConfigError, match=match):
        load_synth_lesions(**{**SMALL, **options})


def test_rounded_box_sdf_signs():
    u = torch.tensor([0.0, 4.9, 5.1, 0.0])
    v = torch.tensor([0.0, 0.0, 0.0, 2.5])
    d = rounded_box_sdf(u, v, torch.tensor(5.0), torch.tensor(2.0), torch.tensor(1.0))
    assert d[0] < 0 and d[1] < 0 and d[2] > 0 and d[3] > 0
    assert float(d[0]) == pytest.approx(-2.0)
