"""Attribution maps: shapes, seeding, DeepLift's summation-to-delta, model safety."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lvlmva.errors import ConfigError, DataError
from lvlmva.vision.attribution import (
    ATTRIBUTION_METHODS,
    METHODS,
    AttributionMethod,
    Explainer,
    draw_backgrounds,
    explain,
    image_keys,
)
from lvlmva.vision.deeplift_safety import find_reused_modules

SHAPE = (1, 6, 6)


def _mlp(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(36, 12),
        nn.ReLU(),
        nn.Linear(12, 8),
        nn.ReLU(),
        nn.Linear(8, classes),
    )


class ReusedReLU(nn.Module):
    """One ReLU module applied twice: not DeepLift-safe."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(36, 10), nn.Linear(10, 10), nn.Linear(10, 3)
        self.relu = nn.ReLU()

    def forward(self, x):
        h = self.relu(self.fc1(x.flatten(1)))
        return self.out(self.relu(self.fc2(h)))


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(7, *SHAPE, generator=g)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 1])
    train = torch.rand(40, *SHAPE, generator=g)
    return images, targets, train


def _delta(model, images, targets, backgrounds):
    with torch.no_grad():
        out = model(images).gather(1, targets[:, None])[:, 0]
        ref = model(backgrounds)[:, targets].mean(dim=0)
    return out - ref


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_cpu_maps_of_the_input_shape(method, data):
    images, targets, train = data
    maps = explain(_mlp(), images, targets, method=method, baselines=train, n_baselines=5)
    assert maps.shape == images.shape
    assert maps.device.type == "cpu" and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.abs().sum() > 0


@pytest.mark.parametrize("method", METHODS)
def test_a_seed_gives_the_same_maps(method, data):
    images, targets, train = data
    first = explain(_mlp(), images, targets, method=method, baselines=train, seed=3)
    again = explain(_mlp(), images, targets, method=method, baselines=train, seed=3)
    assert torch.equal(first, again)


