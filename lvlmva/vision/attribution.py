"""Attribution maps (pipeline stage 1): captum explanations for a chosen class, batched.

The default is DeepLiftShap for the ground-truth class against `n_baselines` background images
drawn at random (seeded) from the training images. IntegratedGradients (all-black baseline) and
GradientShap (the same backgrounds as DeepLiftShap) are selectable. `ATTRIBUTION_METHODS` holds
one entry per method: adding a captum method is adding an entry.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lvlmva.errors import ConfigError, DataError
from lvlmva.vision.deeplift_safety import ensure_deeplift_safe
from lvlmva.vision.modes import eval_mode

__all__ = [
    "ATTRIBUTION_METHODS",
    "METHODS",
    "AttributionMethod",
    "Explainer",
    "draw_backgrounds",
    "explain",
]

IG_STEPS = 50


@dataclass(frozen=True)
class AttributionMethod:
    """How one captum attribution method is run.

    `captum_class` names the class in `captum.attr` (built as ``cls(model)``); `deeplift` says
    whether the model must be DeepLift-safe (see `lvlmva.vision.deeplift_safety`); `arguments`
    builds the keyword arguments of ``cls(model).attribute(inputs, target=..., **arguments)``
    from the inputs, the drawn backgrounds [M, C, H, W] and `n_baselines`.
    """

    captum_class: str
    deeplift: bool
    arguments: Callable[[Tensor, Tensor, int], dict[str, Any]]

    def build(self, model: nn.Module):
        """The captum attribution object for `model`."""
        import captum.attr

        return getattr(captum.attr, self.captum_class)(model)


def _deeplift_shap_arguments(inputs: Tensor, backgrounds: Tensor, n_baselines: int) -> dict:
    if len(backgrounds) == 1:  # DeepLiftShap wants a distribution of >= 2
        backgrounds = backgrounds.expand(2, *backgrounds.shape[1:])
    return {"baselines": backgrounds}


def _integrated_gradients_arguments(inputs: Tensor, backgrounds: Tensor, n_baselines: int) -> dict:
    # Inputs are in [0, 1] and black means "no signal" in the digit and radiograph data, so the
    # path starts from an empty image; the backgrounds are not used.
    return {
        "baselines": torch.zeros_like(inputs),
        "n_steps": IG_STEPS,
        "internal_batch_size": max(1, len(inputs) * n_baselines),
    }


def _gradient_shap_arguments(inputs: Tensor, backgrounds: Tensor, n_baselines: int) -> dict:
    return {"baselines": backgrounds, "n_samples": n_baselines, "stdevs": 0.0}


ATTRIBUTION_METHODS: dict[str, AttributionMethod] = {
    # DeepLiftShap averaged over the drawn backgrounds
    "deeplift-shap": AttributionMethod("DeepLiftShap", True, _deeplift_shap_arguments),
    # IntegratedGradients from an all-black (zero) image, IG_STEPS steps
    "integrated-gradients": AttributionMethod(
        "IntegratedGradients", False, _integrated_gradients_arguments
    ),
    # GradientShap: n_baselines random draws per input from the backgrounds, no noise
    "gradient-shap": AttributionMethod("GradientShap", False, _gradient_shap_arguments),
}
"""Attribution method name -> how captum runs it; `METHODS` lists the names in this order."""

METHODS = tuple(ATTRIBUTION_METHODS)


def draw_backgrounds(
    baselines: Tensor | None, n_baselines: int, sample_shape: torch.Size, *, seed: int
) -> Tensor:
    """`n_baselines` background images drawn without replacement (seeded) from `baselines`.

    With no `baselines`, one all-black image. Fewer stored images than asked: all of them.
    """
    if n_baselines < 1:
        raise ConfigError(f"n_baselines must be at least 1, got {n_baselines}")
    if baselines is None:
        return torch.zeros((1, *sample_shape))
    if baselines.ndim != 4 or baselines.shape[1:] != sample_shape or len(baselines) == 0:
        raise DataError(
            f"baselines must be background images [M, {', '.join(map(str, sample_shape))}] "
            f"like the explained images, got shape {tuple(baselines.shape)}"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(baselines), generator=generator)[:n_baselines]
    return baselines[order.to(baselines.device)].detach().float().cpu()


@contextlib.contextmanager
def _numpy_seeded(seed: int) -> Iterator[None]:
    """Seed numpy's global generator for the block and restore it after: captum's GradientShap
    draws its baselines and path points from it. torch's generator is left alone, so a model
    training in another thread keeps its own random stream."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


