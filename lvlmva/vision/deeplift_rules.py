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

The rules also run without captum and without the references' backward pass, which DeepLift
does not need (its maps are the inputs' gradients; the references only set the multipliers):
`reference_activations(view, references)` runs the references through the view once, without
gradients, and keeps every rule module's input (and output); within `paired_rules(those)` the
rule modules take a batch of inputs paired, in order, with the references again and again
(sample k with reference k mod n), and save multipliers computed against the kept
activations (see `lvlmva.vision.deeplift_shap`). The input's own gradient is the fallback
where |x - r| < eps, as in captum's rule.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "EPS",
    "ReferenceActivations",
    "RescaleMaxPool2d",
    "RescaleReLU",
    "covers_every_nonlinearity",
    "deeplift_rules",
    "paired_rules",
    "reference_activations",
    "rule_view",
]

EPS = 1e-10


@dataclass(eq=False)
class ReferenceActivations:
    """What `n` references put into (and got out of) every rule module of a view, without
    gradients: `kept[module]` is (input, output) for a ReLU, (input, output, arg-max indices)
    for a max-pool, each [n, ...]. Filled by `reference_activations`."""

    n: int
    kept: dict[nn.Module, tuple[Tensor, ...]] = field(default_factory=dict)
    recording: bool = True
    versions: list[tuple[Tensor, int]] = field(default_factory=list, repr=False)


_HALVES = object()  # captum's layout: a batch is the inputs, then as many references
_STATE: contextvars.ContextVar[object] = contextvars.ContextVar("deeplift_rules", default=None)


@contextlib.contextmanager
def _state(state: object) -> Iterator[None]:
    token = _STATE.set(state)
    try:
        yield
    finally:
        _STATE.reset(token)


def deeplift_rules() -> contextlib.AbstractContextManager[None]:
    """The rule modules of `rule_view` apply DeepLift's rules within the block (this thread or
    task only) to batches of inputs then as many references (captum's DeepLift)."""
    return _state(_HALVES)


def reference_activations(view: nn.Module, references: Tensor) -> ReferenceActivations:
    """`references` [n, ...] through the `rule_view` `view` without gradients, keeping what
    every rule module got and gave (for `paired_rules`)."""
    kept = ReferenceActivations(len(references))
    with torch.no_grad(), _state(kept):
        view(references)
    if any(t._version != version for t, version in kept.versions):
        raise RuntimeError(
            "the model changes the input or output of a ReLU or max-pool in place, which "
            "DeepLift's rules need as they were; make that operation out of place"
        )
    kept.recording = False
    kept.versions.clear()
    return kept


def paired_rules(references: ReferenceActivations) -> contextlib.AbstractContextManager[None]:
    """Within the block the rule modules take batches whose sample k is an input paired with
    reference k mod n of `references` (the batch size a multiple of n) and apply DeepLift's
    rules against them; the backward pass is the inputs' alone."""
    if references.recording:
        raise RuntimeError("the reference activations are incomplete")
    return _state(references)


def _keep(state: ReferenceActivations, module: nn.Module, tensors: tuple[Tensor, ...]) -> None:
    if module in state.kept:
        raise RuntimeError(
            f"{type(module).__name__} ran twice in one forward pass; DeepLift needs every "
            "nonlinearity module used once (lvlmva.vision.deeplift_safety.make_deeplift_safe)"
        )
    state.kept[module] = tensors
    state.versions.extend((t, t._version) for t in tensors)


def _kept(state: ReferenceActivations, module: nn.Module, x: Tensor) -> tuple[Tensor, ...]:
    tensors = state.kept.get(module)
    if tensors is None:
        raise RuntimeError(f"{type(module).__name__} did not run on the references")
    if x.shape[0] % state.n or x.shape[1:] != tensors[0].shape[1:]:
        raise RuntimeError(
            f"a paired DeepLift batch holds inputs for each of {state.n} references of shape "
            f"{tuple(tensors[0].shape[1:])}, got {tuple(x.shape)}"
        )
    return tensors


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


def _paired(x: Tensor, n: int) -> Tensor:
    """[k * n, ...] as [k, n, ...]: sample j of group i is paired with reference j."""
    return x.unflatten(0, (-1, n))


