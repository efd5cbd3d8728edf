"""PPEPS-WGM: Positive Predictive Effect Probabilistic Segmentation via Weighted Gaussian Mixtures.

Pipeline stage 2, "segment" (docs/method.md). For every attribution map:

1. sum over channels and keep the positive part: the pixels whose net effect pushes the score
   of the explained class up;
2. keep the pixels above `threshold` times the image's largest positive attribution (default
   1e-2: a pixel with less than 1 % of the strongest pixel's effect is background); each kept
   pixel is a point at its centre ((row + 0.5) / H, (col + 0.5) / W) in [0, 1]^2, weighted by its
   positive attribution divided by the image's total;
3. fit a J-component Gaussian mixture to the weighted points (`WeightedGaussianMixture`, all
   images in batches, k-means++ start). A pixel is a square, not a point: its variance
   side^2 / 12 is added to every covariance (`reg_covar`), which also keeps components finite;
4. give each kept pixel the component of highest responsibility and renumber the clusters of
   every image 0..k-1 by total attribution, largest first, so colours are stable.

Images with no positive attribution are all background; images with at most J kept pixels give
each pixel its own cluster. The random start of an image is seeded from `seed` and the image's
own content, so a map gets the same segmentation whatever it is batched with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lvlmva.errors import ConfigError, DataError
from lvlmva.vision.wgmm import WeightedGaussianMixture

__all__ = [
    "DEFAULT_THRESHOLD",
    "PixelPoints",
    "Segmentation",
    "WeightedGaussianMixture",
    "pixel_points",
    "positive_weights",
    "problem_seeds",
    "segment",
]

DEFAULT_THRESHOLD = 1e-2
# points x components per batch of EM problems: bounds the memory of one E-step tensor
_BATCH_BUDGET = 1 << 23


@dataclass(frozen=True)
class Segmentation:
    """Cluster maps of N images (on CPU).

    labels: [N, H, W] int64, cluster id 0..k-1 (0 = most attribution), -1 = background.
    responsibilities: [N, J, H, W] float32 posterior of each cluster, in the same order as the
        ids (clusters that own no pixel come last); 0 on background.
    n_clusters: J, the number of mixture components asked for (an image may use fewer).
    """

    labels: Tensor
    responsibilities: Tensor
    n_clusters: int

    def cluster_counts(self) -> Tensor:
        """Number of clusters actually used by every image, [N]."""
        return (self.labels.flatten(1).amax(1) + 1).clamp_min(0)


def segment(
    attributions: Tensor | np.ndarray,
    n_clusters: int = 7,
    *,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
) -> Segmentation:
    """Segment attribution maps [N, C, H, W] (or [N, H, W]) into at most `n_clusters` clusters.

    `reg_covar` None means one pixel's variance, 1 / (12 max(H, W)^2). `device` None uses the
    device of a tensor input (CPU for numpy). `batch_size` None sizes batches of images so one
    E-step tensor stays near 8 M elements.
    """
    maps = _validate(attributions, n_clusters, threshold, max_iter, batch_size)
    dev = torch.device(device) if device is not None else maps.device
    weights, keep = positive_weights(maps, threshold, device=dev)
    N, H, W = maps.shape[0], maps.shape[2], maps.shape[3]
    counts = keep.sum(1)

    labels = torch.full((N, H * W), -1, dtype=torch.int64)
    resp = torch.zeros((N, n_clusters, H * W), dtype=torch.float32)
    small = ((counts > 0) & (counts <= n_clusters)).nonzero().flatten().tolist()
    for i in small:
        _one_pixel_per_cluster(weights[i].cpu(), labels[i], resp[i])

    fit = (counts > n_clusters).nonzero().flatten()
    if fit.numel():
        reg = 1.0 / (12.0 * max(H, W) ** 2) if reg_covar is None else float(reg_covar)
        order = fit[counts[fit].argsort(stable=True)]  # similar sizes share a batch: less padding
        sizes = counts[order].tolist()
        for chunk in _chunks(sizes, n_clusters, batch_size):
            index = order[chunk]
            _fit_chunk(
                weights[index],
                keep[index],
                (H, W),
                n_clusters,
                seed,
                max_iter,
                tol,
                reg,
                dev,
                labels,
                resp,
                index.cpu(),
            )
    return Segmentation(labels.view(N, H, W), resp.view(N, n_clusters, H, W), n_clusters)


def positive_weights(
    maps: Tensor, threshold: float = DEFAULT_THRESHOLD, *, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Pixel weights [N, H*W] (sum 1 per image, 0 off the kept pixels) and the kept mask.

    maps: [N, C, H, W]. The channel sum is clipped at 0; a pixel is kept when its value exceeds
    `threshold` times the image's maximum.
    """
    positive = maps.to(device or maps.device, torch.float32).sum(1).clamp_min(0).flatten(1)
    top = positive.amax(1, keepdim=True)
    keep = (positive > threshold * top) & (positive > 0)
    weights = torch.where(keep, positive, torch.zeros_like(positive))
    total = weights.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return weights / total, keep


@dataclass(frozen=True)
class PixelPoints:
    """Kept pixels of a batch of images as weighted points, padded with zero weights."""

    X: Tensor  # [B, n, 2] pixel centres ((row + 0.5) / H, (col + 0.5) / W)
    weights: Tensor  # [B, n], 0 on padding
    valid: Tensor  # [B, n] bool, False on padding
    pixel: Tensor  # [B, n] flat pixel index (row * W + col)