def test_other_seeds_draw_other_backgrounds(data):
    images, targets, train = data
    a = explain(_mlp(), images, targets, baselines=train, n_baselines=5, seed=0)
    b = explain(_mlp(), images, targets, baselines=train, n_baselines=5, seed=1)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_no_method_depends_on_the_batch_size(method, data):
    images, targets, train = data
    kwargs = {"method": method, "baselines": train, "seed": 2}
    automatic = explain(_mlp(), images, targets, **kwargs)
    for batch_size in (1, 3, 64):
        explicit = explain(_mlp(), images, targets, batch_size=batch_size, **kwargs)
        assert torch.allclose(automatic, explicit, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_no_method_depends_on_a_samples_place_in_the_batch(method, data):
    """Permuting a batch permutes its maps, and one Explainer gives an image the same map in
    any call: gradient-shap's draws are the image's own, not its position's. Exactly so with
    one image per pass (the same arithmetic); to rounding with the automatic plan."""
    images, targets, train = data
    order = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    for batch_size in (None, 1):
        kwargs = {"method": method, "baselines": train, "seed": 2, "batch_size": batch_size}
        maps = explain(_mlp(), images, targets, **kwargs)
        permuted = explain(_mlp(), images[order], targets[order], **kwargs)
        assert torch.allclose(permuted, maps[order], rtol=1e-5, atol=1e-8)
        assert batch_size is None or torch.equal(permuted, maps[order])
    explainer = Explainer(_mlp(), method, baselines=train, seed=2)
    explainer.samples_per_forward = explainer.samples_per_image
    parts = [explainer.attribute(images[i : i + 3], targets[i : i + 3]) for i in (4, 0)]
    assert torch.equal(torch.cat(parts), maps[[4, 5, 6, 0, 1, 2]])


@pytest.mark.parametrize("method", METHODS)
def test_the_explainer_leaves_the_model_on_its_device(method):
    model = _mlp()
    explainer = Explainer(model, method, sample_shape=SHAPE, device="meta")
    assert next(model.parameters()).device.type == "cpu"
    assert next(explainer.model.parameters()).device.type == "meta"
    assert Explainer(model, method, sample_shape=SHAPE).model is model or method == "deeplift-shap"


def _convnet() -> nn.Module:
    """Convolutions, batch norm (with running statistics), ReLUs: the layers whose DeepLift
    rules see the pairs of a batch. No max-pool, where captum's own maps are wrong (see
    tests/test_deeplift_rules.py)."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(36, 3),
    )
    model[1].running_mean.uniform_(-0.2, 0.2)
    model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.filterwarnings("ignore:Setting forward, backward hooks")
@pytest.mark.parametrize("samples_per_forward", [None, 2, 6, 14, 50, 4096])
def test_deeplift_shap_equals_captums_at_every_batch_size(samples_per_forward, data):
    """Split within an image's backgrounds (2, 6, 14 samples = 1, 3, 7 of its 10 pairs), one
    image per pass (50 is 2.5 images) or all at once: captum's DeepLiftShap maps."""
    from captum.attr import DeepLiftShap

    images, targets, train = data
    model = _convnet()
    backgrounds = draw_backgrounds(train, 10, SHAPE, seed=4)
    expected = DeepLiftShap(model).attribute(images, baselines=backgrounds, target=targets)
    explainer = Explainer(
        model, baselines=train, n_baselines=10, seed=4, samples_per_forward=samples_per_forward
    )
    assert torch.allclose(explainer.attribute(images, targets), expected, rtol=1e-5, atol=1e-8)


def test_gradient_shap_is_captums_for_each_image_alone(data):
    import numpy as np
    from captum.attr import GradientShap

    images, targets, train = data
    model = _convnet()
    maps = Explainer(model, "gradient-shap", baselines=train, n_baselines=8, seed=6).attribute(
        images, targets
    )
    backgrounds = draw_backgrounds(train, 8, SHAPE, seed=6)
    state = np.random.get_state()
    for j in range(len(images)):
        np.random.seed([6, image_keys(images[j : j + 1])[0]])  # gradient_shap_draws' seed
        alone = GradientShap(model).attribute(
            images[j : j + 1], backgrounds, target=int(targets[j]), n_samples=8, stdevs=0.0
        )
        assert torch.allclose(maps[j], alone[0], rtol=1e-5, atol=1e-8)
    np.random.set_state(state)


def test_backgrounds_are_a_seeded_draw_without_replacement(data):
    _, _, train = data
    drawn = draw_backgrounds(train, 25, train.shape[1:], seed=4)
    assert drawn.shape == (25, *SHAPE)
    rows = {tuple(x.flatten().tolist()) for x in drawn}
    assert len(rows) == 25 and rows <= {tuple(x.flatten().tolist()) for x in train}
    assert len(draw_backgrounds(train[:3], 25, train.shape[1:], seed=4)) == 3
    assert torch.equal(draw_backgrounds(None, 25, train.shape[1:], seed=0), torch.zeros(1, *SHAPE))


@pytest.mark.parametrize("linear", [True, False])
def test_deeplift_shap_sums_to_the_output_difference(linear, data):
    images, targets, train = data
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)) if linear else _mlp(seed=2)
    maps = explain(model, images, targets, baselines=train, n_baselines=10, seed=5)
    backgrounds = draw_backgrounds(train, 10, train.shape[1:], seed=5)
    expected = _delta(model, images, targets, backgrounds)
    assert torch.allclose(maps.flatten(1).sum(dim=1), expected, atol=1e-4)


def test_linear_deeplift_is_input_minus_baseline_times_weight(data):
    images, targets, train = data
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    maps = explain(model, images, targets, baselines=train, n_baselines=10, seed=5)
    mean_bg = draw_backgrounds(train, 10, train.shape[1:], seed=5).mean(dim=0)
    weights = model[1].weight.detach()[targets].reshape(-1, *SHAPE)
    assert torch.allclose(maps, (images - mean_bg) * weights, atol=1e-5)


