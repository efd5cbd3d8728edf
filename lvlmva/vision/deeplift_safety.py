"""DeepLift safety: every nonlinearity module of a model called at most once per forward pass.

captum's DeepLift stores a module's input and output on the module itself while it computes the
multipliers, so a module applied twice (torchvision's ResNet blocks apply one ReLU two or three
times) gives wrong attributions or a crash. This module finds such reuse
(`find_reused_modules`), removes it (`make_deeplift_safe`) and does both for the explainer
(`ensure_deeplift_safe`). It is the only place that reads captum's private table of the module
types DeepLift hooks.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from lvlmva.errors import ConfigError
from lvlmva.vision.modes import eval_mode

__all__ = [
    "SafeBasicBlock",
    "SafeBottleneck",
    "ensure_deeplift_safe",
    "find_reused_modules",
    "make_deeplift_safe",
    "nonlinear_types",
]

log = logging.getLogger(__name__)

# What captum's DeepLift hooks, if its private table cannot be imported (captum moved it)
_FALLBACK_NONLINEAR = (
    nn.ReLU,
    nn.ELU,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.MaxPool2d,
)


def nonlinear_types() -> tuple[type[nn.Module], ...]:
    """The module types captum's DeepLift hooks (each must be called once per forward)."""
    try:
        from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR
    except ImportError:
        return _FALLBACK_NONLINEAR
    return tuple(SUPPORTED_NON_LINEAR)


def find_reused_modules(model: nn.Module, example: Tensor) -> list[str]:
    """Names of the nonlinearity modules that one forward pass of `example` calls more than once
    (in eval mode, without gradients; "<model>" for the model itself)."""
    types = nonlinear_types()
    calls: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if type(module) in types:

            def hook(_module, _inputs, _output, name=name) -> None:
                calls[name] = calls.get(name, 0) + 1

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad(), eval_mode(model):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return sorted(name or "<model>" for name, count in calls.items() if count > 1)


def ensure_deeplift_safe(model: nn.Module, example: Tensor) -> nn.Module:
    """`model` itself if no nonlinearity module is reused on `example`, else a DeepLift-safe
    copy made by `make_deeplift_safe` (`model` is left as it is). A ConfigError names the
    reused modules if the copy still reuses some."""
    reused = find_reused_modules(model, example)
    if not reused:
        return model
    fixed = make_deeplift_safe(copy.deepcopy(model))
    still = find_reused_modules(fixed, example)
    if still:
        shown = ", ".join(reused[:3]) + (f" and {len(reused) - 3} more" if len(reused) > 3 else "")
        raise ConfigError(
            f"DeepLift needs every nonlinearity module used once, and {type(model).__name__} "
            f"reuses {shown}; give each use its own module, e.g. with "
            "lvlmva.vision.deeplift_safety.make_deeplift_safe(model), or pick --method "
            f"integrated-gradients (make_deeplift_safe could not fix {', '.join(still)})"
        )
    log.info("explaining a DeepLift-safe copy of the model (it reused %s)", ", ".join(reused))
    return fixed


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


def _split_reused_calls(model: nn.Module) -> nn.Module:
    """Trace `model` with torch.fx and give every repeated call of a nonlinearity its own copy.

    Returns `model` unchanged if it cannot be traced or reuses nothing.
    """
    from torch import fx

    types = nonlinear_types()
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
