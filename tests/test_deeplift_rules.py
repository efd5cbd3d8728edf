"""DeepLift's ReLU and max-pool rules as autograd functions: captum's maps where captum is
right, summation-to-delta where it is not, and the plain model outside the rules."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from lvlmva.vision.attribution import draw_backgrounds, explain
from lvlmva.vision.deeplift_rules import RescaleMaxPool2d, RescaleReLU, deeplift_rules, rule_view
from lvlmva.vision.deeplift_safety import make_deeplift_safe


def _stem(pool: nn.Module) -> nn.Module:
    """A ResNet-like stem (convolution, batch norm, ReLU, `pool`), a basic block, a head."""
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        pool,
        BasicBlock(8, 8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
    return make_deeplift_safe(model).eval()


def _sum_to_delta_error(model, maps, images, targets, backgrounds) -> float:
    with torch.no_grad():
        score = model(images).gather(1, targets[:, None])[:, 0]
        reference = model(backgrounds)[:, targets].mean(0)
    delta = score - reference
    return float((maps.flatten(1).sum(1) - delta).abs().max() / delta.abs().max())


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(2)
    return (
        torch.rand(6, 3, 12, 12, generator=g),
        torch.tensor([0, 1, 2, 0, 1, 2]),
        torch.rand(30, 3, 12, 12, generator=g),
    )


@pytest.mark.parametrize(
    "pool", [nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d(2)], ids=["overlapping", "2x2"]
)
def test_maps_sum_to_the_output_difference_through_relu_and_max_pool(pool, data):
    images, targets, train = data
    model = _stem(pool)
    maps = explain(model, images, targets, baselines=train, n_baselines=8, seed=1)
    backgrounds = draw_backgrounds(train, 8, images.shape[1:], seed=1)
    assert _sum_to_delta_error(model, maps, images, targets, backgrounds) < 1e-5


@pytest.mark.filterwarnings("ignore:Setting forward, backward hooks")
def test_without_max_pool_the_maps_are_captums(data):
    from captum.attr import DeepLiftShap

    images, targets, train = data
    model = _stem(nn.Identity())
    backgrounds = draw_backgrounds(train, 8, images.shape[1:], seed=1)
    expected = DeepLiftShap(model).attribute(images, baselines=backgrounds, target=targets)
    maps = explain(model, images, targets, baselines=train, n_baselines=8, seed=1)
    assert torch.allclose(maps, expected, rtol=1e-4, atol=1e-7)


def test_the_view_shares_the_weights_and_is_the_plain_model_outside_the_rules(data):
    images, _, _ = data
    model = _stem(nn.MaxPool2d(3, stride=2, padding=1))
    view = rule_view(model)
    kinds = [type(m) for m in view.modules()]
    assert RescaleReLU in kinds and RescaleMaxPool2d in kinds
    assert nn.ReLU not in kinds and nn.MaxPool2d not in kinds
    assert RescaleReLU not in [type(m) for m in model.modules()]  # the model is untouched
    assert all(a is b for a, b in zip(model.parameters(), view.parameters(), strict=True))
    x = images.clone().requires_grad_()
    y = images.clone().requires_grad_()
    with torch.no_grad():
        assert torch.equal(model(images), view(images))
    (g_model,) = torch.autograd.grad(model(x).sum(), x)
    (g_view,) = torch.autograd.grad(view(y).sum(), y)
    assert torch.equal(g_model, g_view)


def test_the_rules_want_inputs_then_as_many_references():
    with deeplift_rules(), pytest.raises(RuntimeError, match="as many references"):
        RescaleReLU()(torch.rand(3, 4))
