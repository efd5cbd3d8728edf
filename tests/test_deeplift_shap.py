"""RescaleDeepLiftShap: the maps of captum's DeepLift with our rules (and of captum's
DeepLiftShap where its rules are right) from the inputs' passes alone, at every batch size."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from lvlmva.vision import deeplift_rules
from lvlmva.vision.attribution import Explainer, draw_backgrounds, mean_over_pairs
from lvlmva.vision.deeplift_rules import (
    covers_every_nonlinearity,
    paired_rules,
    reference_activations,
    rule_view,
)
from lvlmva.vision.deeplift_safety import make_deeplift_safe
from lvlmva.vision.deeplift_shap import RescaleDeepLiftShap

pytestmark = pytest.mark.filterwarnings("ignore:Setting forward, backward hooks")


def _resnet_like(pool: nn.Module, head: nn.Module | None = None) -> nn.Module:
    """A stem (convolution, batch norm, ReLU, `pool`), a basic block, a head."""
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        pool,
        BasicBlock(8, 8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        head or nn.Identity(),
        nn.Linear(8, 3),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
    return rule_view(make_deeplift_safe(model)).eval()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(3)
    images = torch.rand(5, 3, 10, 10, generator=g)
    backgrounds = torch.rand(7, 3, 10, 10, generator=g)
    # identical regions (|x - r| < eps: the rules' fallback) and an image among the backgrounds
    backgrounds[:, :, :4] = images[0, :, :4]
    backgrounds[3] = images[2]
    return images, torch.tensor([0, 1, 2, 1, 0]), backgrounds


def _with_captums_deeplift(view, images, targets, backgrounds) -> torch.Tensor:
    """captum's DeepLift on every (image, background) pair, the rules on, averaged."""
    from captum.attr import DeepLift

    method = DeepLift(view)

    def pairs(i, j):
        return method.attribute(
            images[i].requires_grad_(), backgrounds[j].requires_grad_(), target=targets[i]
        )

    with deeplift_rules.deeplift_rules():
        return mean_over_pairs(pairs, len(images), len(backgrounds), 1000, images.device)


@pytest.mark.parametrize("pairs_per_pass", [None, 1, 3, 7, 15, 100])
@pytest.mark.parametrize(
    "pool", [nn.MaxPool2d(3, stride=2, padding=1), nn.Identity()], ids=["max-pool", "none"]
)
def test_the_maps_are_those_of_captums_deeplift_with_the_rules(pool, pairs_per_pass, data):
    """Chunks of the backgrounds (1, 3 of 7), whole images (7, 15 = 2 images) or all at once."""
    images, targets, backgrounds = data
    view = _resnet_like(pool)
    expected = _with_captums_deeplift(view, images, targets, backgrounds)
    lean = RescaleDeepLiftShap(view, pairs_per_pass=pairs_per_pass)
    maps = lean.attribute(images, backgrounds, targets)
    assert torch.allclose(maps, expected, rtol=1e-5, atol=1e-7)


def test_without_max_pool_the_maps_are_captums_deeplift_shap(data):
    from captum.attr import DeepLiftShap

    images, targets, backgrounds = data
    view = _resnet_like(nn.Identity())
    plain = _resnet_like(nn.Identity())  # captum hooks the plain modules
    for module in plain.modules():  # undo the rule view: captum's own rules
        for name, child in module.named_children():
            if isinstance(child, deeplift_rules.RescaleReLU):
                setattr(module, name, nn.ReLU())
    expected = DeepLiftShap(plain).attribute(images, baselines=backgrounds, target=targets)
    maps = RescaleDeepLiftShap(view, pairs_per_pass=10).attribute(images, backgrounds, targets)
    assert torch.allclose(maps, expected, rtol=1e-5, atol=1e-7)


def test_the_gpu_branch_always_applying_the_fallback_gives_the_same_maps(data, monkeypatch):
    images, targets, backgrounds = data
    view = _resnet_like(nn.MaxPool2d(3, stride=2, padding=1))
    checked = RescaleDeepLiftShap(view).attribute(images, backgrounds, targets)
    monkeypatch.setattr(deeplift_rules, "_needs_fallback", lambda small: True)
    always = RescaleDeepLiftShap(view).attribute(images, backgrounds, targets)
    assert torch.equal(checked, always)


def test_one_target_for_all_and_a_model_with_one_score(data):
    images, _, backgrounds = data
    view = _resnet_like(nn.Identity())
    lean = RescaleDeepLiftShap(view)
    one = lean.attribute(images, backgrounds, 2)
    assert torch.equal(one, lean.attribute(images, backgrounds, torch.full((5,), 2)))
    scalar = rule_view(nn.Sequential(view, nn.Linear(3, 1))).eval()
    assert RescaleDeepLiftShap(scalar).attribute(images, backgrounds).shape == images.shape
    with pytest.raises(ValueError, match="name a target"):
        lean.attribute(images, backgrounds)


def test_other_nonlinearities_go_to_captum_with_the_same_results(data):
    """A Sigmoid (hooked by captum, no rule of ours): not covered, so the Explainer uses
    captum's DeepLift with the rules on the ReLUs."""
    from captum.attr import DeepLiftShap

    images, targets, backgrounds = data
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(256, 6), nn.Sigmoid(),
        nn.Linear(6, 3),
    ).eval()  # fmt: skip
    assert not covers_every_nonlinearity(rule_view(model))
    with pytest.raises(ValueError, match="every nonlinearity"):
        RescaleDeepLiftShap(rule_view(model))
    explainer = Explainer(model, baselines=backgrounds, n_baselines=7)
    maps = explainer.attribute(images, targets)
    reordered = draw_backgrounds(backgrounds, 7, images.shape[1:], seed=0)
    expected = DeepLiftShap(model).attribute(images, baselines=reordered, target=targets)
    assert torch.allclose(maps, expected, rtol=1e-5, atol=1e-7)


class _TwiceReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relu, self.fc = nn.ReLU(), nn.Linear(300, 2)

    def forward(self, x):
        return self.fc(self.relu(self.relu(x.flatten(1))))


def test_a_module_used_twice_and_a_batch_of_the_wrong_size_are_refused(data):
    images, _, backgrounds = data
    twice = rule_view(_TwiceReLU())
    with pytest.raises(RuntimeError, match="ran twice"):
        reference_activations(twice, backgrounds)
    view = _resnet_like(nn.Identity())
    references = reference_activations(view, backgrounds)
    with paired_rules(references), pytest.raises(RuntimeError, match="7 references"):
        view(images)


class _InPlaceAfterReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relu, self.fc = nn.ReLU(), nn.Linear(300, 2)

    def forward(self, x):
        h = self.relu(x.flatten(1))
        return self.fc(h.mul_(2))


def test_a_model_changing_a_rule_modules_output_in_place_is_refused(data):
    _, _, backgrounds = data
    with pytest.raises(RuntimeError, match="in place"):
        reference_activations(rule_view(_InPlaceAfterReLU()), backgrounds)
