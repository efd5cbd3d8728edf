"""Attribution maps (pipeline stage 1): captum explanations for a chosen class, batched.

The default is DeepLiftShap for the ground-truth class against `n_baselines` background images
drawn at random (seeded) from the training images. IntegratedGradients (all-black baseline) and
GradientShap (the same backgrounds as DeepLiftShap) are selectable. `ATTRIBUTION_METHODS` holds
one entry per method: adding a captum method is adding an entry.

Work is cut finer than images: DeepLiftShap and GradientShap run per (image, background) pair,
IntegratedGradients per (image, step), in forward/backward passes of a size planned for the
model, input shape and device (`lvlmva.vision.batch_sizing`). Every map is averaged over its
own pairs, so the maps do not depend on the batching.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lvlmva.errors import ConfigError, DataError
from lvlmva.vision.batch_sizing import BatchPlan, plan_batch, shrink_plan
from lvlmva.vision.deeplift_rules import covers_every_nonlinearity, deeplift_rules, rule_view
from lvlmva.vision.deeplift_safety import ensure_deeplift_safe
from lvlmva.vision.deeplift_shap import RescaleDeepLiftShap
from lvlmva.vision.modes import eval_mode, is_on

__all__ = [
    "ATTRIBUTION_METHODS",
    "METHODS",
    "AttributionMethod",
    "AttributionWork",
    "Explainer",
    "draw_backgrounds",
    "explain",
    "gradient_shap_draws",
    "image_keys",
    "mean_over_pairs",
    "run_by_image",
]

log = logging.getLogger(__name__)

IG_STEPS = 50


def summed_gradients(
    forward_fn: Callable, inputs: tuple[Tensor, ...], target_ind=None, additional_forward_args=None
) -> tuple[Tensor, ...]:
    """captum's `compute_gradients` with the selected outputs summed into one backward root.

    captum differentiates ``torch.unbind(outputs)``: one autograd root per sample, which costs
    more than the whole backward pass of a small model at thousands of samples per pass. Every
    output depends on its own sample only, so the gradient of the sum is the same gradient.
    """
    from captum._utils.common import _run_forward  # captum's target selection (private)

    with torch.enable_grad():
        outputs = _run_forward(forward_fn, inputs, target_ind, additional_forward_args)
        return torch.autograd.grad(outputs.sum(), inputs)


@dataclass(frozen=True)
class AttributionWork:
    """One `Explainer.attribute` call: `inputs` [N, C, H, W] and `targets` [N] on the device,
    the drawn `backgrounds` [M, C, H, W], `n_baselines` as asked, the model samples one
    forward/backward pass may take and the Explainer's seed (gradient-shap's draws)."""

    inputs: Tensor
    targets: Tensor
    backgrounds: Tensor
    n_baselines: int
    samples_per_forward: int
    seed: int


def _no_arguments(inputs: Tensor, backgrounds: Tensor, samples_per_forward: int) -> dict:
    return {}


def _one_sample(n_backgrounds: int, n_baselines: int) -> int:
    return 1


@dataclass(frozen=True)
class AttributionMethod:
    """How one captum attribution method is run, in forward/backward passes of about
    `samples_per_forward` model samples.

    `captum_class` names the class in `captum.attr` (built as ``cls(model)``); `deeplift` says
    whether the model must be DeepLift-safe (see `lvlmva.vision.deeplift_safety`);
    `samples_per_image(n_backgrounds, n_baselines)` is the number of model samples one image
    costs. By default (`run_by_image`) whole images go to
    ``cls(model).attribute(inputs, target=..., **arguments(inputs, backgrounds,
    samples_per_forward))``, as many per call as `samples_per_image` allows; `run` replaces
    that for methods split finer (per (image, background) pair).
    """

    captum_class: str
    deeplift: bool
    arguments: Callable[[Tensor, Tensor, int], dict[str, Any]] = _no_arguments
    samples_per_image: Callable[[int, int], int] = _one_sample
    run: Callable[[Any, AttributionWork, AttributionMethod], Tensor] | None = None

    def build(self, model: nn.Module):
        """The captum attribution object for `model`, taking its gradients with one backward
        root (`summed_gradients`) where it has captum's `gradient_func`."""
        import captum.attr

        method = getattr(captum.attr, self.captum_class)(model)
        if getattr(method, "gradient_func", None) is None:
            return method
        try:
            from captum._utils.common import _run_forward  # noqa: F401
        except ImportError:  # captum moved it: keep captum's own gradient function
            return method
        method.gradient_func = summed_gradients
        return method

    def attribute(self, model: nn.Module, work: AttributionWork) -> Tensor:
        """The attributions [N, C, H, W] of `work` (on its device)."""
        return (self.run or run_by_image)(self.build(model), work, self)


