"""Test-time corruptions: monotone in severity, shapes kept, accuracy drops computed right."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lvlmva.errors import ConfigError
from lvlmva.vision.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    corrupt,
    corruption_accuracy,
    disk_kernel,
)
from lvlmva.vision.datasets.base import ShortcutDataset
from lvlmva.vision.datasets.synth_lesions import load_synth_lesions


@pytest.fixture(scope="module")
def images():
    return load_synth_lesions(seed=0, n_train=8, n_val=2, n_test=2).train.images


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_distance_from_clean_grows_with_severity(kind, images):
    distances = [float((corrupt(images, kind, s) - images).abs().mean()) for s in SEVERITIES]
    assert distances[0] > 1e-3
    assert all(b > a for a, b in itertools.pairwise(distances)), distances


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_shape_range_and_input_kept(kind, images):
    before = images.clone()
    out = corrupt(images, kind, 3)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(images, before)


def test_each_kind_does_what_it_says(images):
    grey = images.mean()
    assert corrupt(images, "gamma", 3).mean() < grey  # darker mid-tones
    assert corrupt(images, "contrast", 3).std() < images.std()
    assert corrupt(images, "contrast", 3).mean() == pytest.approx(float(grey), abs=2e-3)
    # blur smooths: neighbouring pixels differ less
    blurred = corrupt(images, "defocus", 3)
    assert (blurred.diff(dim=-1).abs().mean()) < 0.6 * images.diff(dim=-1).abs().mean()
    flat = torch.full((2, 3, 40, 40), 0.3)
    assert torch.allclose(corrupt(flat, "defocus", 5), flat, atol=1e-6)


def test_disk_kernel():
    for radius in (0.75, 1.5, 3.0):
        k = disk_kernel(radius)
        assert k.sum() == pytest.approx(1.0)
        assert torch.allclose(k, k.flip(0)) and torch.allclose(k, k.T)
    assert disk_kernel(3.0)[3, 3] < disk_kernel(1.0)[1, 1]


def test_bad_arguments(images):
    with pytest.raises(ConfigError, match="unknown corruption"):
        corrupt(images, "fog", 1)
    with pytest.raises(ConfigError, match="severity"):
        corrupt(images, "gamma", 6)


class Brightness(nn.Module):
    """Class 1 when the mean grey value is above 0.5."""

    def forward(self, x):
        score = x.mean(dim=(1, 2, 3)) - 0.5
        return torch.stack([-score, score], dim=1)


def test_accuracy_drop_matches_a_direct_count():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(30, 1, 8, 8, generator=gen) * 0.5 + torch.linspace(0.1, 0.45, 30).view(
        30, 1, 1, 1
    )
    labels = (images.mean(dim=(1, 2, 3)) > 0.5).long()
    data = ShortcutDataset(images, labels)
    model = Brightness()
    result = corruption_accuracy(model, data, batch_size=7)
    assert result.clean_accuracy == 1.0
    for kind in CORRUPTIONS:
        for s in SEVERITIES:
            expected = float((model(corrupt(images, kind, s)).argmax(1) == labels).float().mean())
            assert result.accuracy[kind][s] == pytest.approx(expected)
    drops = corruption_accuracy(model, data, kinds=("gamma",), severities=(1, 5)).drop
    assert set(drops) == {"gamma"} and set(drops["gamma"]) == {1, 5}
    assert drops["gamma"][5] >= drops["gamma"][1] > 0  # gamma darkens bright images below 0.5
    assert drops["gamma"][5] == result.clean_accuracy - result.accuracy["gamma"][5]
    assert result.to_dict()["mean_drop"]["gamma"] == pytest.approx(
        sum(result.drop["gamma"].values()) / 5
    )
