"""Task models: the reference MLP and torchvision ResNets, all DeepLift-safe.

ResNets go through `lvlmva.vision.deeplift_safety.make_deeplift_safe` (one ReLU module per use).

Every model starts with `Normalize(info.mean, info.std)`, so it takes images in [0, 1].
ResNets for small images (``image_size <= 32``, e.g. 28 px digits) use a 3x3 stride-1 first
convolution and no max-pool (the CIFAR-style stem), so the feature maps do not shrink to one
pixel; larger images keep torchvision's 7x7 stride-2 stem (with `info.channels` input channels).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models import resnet18, resnet50

from lvlmva.errors import ConfigError
from lvlmva.vision.datasets.base import DatasetInfo
from lvlmva.vision.deeplift_safety import make_deeplift_safe
from lvlmva.vision.seeding import seeded

ARCHS = ("mlp", "resnet18", "resnet50")
MLP_HIDDEN = 256
SMALL_IMAGE = 32


class Normalize(nn.Module):
    """(x - mean) / std per channel; `mean` and `std` come from the training split."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"bad normalisation mean={mean} std={std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"channels={self.mean.shape[1]}"


def build_mlp(info: DatasetInfo, hidden: int = MLP_HIDDEN) -> nn.Sequential:
    """normalize -> flatten -> Linear(C*H*W, hidden) -> ReLU -> Linear(hidden, classes)."""
    features = info.channels * info.image_size * info.image_size
    return nn.Sequential(
        OrderedDict(
            normalize=Normalize(info.mean, info.std),
            flatten=nn.Flatten(),
            fc1=nn.Linear(features, hidden),
            relu=nn.ReLU(),
            fc2=nn.Linear(hidden, info.num_classes),
        )
    )


def build_resnet(arch: str, info: DatasetInfo) -> nn.Sequential:
    """A randomly initialised torchvision ResNet for `info`'s channels, size and classes."""
    net = {"resnet18": resnet18, "resnet50": resnet50}[arch](
        weights=None, num_classes=info.num_classes
    )
    if info.image_size <= SMALL_IMAGE:
        net.conv1 = nn.Conv2d(info.channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif info.channels != 3:
        net.conv1 = nn.Conv2d(info.channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    # torchvision's initialisation for the (possibly replaced) first convolution
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return make_deeplift_safe(
        nn.Sequential(OrderedDict(normalize=Normalize(info.mean, info.std), net=net))
    )


def build_model(arch: str, info: DatasetInfo) -> nn.Module:
    """The model `arch` (one of `ARCHS`) for the dataset described by `info`.

    Weights come from torch's global random state: seed it first for reproducible models.
    """
    if arch == "mlp":
        return build_mlp(info)
    if arch in ("resnet18", "resnet50"):
        return build_resnet(arch, info)
    raise ConfigError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")


def reinitialize(model: nn.Module, *, seed: int | None = None) -> None:
    """Draw fresh weights for `model` in place, the way `build_model` initialises them.

    Convolutions get torchvision's ResNet rule (Kaiming-normal, fan_out, ReLU gain; zero bias),
    batch and group norms weight 1 / bias 0 with fresh running statistics, and every other
    layer its own `reset_parameters` (torch's default, e.g. for `nn.Linear`). With `seed` the
    weights come from `torch.manual_seed(seed)` and torch's global random state is left as it
    was; without, they come from that global state.
    """
    if seed is not None:
        with seeded(seed, next((p.device for p in model.parameters()), None)):
            reinitialize(model)
        return
    for module in model.modules():
        if module is model and len(list(model.children())) > 0:
            continue
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm | nn.GroupNorm):
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
            if module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        elif callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