def pixel_points(weights: Tensor, keep: Tensor, shape: tuple[int, int]) -> PixelPoints:
    """The kept pixels of every image (raster order) first, then padding to the largest count."""
    H, W = shape
    n = max(int(keep.sum(1).max()), 1)
    pixel = keep.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :n]
    X = torch.stack(((pixel // W + 0.5) / H, (pixel % W + 0.5) / W), -1).to(torch.float32)
    return PixelPoints(X, weights.gather(1, pixel), keep.gather(1, pixel), pixel)


def problem_seeds(seed: int, points: PixelPoints) -> list[int]:
    """One 63-bit seed per image from the global seed and the image's own kept pixels."""
    w, px, counts = points.weights.cpu(), points.pixel.cpu(), points.valid.sum(1).tolist()
    out = []
    for b, m in enumerate(counts):
        digest = hashlib.blake2b(digest_size=8, key=str(seed).encode())
        digest.update(w[b, :m].numpy().tobytes())
        digest.update(px[b, :m].numpy().tobytes())
        out.append(int.from_bytes(digest.digest(), "little") >> 1)
    return out


def _validate(attributions, n_clusters, threshold, max_iter, batch_size) -> Tensor:
    if not isinstance(n_clusters, int | np.integer) or n_clusters < 1:
        raise ConfigError(f"n_clusters must be a positive integer, not {n_clusters!r}")
    if not 0.0 <= float(threshold) < 1.0:
        raise ConfigError(f"threshold {threshold!r} must be in [0, 1) (a share of the maximum)")
    if max_iter < 1:
        raise ConfigError(f"max_iter must be >= 1, not {max_iter!r}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, not {batch_size!r}")
    maps = attributions if torch.is_tensor(attributions) else torch.as_tensor(attributions)
    maps = maps.detach()
    if maps.ndim == 3:
        maps = maps.unsqueeze(1)
    if maps.ndim != 4 or 0 in maps.shape[1:]:
        raise DataError(
            f"attributions must be [N, C, H, W] or [N, H, W], got shape {tuple(maps.shape)}"
        )
    if not maps.is_floating_point():
        maps = maps.float()
    if not bool(torch.isfinite(maps).all()):
        raise DataError("attributions contain NaN or infinite values; recompute them")
    return maps


def _chunks(sizes: list[int], k: int, batch_size: int | None) -> list[slice]:
    """Consecutive slices of problems sorted by size, each within the batch budget."""
    out, start = [], 0
    while start < len(sizes):
        stop = start + 1
        while stop < len(sizes):
            too_many = batch_size is not None and stop - start >= batch_size
            too_big = batch_size is None and (stop + 1 - start) * sizes[stop] * k > _BATCH_BUDGET
            if too_many or too_big:
                break
            stop += 1
        out.append(slice(start, stop))
        start = stop
    return out


def _one_pixel_per_cluster(weights: Tensor, labels: Tensor, resp: Tensor) -> None:
    """At most J kept pixels: each is its own cluster, heaviest first (ties by position)."""
    pixels = weights.nonzero().flatten()
    ranked = pixels[weights[pixels].argsort(descending=True, stable=True)]
    ids = torch.arange(ranked.numel())
    labels[ranked] = ids
    resp[ids, ranked] = 1.0


def _fit_chunk(
    weights: Tensor,
    keep: Tensor,
    shape: tuple[int, int],
    k: int,
    seed: int,
    max_iter: int,
    tol: float,
    reg_covar: float,
    device: torch.device,
    labels: Tensor,
    resp: Tensor,
    index: Tensor,
) -> None:
    """Fit one batch of images and write their labels and responsibilities in place."""
    points = pixel_points(weights, keep, shape)
    X, w, valid, pixel = points.X, points.weights, points.valid, points.pixel
    gmm = WeightedGaussianMixture(
        k,
        max_iter=max_iter,
        tol=tol,
        reg_covar=reg_covar,
        init_params="k-means++",
        random_state=problem_seeds(seed, points),
        device=device,
    ).fit(X, sample_weight=w)
    post = gmm.predict_proba(X).transpose(1, 2)  # [B, K, n]
    hard = post.argmax(1)  # [B, n]

    # rank components by the attribution they own; empty ones last, ties by component index
    owned = torch.zeros(post.shape[:2], dtype=w.dtype, device=w.device)
    owned.scatter_add_(1, hard, w)
    used = torch.zeros_like(owned).scatter_add_(1, hard, valid.to(w.dtype))
    score = torch.where(used > 0, owned, torch.full_like(owned, -1.0))
    order = score.argsort(dim=1, descending=True, stable=True)  # new id -> old component
    rank = order.argsort(dim=1)  # old component -> new id
    new_labels = rank.gather(1, hard)
    post = post.gather(1, order.unsqueeze(-1).expand_as(post))

    rows = index.unsqueeze(1).expand_as(pixel)[valid.cpu()]
    cols = pixel.cpu()[valid.cpu()]
    labels[rows, cols] = new_labels.cpu()[valid.cpu()]
    resp.permute(0, 2, 1)[rows, cols] = post.transpose(1, 2).float().cpu()[valid.cpu()]