def run_by_image(method: Any, work: AttributionWork, spec: AttributionMethod) -> Tensor:
    """`method.attribute` on groups of whole images of about `work.samples_per_forward` samples."""
    per_image = spec.samples_per_image(len(work.backgrounds), work.n_baselines)
    group = max(1, work.samples_per_forward // max(per_image, 1))
    parts = []
    for start in range(0, len(work.inputs), group):
        inputs, targets = work.inputs[start : start + group], work.targets[start : start + group]
        arguments = spec.arguments(inputs, work.backgrounds, work.samples_per_forward)
        parts.append(method.attribute(inputs, target=targets, **arguments))
    return torch.cat(parts)


def mean_over_pairs(
    attribute_pairs: Callable[[Tensor, Tensor], Tensor],
    n_images: int,
    n_per_image: int,
    pairs_per_call: int,
    device: torch.device,
) -> Tensor:
    """The mean over j of `attribute_pairs(images, js)` for every image, in calls of at most
    `pairs_per_call` (image, j) pairs.

    `attribute_pairs` gets the image index and the j of every pair and returns one map per
    pair. With room for whole images a call covers as many images as fit (pairs ordered image
    by image, j within, as captum's DeepLiftShap orders them); otherwise every image's j are
    split into near-equal calls. Either way an image's mean is taken over its own pairs in j
    order, so it does not depend on `pairs_per_call` beyond the model's own arithmetic.
    """
    js = torch.arange(n_per_image, device=device)
    out = []
    if pairs_per_call >= n_per_image:
        group = pairs_per_call // n_per_image
        for start in range(0, n_images, group):
            images = torch.arange(start, min(start + group, n_images), device=device)
            maps = attribute_pairs(images.repeat_interleave(n_per_image), js.repeat(len(images)))
            out.append(maps.view(len(images), n_per_image, *maps.shape[1:]).mean(1))
        return torch.cat(out)
    n_calls = -(-n_per_image // pairs_per_call)
    for i in range(n_images):
        parts = [
            attribute_pairs(torch.full_like(chunk, i), chunk) for chunk in js.tensor_split(n_calls)
        ]
        out.append(torch.cat(parts).mean(0, keepdim=True))
    return torch.cat(out)


def _run_deeplift_shap(method: Any, work: AttributionWork, spec: AttributionMethod) -> Tensor:
    """DeepLiftShap: DeepLift of every (image, background) pair, averaged over the backgrounds
    (what captum's DeepLiftShap computes); ReLU and max-pooling apply
    `lvlmva.vision.deeplift_rules` (the model is a `rule_view`). Where those are all the
    model's nonlinearities, `RescaleDeepLiftShap` (the images' passes only, each background
    forward once); else captum's DeepLift on the pairs, two model samples each."""
    pairs_per_pass = max(1, work.samples_per_forward // 2)
    if covers_every_nonlinearity(method.model):
        lean = RescaleDeepLiftShap(method.model, pairs_per_pass=pairs_per_pass)
        return lean.attribute(work.inputs, work.backgrounds, work.targets)

    def pairs(images: Tensor, backgrounds: Tensor) -> Tensor:
        # fresh leaf copies that require gradients, as captum's DeepLiftShap expands them
        inputs = work.inputs[images].requires_grad_()
        baselines = work.backgrounds[backgrounds].requires_grad_()
        return method.attribute(inputs, baselines=baselines, target=work.targets[images])

    with deeplift_rules():
        return mean_over_pairs(
            pairs, len(work.inputs), len(work.backgrounds), pairs_per_pass, work.inputs.device
        )


def image_keys(inputs: Tensor) -> list[int]:
    """One 32-bit key per image [C, H, W] of `inputs`, a hash of its float32 bytes: what
    gradient-shap seeds its draws for the image with, so they are the image's own wherever it
    falls in a batch or call."""
    rows = inputs.detach().float().cpu().flatten(1).contiguous().numpy()
    return [
        int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=4).digest(), "little")
        for row in rows
    ]


def gradient_shap_draws(
    seed: int, image: int, n_backgrounds: int, n_samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """The backgrounds (indices, with replacement) and the path points (uniform in [0, 1]) of
    the image keyed `image` (`image_keys`) under `seed`: the draws captum's GradientShap makes
    for that image alone with numpy's generator seeded ``(seed, image)``, in its order."""
    rng = np.random.RandomState([seed % 2**32, image])
    return rng.choice(n_backgrounds, n_samples), rng.uniform(0.0, 1.0, n_samples)


def _run_gradient_shap(method: Any, work: AttributionWork, spec: AttributionMethod) -> Tensor:
    """GradientShap (expected gradients, no noise): for every image, `n_baselines` points
    drawn on the segments from random backgrounds to it (`gradient_shap_draws`), the
    gradient there (captum's Saliency, signed) times (input - background), averaged. The draws
    are keyed by the seed and the image's bytes, so the maps do not depend on how or in which
    order images are batched."""
    n, m = len(work.inputs), work.n_baselines
    keys = image_keys(work.inputs)
    draws = [gradient_shap_draws(work.seed, key, len(work.backgrounds), m) for key in keys]
    device = work.inputs.device
    chosen = torch.as_tensor(np.stack([d[0] for d in draws]), device=device)
    alphas = torch.as_tensor(np.stack([d[1] for d in draws]), dtype=work.inputs.dtype).to(device)

    def pairs(images: Tensor, js: Tensor) -> Tensor:
        inputs = work.inputs[images]
        backgrounds = work.backgrounds[chosen[images, js]]
        alpha = alphas[images, js].view(-1, *([1] * (inputs.ndim - 1)))
        points = (alpha * inputs + (1.0 - alpha) * backgrounds).requires_grad_()
        gradient = method.attribute(points, target=work.targets[images], abs=False)
        return (inputs - backgrounds) * gradient

    return mean_over_pairs(pairs, n, m, max(1, work.samples_per_forward), device)


def _integrated_gradients_arguments(
    inputs: Tensor, backgrounds: Tensor, samples_per_forward: int
) -> dict:
    # Inputs are in [0, 1] and black means "no signal" in the digit and radiograph data, so the
    # path starts from an empty image; the backgrounds are not used.
    return {
        "baselines": torch.zeros_like(inputs),
        "n_steps": IG_STEPS,
        "internal_batch_size": max(len(inputs), samples_per_forward),
    }


ATTRIBUTION_METHODS: dict[str, AttributionMethod] = {
    # DeepLiftShap: DeepLift per (image, background) pair, averaged over the drawn backgrounds
    "deeplift-shap": AttributionMethod(
        "DeepLift", True, samples_per_image=lambda n_bg, n: 2 * n_bg, run=_run_deeplift_shap
    ),
    # IntegratedGradients from an all-black (zero) image, IG_STEPS steps
    "integrated-gradients": AttributionMethod(
        "IntegratedGradients",
        False,
        _integrated_gradients_arguments,
        samples_per_image=lambda n_bg, n: IG_STEPS,
    ),
    # GradientShap: n_baselines random draws per input from the backgrounds, no noise
    "gradient-shap": AttributionMethod(
        "Saliency", False, samples_per_image=lambda n_bg, n: n, run=_run_gradient_shap
    ),
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
    """Seed numpy's global generator for the block and restore it after, for captum methods
    that draw from it (the built-in ones draw from their own generators). torch's generator is
    left alone, so a model training in another thread keeps its own random stream."""
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
    explains a fixed copy if `model` reuses a nonlinearity module, through a `rule_view`
    (parameters shared; see `lvlmva.vision.deeplift_rules`). Gradient-shap's draws for an
    image are keyed by `seed` and the image's bytes (`image_keys`), whatever its batch or
    call; for call number k of `attribute` numpy's global generator is seeded ``seed + k``
    (for captum methods that draw from it) and restored after.

    A model on another device than `device` is explained as a copy there (the caller's model
    stays where it is; one on `device` is explained itself). Each forward/backward pass takes
    at most `samples_per_forward` model samples (DeepLiftShap: two per (image, background) pair, as
    captum's DeepLift needs; `RescaleDeepLiftShap` puts the image alone through with gradients,
    the backgrounds once per call without); None sizes it for the model, input shape and
    device (`lvlmva.vision.batch_sizing.plan_batch`, remembered; halved and retried after a
    CUDA out-of-memory error).
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
        samples_per_forward: int | None = None,
    ) -> None:
        spec = ATTRIBUTION_METHODS.get(method)
        if spec is None:
            raise ConfigError(
                f"unknown attribution method {method!r}; choose one of "
                f"{', '.join(ATTRIBUTION_METHODS)}"
            )
        if samples_per_forward is not None and samples_per_forward < 1:
            raise ConfigError(f"samples_per_forward must be at least 1, got {samples_per_forward}")
        self.method = method
        self.spec = spec
        self.device = torch.device(device)
        self.seed = seed
        self.n_baselines = n_baselines
        self.samples_per_forward = samples_per_forward
        self.model = model if is_on(model, self.device) else copy.deepcopy(model).to(self.device)
        shape = torch.Size(sample_shape) if sample_shape is not None else None
        if shape is None:
            if baselines is None:
                raise ConfigError("Explainer needs baselines or sample_shape to know the input")
            shape = baselines.shape[1:]
        self.sample_shape = shape
        self.backgrounds = draw_backgrounds(baselines, n_baselines, shape, seed=seed)
        if spec.deeplift:
            example = self.backgrounds[:1].to(self.device)
            self.model = rule_view(ensure_deeplift_safe(self.model, example).to(self.device))
        self._calls = 0

    @property
    def samples_per_image(self) -> int:
        """Model samples one image costs (DeepLiftShap: 2 per background)."""
        return self.spec.samples_per_image(len(self.backgrounds), self.n_baselines)

    def plan(self) -> BatchPlan:
        """The automatic batch plan for this model, input shape and device."""
        return plan_batch(self.model, self.sample_shape, self.device)

    def attribute(self, inputs: Tensor, target: Tensor | Sequence[int] | int) -> Tensor:
        """Attributions [N, C, H, W] of `inputs` for class `target`, on the CPU."""
        inputs = inputs.detach().float().to(self.device)
        if isinstance(target, int):
            target = [target] * len(inputs)
        target = torch.as_tensor(target, dtype=torch.long).to(self.device)
        call_seed = self.seed + self._calls
        self._calls += 1
        work = AttributionWork(
            inputs,
            target,
            self.backgrounds.to(self.device),
            self.n_baselines,
            self.samples_per_forward or self.plan().samples_per_forward,
            self.seed,
        )
        with eval_mode(self.model), _numpy_seeded(call_seed), warnings.catch_warnings():
            # captum announces on every DeepLift call that it sets hooks; that is expected here
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
            out = self._run(work)
        return out.detach().float().cpu()

    def _run(self, work: AttributionWork) -> Tensor:
        """`work` through the method; with an automatic plan, after a CUDA out-of-memory error
        again with half the batch."""
        while True:
            try:
                return self.spec.attribute(self.model, work)
            except torch.cuda.OutOfMemoryError:
                if self.samples_per_forward is not None or work.samples_per_forward == 1:
                    raise
                plan = shrink_plan(self.model, self.sample_shape, self.device, self.plan())
                log.warning(
                    "out of memory at %d samples per pass; retrying with %d",
                    work.samples_per_forward,
                    plan.samples_per_forward,
                )
                work = dataclasses.replace(work, samples_per_forward=plan.samples_per_forward)


def explain(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | Sequence[int],
    *,
    method: str = "deeplift-shap",
    baselines: Tensor | None = None,
    n_baselines: int = 25,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Tensor:
    """Attribution maps [N, C, H, W] (CPU, float32) of `images` for the classes `targets`.

    `baselines` are the images backgrounds are drawn from (the training images; one all-black
    image when None). The same `n_baselines` backgrounds serve every image and gradient-shap
    draws per image (keyed by its bytes), so the maps do not depend on the batching or the
    order, and a seed gives the same maps. `batch_size` images go through the model per
    forward/backward pass; None (the default) sizes the pass for the model, input shape and
    device (see `Explainer`). The model is explained on `device` (a copy of it there if it is
    elsewhere: it stays where it is) in eval mode (its previous mode is restored); its
    parameters get no gradients.
    """
    if images.ndim != 4:
        raise DataError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    if len(targets) != len(images):
        raise DataError(f"{len(targets)} targets for {len(images)} images")
    if batch_size is not None and batch_size < 1:
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
    if batch_size is not None:
        explainer.samples_per_forward = batch_size * explainer.samples_per_image
    with torch.no_grad(), eval_mode(explainer.model):
        n_classes = explainer.model(images[:1].float().to(explainer.device)).shape[-1]
    if targets.min() < 0 or targets.max() >= n_classes:
        raise DataError(f"targets must be class indices in [0, {n_classes}), got {targets}")
    return explainer.attribute(images, targets)
