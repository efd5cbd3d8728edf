"""Attribution maps (pipeline stage 1): captum explanations for a chosen class, batched.

The default is DeepLiftShap for the ground-truth class against `n_baselines` background images
drawn at random (seeded) from the training images. IntegratedGradients (all-black baseline, see
`Explainer`) and GradientShap (the same backgrounds as DeepLiftShap) are selectable.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lvlmva.errors import ConfigError, DataError

log = logging.getLogger(__name__)

METHODS = ("deeplift-shap", "integrated-gradients", "gradient-shap")
_DEEPLIFT_METHODS = ("deeplift-shap",)
_IG_STEPS = 50


def _nonlinear_types() -> tuple[type[nn.Module], ...]:
    """The module types captum's DeepLift hooks (each must be called once per forward)."""
    try:
        from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

        return tuple(SUPPORTED_NON_LINEAR)
    except ImportError:  # captum moved its private table: fall back to the common ones
        return (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.MaxPool2d)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def find_reused_modules(model: nn.Module, example: Tensor) -> list[str]:
    """Names of the nonlinearity modules that one forward pass of `example` calls more than once.

    captum's DeepLift stores a module's input and output on the module itself, so a ReLU used
    twice (as in torchvision's ResNet blocks) gives wrong multipliers or a crash.
    """
    types = _nonlinear_types()
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
    """`model` itself if no nonlinearity module is reused, else a fixed copy.

    The copy comes from `lvlmva.vision.models.make_deeplift_safe`; if that is not available or
    does not fix the model, a ConfigError names the reused modules.
    """
    reused = find_reused_modules(model, example)
    if not reused:
        return model
    shown = ", ".join(reused[:3]) + (f" and {len(reused) - 3} more" if len(reused) > 3 else "")
    advice = (
        f"DeepLift needs every nonlinearity module used once, and {type(model).__name__} "
        f"reuses {shown}; give each use its own module, e.g. with "
        "lvlmva.vision.models.make_deeplift_safe(model), or pick --method integrated-gradients"
    )
    try:
        from lvlmva.vision.models import make_deeplift_safe
    except ImportError as exc:
        raise ConfigError(advice) from exc
    fixed = copy.deepcopy(model)
    returned = make_deeplift_safe(fixed)
    if isinstance(returned, nn.Module):
        fixed = returned
    still = find_reused_modules(fixed, example)
    if still:
        raise ConfigError(f"{advice} (make_deeplift_safe could not fix {', '.join(still)})")
    log.info("explaining a DeepLift-safe copy of the model (it reused %s)", ", ".join(reused))
    return fixed


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

    - ``deeplift-shap``: captum ``DeepLiftShap`` averaged over the drawn backgrounds.
    - ``integrated-gradients``: captum ``IntegratedGradients`` from an all-black (zero) baseline,
      50 steps. Inputs are in [0, 1] and black means "no signal" in the digit and radiograph
      data, so the path starts from an empty image; `baselines` is not used.
    - ``gradient-shap``: captum ``GradientShap`` with the same backgrounds, `n_baselines`
      random draws per input.

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
        if method not in METHODS:
            raise ConfigError(
                f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}"
            )
        self.method = method
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
        if method in _DEEPLIFT_METHODS:
            self.model = ensure_deeplift_safe(self.model, self.backgrounds[:1].to(self.device)).to(
                self.device
            )
        self._calls = 0

    def _captum(self):
        from captum.attr import DeepLiftShap, GradientShap, IntegratedGradients

        if self.method == "deeplift-shap":
            return DeepLiftShap(self.model)
        if self.method == "gradient-shap":
            return GradientShap(self.model)
        return IntegratedGradients(self.model)

    def attribute(self, inputs: Tensor, target: Tensor | Sequence[int] | int) -> Tensor:
        """Attributions [N, C, H, W] of `inputs` for class `target`, on the CPU."""
        inputs = inputs.detach().float().to(self.device)
        if isinstance(target, int):
            target = [target] * len(inputs)
        target = torch.as_tensor(target, dtype=torch.long).to(self.device)
        backgrounds = self.backgrounds.to(self.device)
        method = self._captum()
        seed = self.seed + self._calls
        self._calls += 1
        with eval_mode(self.model), warnings.catch_warnings():
            # captum announces on every DeepLift call that it sets hooks; that is expected here
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
            if self.method == "deeplift-shap":
                if len(backgrounds) == 1:  # DeepLiftShap wants a distribution of >= 2
                    backgrounds = backgrounds.expand(2, *backgrounds.shape[1:])
                out = method.attribute(inputs, baselines=backgrounds, target=target)
            elif self.method == "gradient-shap":
                with _numpy_seeded(seed):
                    out = method.attribute(
                        inputs,
                        baselines=backgrounds,
                        target=target,
                        n_samples=self.n_baselines,
                        stdevs=0.0,
                    )
            else:
                out = method.attribute(
                    inputs,
                    baselines=torch.zeros_like(inputs),
                    target=target,
                    n_steps=_IG_STEPS,
                    internal_batch_size=max(1, len(inputs) * self.n_baselines),
                )
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
