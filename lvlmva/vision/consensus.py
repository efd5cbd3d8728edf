"""Cross-sample consistency of verdicts: a spurious feature recurs across images at the same
place with the same look, so a cluster whose verdict disagrees with those of similar clusters in
other images is more likely a Critic error than a discovery. It costs no LVLM call.

Each cluster gets a descriptor (`cluster_descriptors`): its centroid (row, column), log area,
mean value per channel and spread of the grey value of the original image under it, and its
attribution rank (PPEPS-WGM orders cluster ids by attribution mass). Descriptors are
standardised over the clusters at hand and compared by Euclidean distance. `neighbour_consensus`
pools a cluster's own "no" share (one verdict, or the share of "no" among k Critic samples) with
the mean "no" share of its `k` nearest clusters in *other* images:

    P(spurious) = (self_weight * own + sum_j w_j * share_j) / (self_weight + sum_j w_j)

(a kNN vote in the manner of Wilson's editing of noisy labels). With uniform weights (w = 1,
the default) and `self_weight = 1` it is the majority over the cluster and its k neighbours. On
decoy-digits at a simulated verdict accuracy of 0.87 (independent errors) it took the share of
relevant clusters marked "no" from 0.13 to 0.001 and of spurious clusters marked "yes" from
0.13 to 0.09 (k = 10); a larger own weight (k / 2) kept more of the errors that hurt (0.019 on
relevant clusters). Gaussian weights (`neighbour_weights`, median-heuristic bandwidth) let a
neighbour count only as far as it is alike; they keep more of the spurious pixels where the
spurious feature changes its look and place, but were not better overall (docs/robust.md,
"Neighbours weighted by likeness").
`consensus_weights` turns P into mask weights (`weighted_mask`):
1 for P > 1/2, else 0; or, with `confidence=True`, the agreement beyond chance
``clip(2 P - 1, 0, 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DEFAULT_NEIGHBOURS",
    "KERNELS",
    "cluster_descriptors",
    "consensus_weights",
    "neighbour_consensus",
    "neighbour_weights",
    "other_image_neighbours",
    "transferred_shares",
    "weighted_mask",
]

DEFAULT_NEIGHBOURS = 10
KERNELS = ("uniform", "gaussian")


def cluster_descriptors(
    image: Tensor, labels: Tensor, cluster_ids: Sequence[int], n_clusters: int
) -> Tensor:
    """Descriptors [len(cluster_ids), 5 + C] of the clusters of one image [C, H, W] with
    cluster map `labels` [H, W] (-1 = background): row, col, log area share, grey spread,
    attribution rank in [0, 1], mean of each channel. A cluster with no pixels gets zeros."""
    h, w = image.shape[1:]
    image = image.float()
    ids = torch.as_tensor(list(cluster_ids), dtype=torch.long)
    member = (labels.unsqueeze(0) == ids.view(-1, 1, 1)).float()  # [n, H, W]
    pixels = member.flatten(1).sum(1)
    safe = pixels.clamp_min(1.0)
    rows = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    cols = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    row = (member.sum(2) * rows).sum(1) / safe
    col = (member.sum(1) * cols).sum(1) / safe
    means = torch.einsum("nhw,chw->nc", member, image) / safe.unsqueeze(1)
    grey = image.mean(0)
    grey_mean = (member * grey).flatten(1).sum(1) / safe
    spread = ((member * (grey - grey_mean.view(-1, 1, 1)) ** 2).flatten(1).sum(1) / safe).sqrt()
    area = torch.log(safe / (h * w))
    rank = ids.float() / max(1, n_clusters - 1)
    out = torch.cat([torch.stack([row, col, area, spread, rank], 1), means], 1)
    out[pixels == 0] = 0.0
    return out


def neighbour_consensus(
    features: Tensor,
    no_share: Tensor,
    owner: Tensor,
    *,
    k: int = DEFAULT_NEIGHBOURS,
    self_weight: float = 1.0,
    kernel: str = "uniform",
) -> tuple[Tensor, Tensor]:
    """P(spurious) [M] of M clusters, and their neighbours' (weighted) mean "no" share [M].

    `features` [M, F] are descriptors, `no_share` [M] the share of "no" verdicts each cluster
    got, `owner` [M] the image each belongs to (neighbours come from other images only).
    `kernel`: each neighbour's weight, "uniform" (1) or "gaussian" (`neighbour_weights`). With
    fewer than k clusters in other images (or k = 0) the own share is returned unchanged (and
    NaN as the neighbours' share)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    m = len(no_share)
    own = no_share.float()
    found = other_image_neighbours(features, owner, k)
    if found is None:
        return own.clone(), torch.full((m,), math.nan)
    distance, index, chosen = found
    shares = own.numpy()[index]
    if kernel == "uniform":
        neighbours = torch.from_numpy((shares * chosen).sum(1) / k).float()
        return (self_weight * own + k * neighbours) / (self_weight + k), neighbours
    weight = chosen * neighbour_weights(distance, chosen, k, kernel)
    total, mass = weight.sum(1), (shares * weight).sum(1)
    neighbours = torch.from_numpy(mass / np.maximum(total, 1e-12)).float()
    pooled = (self_weight * own.double() + torch.from_numpy(mass)) / (
        self_weight + torch.from_numpy(total)
    )
    return pooled.float(), neighbours


def other_image_neighbours(
    features: Tensor, owner: Tensor, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The nearest clusters of every cluster in the standardised descriptor space: distances
    and indices [M, query] (query = k + the most clusters one image has, at most M) and a mask
    `chosen` of each row's first k from other images; None when k <= 0 or fewer than k
    clusters lie in other images."""
    m = len(owner)
    if k <= 0 or m == 0:
        return None
    per_image = int(torch.unique(owner, return_counts=True)[1].max())
    if m - per_image < k:
        return None
    x = features.double().numpy()
    scale = x.std(0)
    z = (x - x.mean(0)) / np.where(scale > 1e-9, scale, 1.0)
    from sklearn.neighbors import NearestNeighbors

    query = min(m, k + per_image)
    distance, index = NearestNeighbors(n_neighbors=query).fit(z).kneighbors(z)
    owners = owner.numpy()
    others = owners[index] != owners[:, None]  # [M, query]
    # the first k neighbours from other images (each row has at least k of them)
    chosen = others & (np.cumsum(others, axis=1) <= k)
    return distance, index, chosen


def transferred_shares(
    pool: Tensor, pool_shares: Tensor, targets: Tensor, *, k: int = DEFAULT_NEIGHBOURS
) -> Tensor:
    """P(spurious) [N] of N clusters that no critic saw: the mean "no" share of their k nearest
    `pool` clusters [M, F] (standardised over both sets, as `other_image_neighbours` does);
    NaN for all when the pool has fewer than k clusters or k <= 0."""
    if k <= 0 or len(pool) < k or len(targets) == 0:
        return torch.full((len(targets),), math.nan)
    x = torch.cat([pool, targets]).double().numpy()
    scale = x.std(0)
    z = (x - x.mean(0)) / np.where(scale > 1e-9, scale, 1.0)
    from sklearn.neighbors import NearestNeighbors

    _, index = NearestNeighbors(n_neighbors=k).fit(z[: len(pool)]).kneighbors(z[len(pool) :])
    return torch.from_numpy(pool_shares.double().numpy()[index].mean(1)).float()


def neighbour_weights(distance: np.ndarray, chosen: np.ndarray, k: int, kernel: str) -> np.ndarray:
    """Weights [M, query] of the neighbours at `distance` (standardised descriptor space);
    `chosen` marks each row's k neighbours from other images.

    "uniform": 1 each, the plain kNN majority. "gaussian": exp(-d^2 / (2 sigma^2)) with the
    median heuristic, sigma = the median over clusters of their mean distance to their k
    neighbours. A cluster whose neighbours are as close as a typical cluster's counts them
    almost fully (weight 0.6 at d = sigma); one unlike any cluster of other images (a feature
    that does not recur, or a cluster mixing a spurious feature into the rest) keeps mostly its
    own verdict, since its neighbours are no evidence about it."""
    if kernel == "uniform":
        return np.ones_like(distance)
    mean = (distance * chosen).sum(1) / k
    sigma = float(np.median(mean))
    if sigma <= 1e-12:  # identical descriptors: every neighbour counts fully
        return np.ones_like(distance)
    return np.exp(-(distance**2) / (2.0 * sigma**2))


def consensus_weights(p_spurious: Tensor, *, confidence: bool = False) -> Tensor:
    """Mask weights from P(spurious): 1 above 1/2, else 0; or `confidence`: clip(2P - 1, 0, 1)."""
    if confidence:
        return (2.0 * p_spurious - 1.0).clamp(0.0, 1.0)
    return (p_spurious > 0.5).float()


def weighted_mask(
    labels: Tensor,
    cluster_ids: Sequence[int],
    weights: Tensor,
    *,
    responsibilities: Tensor | None = None,
    soft: bool = True,
) -> Tensor:
    """The correction mask [H, W] (float32) with cluster `cluster_ids[i]` weighted `weights[i]`:
    hard, each pixel gets its cluster's weight; soft (needs `responsibilities` [J, H, W]), each
    foreground pixel the responsibility-weighted sum, clipped to [0, 1]. Background stays 0."""
    ids = torch.as_tensor(list(cluster_ids), dtype=torch.long)
    weights = weights.float()
    if not soft:
        lookup = torch.zeros(max(int(labels.max()) + 2, int(ids.max()) + 2 if len(ids) else 1))
        lookup[ids + 1] = weights
        return lookup[labels.long() + 1]
    if responsibilities is None:
        raise ValueError("soft masks need the responsibilities [J, H, W] of the segmentation")
    resp = responsibilities.float()[ids]  # [n, H, W]
    total = (weights.view(-1, 1, 1) * resp).sum(0) if len(ids) else torch.zeros(labels.shape)
    return total.clamp(0.0, 1.0) * (labels >= 0).float()