class Explainer:
    """A captum attribution method with its backgrounds fixed, in captum's style:
    `Explainer(model, method, baselines=...).attribute(inputs, target=...)`.

    `method` is a key of `ATTRIBUTION_METHODS`. Backgrounds: `n_baselines` images drawn (seeded)
    from `baselines` (see `draw_backgrounds`). A method that needs a DeepLift-safe model
    explains a fixed copy if `model` reuses a nonlinearity module. Every `attribute` call runs
    with numpy's global generator seeded (``seed`` + the call's number) and restored after, as
    captum's GradientShap draws from it.

    The model is moved to `device`; each forward pass sees about
    ``len(inputs) * n_baselines * 2`` samples (lower `batch_size` in `explain` for big models).
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "deeplift-shap",
        *,
        baselines: Tensor | None = None,
        n_baselines: int = 25,
        sample_shape: Sequence[int] | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        spec = ATTRIBUTION_METHODS.get(method)
        if spec is None:
            raise ConfigError(
                f"unknown attribution method {method!r}; choose one of "
                f"{', '.join(ATTRIBUTION_METHODS)}"
            )
        self.method = method
        self.spec = spec
        self.device = torch.device(device)
        self.seed = seed
        self.n_baselines = n_baselines
        self.model = model.to(self.device)
        shape = torch.Size(sample_shape) if sample_shape is not None else None
        if shape is None:
            if baselines is None:
                raise ConfigError("Explainer needs baselines or sample_shape to know the input")
            shape = baselines.shape[1:]
        self.sample_shape = shape
        self.backgrounds = draw_backgrounds(baselines, n_baselines, shape, seed=seed)
        if spec.deeplift:
            example = self.backgrounds[:1].to(self.device)
            self.model = ensure_deeplift_safe(self.model, example).to(self.device)
        self._calls = 0

    def attribute(self, inputs: Tensor, target: Tensor | Sequence[int] | int) -> Tensor:
        """Attributions [N, C, H, W] of `inputs` for class `target`, on the CPU."""
        inputs = inputs.detach().float().to(self.device)
        if isinstance(target, int):
            target = [target] * len(inputs)
        target = torch.as_tensor(target, dtype=torch.long).to(self.device)
        backgrounds = self.backgrounds.to(self.device)
        method = self.spec.build(self.model)
        arguments = self.spec.arguments(inputs, backgrounds, self.n_baselines)
        seed = self.seed + self._calls
        self._calls += 1
        with eval_mode(self.model), _numpy_seeded(seed), warnings.catch_warnings():
            # captum announces on every DeepLift call that it sets hooks; that is expected here
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
            out = method.attribute(inputs, target=target, **arguments)
        return out.detach().float().cpu()


def explain(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | Sequence[int],
    *,
    method: str = "deeplift-shap",
    baselines: Tensor | None = None,
    n_baselines: int = 25,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Tensor:
    """Attribution maps [N, C, H, W] (CPU, float32) of `images` for the classes `targets`.

    `baselines` are the images backgrounds are drawn from (the training images; one all-black
    image when None). The same `n_baselines` backgrounds serve every image, so the result does
    not depend on `batch_size` (except for gradient-shap's random draws), and a seed gives the
    same maps. The model is moved to `device` and explained in eval mode (its previous mode is
    restored); its parameters get no gradients.
    """
    if images.ndim != 4:
        raise DataError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    if len(targets) != len(images):
        raise DataError(f"{len(targets)} targets for {len(images)} images")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if len(images) == 0:
        return torch.zeros(images.shape, dtype=torch.float32)
    explainer = Explainer(
        model,
        method,
        baselines=baselines,
        n_baselines=n_baselines,
        sample_shape=images.shape[1:],
        device=device,
        seed=seed,
    )
    with torch.no_grad(), eval_mode(explainer.model):
        n_classes = explainer.model(images[:1].float().to(explainer.device)).shape[-1]
    if targets.min() < 0 or targets.max() >= n_classes:
        raise DataError(f"targets must be class indices in [0, {n_classes}), got {targets}")
    parts = [
        explainer.attribute(images[i : i + batch_size], targets[i : i + batch_size])
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts)
