"""Task models: the reference MLP and torchvision ResNets, all DeepLift-safe.

Every model starts with `Normalize(info.mean, info.std)`, so it takes images in [0, 1].
ResNets for small images (``image_size <= 32``, e.g. 28 px digits) use a 3x3 stride-1 first
convolution and no max-pool (the CIFAR-style stem), so the feature maps do not shrink to one
pixel; larger images keep torchvision's 7x7 stride-2 stem (with `info.channels` input channels).
"""

from __future__ import annotations

import copy
from collections import OrderedDict, defaultdict

import torch
from torch import Tensor, nn
from torchvision.models import resnet18, resnet50
from torchvision.models.resnet import BasicBlock, Bottleneck

from lvlmva.errors import ConfigError
from lvlmva.vision.datasets.base import DatasetInfo

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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
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


# --- DeepLift safety -------------------------------------------------------------------------


class SafeBasicBlock(BasicBlock):
    """BasicBlock with one ReLU module per use (relu1, relu2) and no in-place addition."""

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class SafeBottleneck(Bottleneck):
    """Bottleneck with one ReLU module per use (relu1, relu2, relu3), no in-place addition."""

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


# torchvision block class -> (its DeepLift-safe subclass, number of ReLU uses)
_SAFE_BLOCKS: dict[type[nn.Module], tuple[type[nn.Module], int]] = {
    BasicBlock: (SafeBasicBlock, 2),
    Bottleneck: (SafeBottleneck, 3),
}


def _nonlinear_types() -> tuple[type[nn.Module], ...]:
    try:
        from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

        return tuple(SUPPORTED_NON_LINEAR)
    except ImportError:  # captum moved its private table
        return (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.MaxPool2d)


def _split_reused_calls(model: nn.Module) -> nn.Module:
    """Trace `model` with torch.fx and give every repeated call of a nonlinearity its own copy.

    Returns `model` unchanged if it cannot be traced or reuses nothing.
    """
    from torch import fx

    types = _nonlinear_types()
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # models with data-dependent control flow cannot be traced
        return model
    uses: dict[str, int] = defaultdict(int)
    changed = False
    for node in traced.graph.nodes:
        if node.op != "call_module":
            continue
        module = traced.get_submodule(node.target)
        if not isinstance(module, types):
            continue
        uses[node.target] += 1
        if uses[node.target] > 1:
            name = f"{node.target.replace('.', '_')}_use{uses[node.target]}"
            traced.add_submodule(name, copy.deepcopy(module))
            node.target = name
            changed = True
    if not changed:
        return model
    traced.recompile()
    return traced


def make_deeplift_safe(model: nn.Module) -> nn.Module:
    """Make every nonlinearity module of `model` be used at most once per forward pass.

    torchvision's BasicBlock / Bottleneck apply one `relu` module two / three times: they are
    turned (in place, weights kept) into subclasses with `relu1`, `relu2` (, `relu3`). Other
    models that reuse a module are traced with torch.fx and get a copy per use (a new
    `GraphModule` is returned). ReLUs are set to ``inplace=False``. Always use the returned model;
    outputs and state_dict keys are unchanged.
    """
    for module in model.modules():
        entry = _SAFE_BLOCKS.get(type(module))
        if entry is not None:
            safe_class, n_relus = entry
            for i in range(1, n_relus + 1):
                setattr(module, f"relu{i}", nn.ReLU(inplace=False))
            del module.relu
            module.__class__ = safe_class
        elif isinstance(module, nn.ReLU):
            module.inplace = False
    return _split_reused_calls(model)
