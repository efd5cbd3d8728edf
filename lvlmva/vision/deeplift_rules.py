"""DeepLift's rescale rule for ReLU and its max-pooling rule as autograd functions.

captum's DeepLift applies its rules through module hooks. On captum 0.9 that gives wrong maps
wherever a ReLU feeds a max-pool, as in every ResNet's stem (measured on ResNet-18: the maps
miss DeepLift's summation-to-delta by half of the output difference): the hooks of the two
modules interfere (captum issue #1104), its max-pool rule spreads the output difference with
`max_unpool2d`, which keeps one contribution where windows overlap (3x3, stride 2), and falls
back to the first sample's gradient (#1276). The hooks also copy every nonlinearity's input and
output and the rule takes eight passes over them.

`rule_view(model)` is a copy of the module tree that shares the parameters and buffers, in which
every `nn.ReLU` and `nn.MaxPool2d` applies the rules below while `deeplift_rules()` is active
and is the plain module otherwise; captum's DeepLift then hooks only the other nonlinearities.
Inside the rules a batch is DeepLift's: the inputs, then as many references (captum concatenates
them). With x, r an input and its reference (eps = captum's 1e-10):

- ReLU: the multiplier (relu(x) - relu(r)) / (x - r), or the gradient where |x - r| < eps;
- max-pool: the output difference split as captum splits it, max(y, y_r) - y_r to the input's
  arg-max and y - max(y, y_r) to the reference's, summed back over every window (overlapping
  ones too), divided by x - r (the gradient of each where |x - r| < eps).

On models without max-pooling the maps equal captum's; with it they sum to the output
difference, which captum's do not.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EPS", "RescaleMaxPool2d", "RescaleReLU", "deeplift_rules", "rule_view"]

EPS = 1e-10
_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("deeplift_rules", default=False)


@contextlib.contextmanager
def deeplift_rules() -> Iterator[None]:
    """The rule modules of `rule_view` apply DeepLift's rules within the block (this thread or
    task only)."""
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _halves(x: Tensor) -> tuple[Tensor, Tensor]:
    half = x.shape[0] // 2
    if x.shape[0] != 2 * half:
        raise RuntimeError(
            f"a DeepLift batch holds inputs then as many references, got {x.shape[0]} samples"
        )
    return x[:half], x[half:]


def _per_half(small: Tensor, fallback: Tensor, ratio: Tensor) -> Tensor:
    """`ratio` for both halves of a batch, each half's own `fallback` where `small`."""
    out = torch.empty(fallback.shape, dtype=ratio.dtype, device=ratio.device)
    first, second = _halves(fallback)
    low, high = _halves(out)
    torch.where(small, first, ratio, out=low)
    torch.where(small, second, ratio, out=high)
    return out


class _RescaleReLU(torch.autograd.Function):
    """Saves one multiplier per (input, reference) pair, shared by both halves of the batch,
    on the CPU when no |x - r| < eps (identical regions); else one per sample (on a GPU always,
    which saves the check's synchronisation)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.relu(x)
        x_in, x_ref = _halves(x)
        y_in, y_ref = _halves(y)
        delta = x_in - x_ref
        ratio = (y_in - y_ref).div_(delta)
        small = delta.abs_() < EPS
        if x.device.type != "cpu" or bool(small.any()):
            ratio = _per_half(small, x > 0, ratio)
        ctx.save_for_backward(ratio)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (multiplier,) = ctx.saved_tensors
        if multiplier.shape[0] == grad.shape[0]:
            return grad * multiplier
        return (grad.reshape(2, *multiplier.shape) * multiplier).view(grad.shape)


class _RescaleMaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, kernel, stride, padding, dilation, ceil_mode) -> Tensor:
        y, indices = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, True)
        ctx.save_for_backward(x, y, indices)
        ctx.pool = (kernel, stride, padding, dilation, ceil_mode)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, y, indices = ctx.saved_tensors

        def spread(values: Tensor) -> Tensor:  # every window's value to its arg-max, summed
            return torch.ops.aten.max_pool2d_with_indices_backward(
                values, x, *ctx.pool, indices
            )

        y_in, y_ref = _halves(y)
        top = torch.maximum(y_in, y_ref)
        parts = spread(grad * torch.cat((top - y_ref, y_in - top)))
        part_in, part_ref = _halves(parts)
        x_in, x_ref = _halves(x)
        delta = x_in - x_ref
        ratio = (part_in + part_ref).div_(delta)
        new = _per_half(delta.abs() < EPS, spread(grad), ratio)
        return new, None, None, None, None, None


class RescaleReLU(nn.ReLU):
    """`nn.ReLU` that applies DeepLift's rescale rule under `deeplift_rules()`."""

    def forward(self, x: Tensor) -> Tensor:
        return _RescaleReLU.apply(x) if _ACTIVE.get() else super().forward(x)


class RescaleMaxPool2d(nn.MaxPool2d):
    """`nn.MaxPool2d` that applies DeepLift's max-pooling rule under `deeplift_rules()`."""

    def forward(self, x: Tensor) -> Tensor:
        if not _ACTIVE.get() or self.return_indices:
            return super().forward(x)
        pool = (self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        return _RescaleMaxPool2d.apply(x, *pool)


def _rule_module(module: nn.Module) -> nn.Module | None:
    if type(module) is nn.ReLU:
        return RescaleReLU()
    if type(module) is nn.MaxPool2d:
        return RescaleMaxPool2d(
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            return_indices=module.return_indices,
            ceil_mode=module.ceil_mode,
        )
    return None


def rule_view(model: nn.Module) -> nn.Module:
    """A copy of `model`'s module tree sharing its parameters and buffers, with every
    `nn.ReLU` and `nn.MaxPool2d` replaced by `RescaleReLU` / `RescaleMaxPool2d` (the same
    outputs; DeepLift's rules under `deeplift_rules()`). `model` is left as it is."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    view = copy.deepcopy(model, shared)
    for parent in list(view.modules()):
        for name, child in list(parent.named_children()):
            rule = _rule_module(child)
            if rule is not None:
                setattr(parent, name, rule)
    return view