def _needs_fallback(small: Tensor) -> bool:
    """Whether `small` holds a True; always on a GPU, which saves the check's synchronisation."""
    return small.device.type != "cpu" or bool(small.any())


def _with_fallback(small: Tensor, fallback, ratio: Tensor) -> Tensor:
    """`ratio` with `fallback()` where `small` (in place)."""
    if _needs_fallback(small):
        return torch.where(small, fallback(), ratio, out=ratio)
    return ratio


class _PairedRescaleReLU(torch.autograd.Function):
    """The rescale rule against kept reference activations: saves one multiplier per pair."""

    @staticmethod
    def forward(ctx, x: Tensor, x_ref: Tensor, y_ref: Tensor) -> Tensor:
        y = torch.relu(x)
        x_in = _paired(x, len(x_ref))
        delta = x_in - x_ref
        ratio = (_paired(y, len(x_ref)) - y_ref).div_(delta)
        ratio = _with_fallback(delta.abs_() < EPS, lambda: x_in > 0, ratio)
        ctx.save_for_backward(ratio)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        (multiplier,) = ctx.saved_tensors
        return (grad.reshape(multiplier.shape) * multiplier).view(grad.shape), None, None


class _PairedRescaleMaxPool2d(torch.autograd.Function):
    """The max-pool rule against kept reference activations (the inputs' half of
    `_RescaleMaxPool2d`: both halves' gradients are the inputs' where the multipliers are
    shared)."""

    @staticmethod
    def forward(
        ctx, x: Tensor, x_ref, y_ref, indices_ref, kernel, stride, padding, dilation, ceil_mode
    ) -> Tensor:
        y, indices = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, True)
        ctx.save_for_backward(x, y, indices, x_ref, y_ref, indices_ref)
        ctx.pool = (kernel, stride, padding, dilation, ceil_mode)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, y, indices, x_ref, y_ref, indices_ref = ctx.saved_tensors
        n = len(x_ref)

        def spread(values: Tensor, where: Tensor) -> Tensor:  # to every window's arg-max, summed
            return torch.ops.aten.max_pool2d_with_indices_backward(
                values.reshape(y.shape), x, *ctx.pool, where.reshape(y.shape)
            )

        g, y_in = _paired(grad, n), _paired(y, n)
        top = torch.maximum(y_in, y_ref)
        parts = spread(g * (top - y_ref), indices)
        parts += spread(g * (y_in - top), indices_ref.expand(y_in.shape))
        x_in = _paired(x, n)
        delta = x_in - x_ref
        ratio = _paired(parts, n).div_(delta)
        ratio = _with_fallback(delta.abs_() < EPS, lambda: _paired(spread(grad, indices), n), ratio)
        return ratio.view(x.shape), *([None] * 8)


class RescaleReLU(nn.ReLU):
    """`nn.ReLU` that applies DeepLift's rescale rule under `deeplift_rules()`."""

    def forward(self, x: Tensor) -> Tensor:
        state = _STATE.get()
        if state is None:
            return super().forward(x)
        if state is _HALVES:
            return _RescaleReLU.apply(x)
        if state.recording:
            y = torch.relu(x)
            _keep(state, self, (x, y))
            return y
        return _PairedRescaleReLU.apply(x, *_kept(state, self, x))


class RescaleMaxPool2d(nn.MaxPool2d):
    """`nn.MaxPool2d` that applies DeepLift's max-pooling rule under `deeplift_rules()`."""

    def forward(self, x: Tensor) -> Tensor:
        state = _STATE.get()
        if state is None or self.return_indices:
            return super().forward(x)
        pool = (self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        if state is _HALVES:
            return _RescaleMaxPool2d.apply(x, *pool)
        if state.recording:
            y, indices = F.max_pool2d(x, *pool, True)
            _keep(state, self, (x, y, indices))
            return y
        return _PairedRescaleMaxPool2d.apply(x, *_kept(state, self, x), *pool)


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


def covers_every_nonlinearity(view: nn.Module) -> bool:
    """Whether the rule modules are all the nonlinearities captum's DeepLift would hook in
    `view` (then `paired_rules` gives its maps without captum)."""
    from lvlmva.vision.deeplift_safety import nonlinear_types

    hooked = nonlinear_types()
    return not any(
        type(m) in hooked or (isinstance(m, RescaleMaxPool2d) and m.return_indices)
        for m in view.modules()
    )
