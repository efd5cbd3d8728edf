"""The loss terms of one RRR step (`lvlmva.vision.rrr.RRRTrainer.step`): the RRR penalty and
the cross-entropy.

For a model with batch norm in training mode the penalty is taken with the norms on their
running statistics (`lvlmva.vision.modes.frozen_norms`): the per-sample input gradient of the
model as it is evaluated and explained, in the units `lvlmva.vision.rrr_grid.penalty_scale`
measures. In training mode it would go through the statistics of the few alignment samples of
the step (coupling them, and inflating the gradients of a freshly initialised ResNet ~2,000-fold).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvlmva.errors import DataError
from lvlmva.vision.modes import frozen_norms, running_norms

__all__ = ["UNKNOWN_LABEL", "rrr_penalty", "step_terms"]

UNKNOWN_LABEL = -100  # alignment samples added without a label are left out of the CE term


def rrr_penalty(model: nn.Module, images: Tensor, masks: Tensor) -> Tensor:
    """Sum over samples and pixels of (A * d/dx sum_k log p_k(x))^2, differentiable in the
    model's parameters (`create_graph=True`).

    `images` [B, C, H, W] are the model's inputs; `masks` [B, H, W] (broadcast over channels)
    or [B, C, H, W], 1 where the gradient should vanish (soft values allowed).
    """
    penalty, _ = _penalty_and_log_probs(model, images, masks)
    return penalty


def _penalty_and_log_probs(
    model: nn.Module, images: Tensor, masks: Tensor
) -> tuple[Tensor, Tensor]:
    masks = _broadcast_masks(masks, images)
    x = images.detach().requires_grad_(True)
    log_probs = F.log_softmax(model(x), dim=1)
    (grad,) = torch.autograd.grad(log_probs.sum(), x, create_graph=True)
    return (masks * grad).pow(2).sum(), log_probs


def _broadcast_masks(masks: Tensor, images: Tensor) -> Tensor:
    if images.ndim != 4:
        raise DataError(f"RRR images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if masks.ndim == 3:
        masks = masks.unsqueeze(1)
    b, c, h, w = images.shape
    if (
        masks.ndim != 4
        or masks.shape[0] != b
        or masks.shape[2:] != (h, w)
        or masks.shape[1] not in (1, c)
    ):
        raise DataError(
            f"RRR masks of shape {tuple(masks.shape)} do not fit images of shape "
            f"{tuple(images.shape)}; give [B, H, W] or [B, C, H, W]"
        )
    return masks.to(device=images.device, dtype=images.dtype)


def step_terms(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    align: tuple[Tensor, Tensor, Tensor],
    lam: float,
) -> tuple[Tensor, Tensor]:
    """(summed cross-entropy, penalty) of a step: the cross-entropy over the ordinary samples
    (`images`, `labels`) and the labelled alignment samples `align` = (images, masks, labels),
    the penalty over every alignment sample (zero, not computed, when `lam` is 0).

    For a model with batch norm in training mode: first the penalty, with the norms on (copies
    of) their running statistics, updating nothing; then one training-mode pass over the
    ordinary and the labelled alignment samples for the cross-entropy, so the statistics move
    once a step, from the batch the cross-entropy sees."""
    a_images, a_masks, a_labels = align
    if running_norms(model):
        penalty = torch.zeros((), device=images.device)
        if lam > 0:
            with frozen_norms(model):
                penalty = rrr_penalty(model, a_images, a_masks)
        keep = a_labels != UNKNOWN_LABEL
        logits = model(torch.cat([images, a_images[keep]]))
        ce_sum = F.cross_entropy(logits, torch.cat([labels, a_labels[keep]]), reduction="sum")
        return ce_sum, penalty
    ce_sum = F.cross_entropy(model(images), labels, reduction="sum")
    if lam > 0:
        penalty, a_log_probs = _penalty_and_log_probs(model, a_images, a_masks)
    else:
        penalty = torch.zeros((), device=images.device)
        a_log_probs = F.log_softmax(model(a_images), dim=1)
    if bool((a_labels != UNKNOWN_LABEL).any()):
        ce_sum = ce_sum + F.nll_loss(
            a_log_probs, a_labels, ignore_index=UNKNOWN_LABEL, reduction="sum"
        )
    return ce_sum, penalty
