"""DeepLiftShap on a rule view, without captum's hooks and without the baselines' backward pass.

captum's DeepLiftShap puts every (input, baseline) pair through the model as two samples,
forward and backward, and multiplies the inputs' gradients by (input - baseline); the
baselines' gradients are thrown away. With DeepLift's multipliers shared by the two samples of
a pair (the rules of `lvlmva.vision.deeplift_rules`), the inputs' gradients need the
baselines' activations only. `RescaleDeepLiftShap` therefore runs each baseline forward once
per call, without gradients (`reference_activations`), and every pair's input forward and
backward (`paired_rules`): one sample per pair instead of two, and no backward pass for the
baselines. The maps are captum's DeepLiftShap maps where captum's rules are right (see
`lvlmva.vision.deeplift_rules`), up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lvlmva.vision.deeplift_rules import (
    ReferenceActivations,
    covers_every_nonlinearity,
    paired_rules,
    reference_activations,
)

__all__ = ["RescaleDeepLiftShap"]


def _targets(target: Tensor | Sequence[int] | int | None, n: int, device) -> Tensor | None:
    if target is None:
        return None
    target = torch.as_tensor(target, dtype=torch.long, device=device).reshape(-1)
    if len(target) == 1:
        target = target.expand(n)
    if len(target) != n:
        raise ValueError(f"{len(target)} targets for {n} inputs; give one per input or one")
    return target


class RescaleDeepLiftShap:
    """captum's ``DeepLiftShap(model).attribute(inputs, baselines, target)``: for every input
    the mean over `baselines` of DeepLift's attributions against each, with the rescale and
    max-pool rules of `lvlmva.vision.deeplift_rules`.

    `model` is a `rule_view` in which the rule modules are every nonlinearity captum would
    hook (`covers_every_nonlinearity`), treating samples independently (eval mode).
    Each forward/backward pass takes at most `pairs_per_pass` (input, baseline) pairs (None:
    all of them): whole inputs against all baselines when they fit, else every input against
    near-equal chunks of the baselines (each chunk's activations computed once for all
    inputs).
    """

    def __init__(self, model: nn.Module, *, pairs_per_pass: int | None = None) -> None:
        if not covers_every_nonlinearity(model):
            raise ValueError(
                "RescaleDeepLiftShap needs a rule_view(model) whose every nonlinearity is a rule "
                "module; use captum's DeepLiftShap for other nonlinearities"
            )
        if pairs_per_pass is not None and pairs_per_pass < 1:
            raise ValueError(f"pairs_per_pass must be at least 1, got {pairs_per_pass}")
        self.model = model
        self.pairs_per_pass = pairs_per_pass

    def attribute(
        self,
        inputs: Tensor,
        baselines: Tensor,
        target: Tensor | Sequence[int] | int | None = None,
    ) -> Tensor:
        """Attributions of `inputs` [N, ...] against `baselines` [M, ...] (same sample shape,
        on the model's device) for `target` (one class per input or one for all; None: the
        model gives one score per sample), shaped like `inputs`."""
        if inputs.shape[1:] != baselines.shape[1:] or len(baselines) == 0:
            raise ValueError(
                f"baselines {tuple(baselines.shape)} must be samples shaped like the inputs "
                f"{tuple(inputs.shape)}"
            )
        n, m = len(inputs), len(baselines)
        inputs, baselines = inputs.detach(), baselines.detach()
        targets = _targets(target, n, inputs.device)
        per_pass = self.pairs_per_pass or max(n * m, 1)
        chunks = baselines.tensor_split(-(-m // per_pass)) if per_pass < m else (baselines,)
        parts, sums = [], None if len(chunks) == 1 else torch.zeros_like(inputs)
        for chunk in chunks:
            references = reference_activations(self.model, chunk)
            group = max(1, per_pass // len(chunk))
            for start in range(0, n, group):
                rows = slice(start, start + group)
                pair_targets = None if targets is None else targets[rows]
                maps = self._pairs(inputs[rows], chunk, references, pair_targets)
                if sums is None:
                    parts.append(maps.mean(1))
                else:
                    sums[rows] += maps.sum(1)
        return torch.cat(parts) if sums is None else sums.div_(m)

    def _pairs(
        self, inputs: Tensor, chunk: Tensor, references: ReferenceActivations, targets
    ) -> Tensor:
        """DeepLift maps [n, c, ...] of every input against every one of the c baselines of
        `chunk` (their activations in `references`), one forward/backward pass."""
        c = len(chunk)
        grad = self._gradients(inputs.repeat_interleave(c, 0), references, targets, c)
        maps = inputs[:, None] - chunk[None]
        return maps.mul_(grad.unflatten(0, (len(inputs), c)))

    def _gradients(self, x: Tensor, references: ReferenceActivations, targets, c: int) -> Tensor:
        """The gradients of the paired batch `x` (each input c times) under the rules."""
        x.requires_grad_()
        with torch.enable_grad(), paired_rules(references):
            out = self.model(x)
            if targets is not None:
                out = out.gather(1, targets.repeat_interleave(c)[:, None])
            elif out.numel() != len(x):
                raise ValueError(f"the model gives {tuple(out.shape)} scores: name a target")
            return torch.autograd.grad(out.sum(), x)[0]