def test_integrated_gradients_starts_from_a_black_image(data):
    images, targets, _ = data
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    maps = explain(model, images, targets, method="integrated-gradients")
    expected = _delta(model, images, targets, torch.zeros(1, *SHAPE))
    assert torch.allclose(maps.flatten(1).sum(dim=1), expected, atol=1e-4)


def test_the_model_keeps_its_mode_parameters_and_no_gradients(data):
    images, targets, train = data
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(36, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3)
    )
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    maps = explain(model, images, targets, baselines=train, n_baselines=4)
    again = explain(model, images, targets, baselines=train, n_baselines=4)
    assert model.training
    assert torch.equal(maps, again)  # dropout was off: explained in eval mode
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_reused_relu_is_found():
    assert find_reused_modules(ReusedReLU(), torch.rand(1, *SHAPE)) == ["relu"]
    assert find_reused_modules(_mlp(), torch.rand(1, *SHAPE)) == []


def test_a_reused_relu_is_rejected_or_fixed(data):
    images, targets, train = data
    torch.manual_seed(0)
    model = ReusedReLU()
    try:
        maps = explain(model, images, targets, baselines=train, n_baselines=6)
    except ConfigError as exc:
        assert "make_deeplift_safe" in str(exc) and "relu" in str(exc)
    else:  # make_deeplift_safe fixed a copy: the maps must then be exact DeepLift maps
        backgrounds = draw_backgrounds(train, 6, train.shape[1:], seed=0)
        expected = _delta(model, images, targets, backgrounds)
        assert torch.allclose(maps.flatten(1).sum(dim=1), expected, atol=1e-4)
    # the other methods do not care
    assert explain(model, images, targets, method="gradient-shap", baselines=train).shape == (
        images.shape
    )


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_the_method_table_is_the_list_of_methods_and_one_entry_adds_one(data, monkeypatch):
    assert tuple(ATTRIBUTION_METHODS) == METHODS
    assert METHODS == ("deeplift-shap", "integrated-gradients", "gradient-shap")
    assert [ATTRIBUTION_METHODS[m].deeplift for m in METHODS] == [True, False, False]
    images, targets, _ = data
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    saliency = AttributionMethod("Saliency", False, lambda inputs, backgrounds, n: {"abs": False})
    monkeypatch.setitem(ATTRIBUTION_METHODS, "saliency", saliency)
    maps = Explainer(model, "saliency", sample_shape=SHAPE).attribute(images, targets)
    weights = model[1].weight.detach()[targets].reshape(-1, *SHAPE)
    assert torch.allclose(maps, weights)  # the gradient of a linear model is its weights


def test_unknown_method_lists_the_known_ones(data):
    images, targets, train = data
    with pytest.raises(ConfigError, match="deeplift-shap, integrated-gradients, gradient-shap"):
        explain(_mlp(), images, targets, method="lime", baselines=train)


def test_bad_inputs_are_named(data):
    images, targets, train = data
    with pytest.raises(DataError, match=r"\[N, C, H, W\]"):
        explain(_mlp(), images[0], targets[:1], baselines=train)
    with pytest.raises(DataError, match="6 targets for 7 images"):
        explain(_mlp(), images, targets[:6], baselines=train)
    with pytest.raises(DataError, match="baselines"):
        explain(_mlp(), images, targets, baselines=torch.rand(5, 1, 4, 4))
    with pytest.raises(DataError, match="class indices"):
        explain(_mlp(), images, targets + 5, baselines=train)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_maps(data):
    images, targets, train = data
    cpu = explain(_mlp(), images, targets, baselines=train)
    gpu = explain(_mlp(), images, targets, baselines=train, device="cuda")
    assert gpu.device.type == "cpu"
    assert torch.allclose(cpu, gpu, atol=1e-4)


def test_gradient_shap_leaves_numpy_global_generator_as_it_was(data):
    import numpy as np

    images, targets, train = data
    np.random.seed(11)
    expected = np.random.rand()
    np.random.seed(11)
    explain(_mlp(), images, targets, method="gradient-shap", baselines=train)
    assert np.random.rand() == expected
